"""Tiny randomly initialised models, one per architecture family, built in-process from configs."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import transformers as T

_COMMON = dict(vocab_size=96, pad_token_id=0, bos_token_id=1, eos_token_id=2)

FAMILIES: dict[str, tuple[type, dict]] = {
    "llama": (T.LlamaConfig, dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                  num_attention_heads=4, num_key_value_heads=2)),
    "mistral": (T.MistralConfig, dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2)),
    "qwen2": (T.Qwen2Config, dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                  num_attention_heads=4, num_key_value_heads=2)),
    "gemma": (T.GemmaConfig, dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8)),
    "gemma2": (T.Gemma2Config, dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=8)),
    "gemma3": (T.Gemma3TextConfig, dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=8)),
    "phi3": (T.Phi3Config, dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                num_attention_heads=4, num_key_value_heads=2)),
    "bloom": (T.BloomConfig, dict(hidden_size=32, n_layer=3, n_head=4)),
    "gpt2": (T.GPT2Config, dict(n_embd=32, n_layer=3, n_head=4, n_inner=48)),
    "gptneox": (T.GPTNeoXConfig, dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                      num_attention_heads=4)),
    "opt": (T.OPTConfig, dict(hidden_size=32, ffn_dim=48, num_hidden_layers=3, num_attention_heads=4,
                              word_embed_proj_dim=32)),
}

# MLP width of each tiny model (BLOOM's is fixed at 4 x hidden)
WIDTH = {name: (128 if name == "bloom" else 48) for name in FAMILIES}


def tiny_model(family: str = "llama", seed: int = 0) -> torch.nn.Module:
    """A tiny random causal LM of ``family`` in eval mode, float32, with scaled-up weights so that
    activations are not all tiny."""
    cls, kw = FAMILIES[family]
    config = cls(**_COMMON, **kw)
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    model.eval()
    model.lape_model_id = f"tiny-{family}"
    return model


def random_ids(batch: int, seq: int, seed: int = 0, vocab: int = 96) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, seq), generator=g)


CHAR_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0-3: pad, bos, eos as in _COMMON
CHARS = "abcdefghijklmnopqrstuvwxyz .,"


def char_tokenizer():
    """A character-level ``PreTrainedTokenizerFast`` whose ids fit the tiny models' 96 entries, to
    save beside a tiny model as a Hugging Face folder."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*CHAR_SPECIALS, *CHARS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token a character
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def pseudo_documents(letters: str, n: int, seed: int) -> list[str]:
    """``n`` one-line documents of pseudo-words over ``letters`` (a language of its own)."""
    g = torch.Generator().manual_seed(seed)
    docs = []
    for _ in range(n):
        words = ["".join(letters[i] for i in torch.randint(len(letters), (int(torch.randint(2, 7, (), generator=g)),),
                                                           generator=g).tolist())
                 for _ in range(int(torch.randint(3, 8, (), generator=g)))]
        docs.append(" ".join(words) + ".")
    return docs


def tiny_model_folder(work, docs: tuple[int, int] = (60, 60), valid_share: float | None = None,
                      license: bool = False) -> None:
    """A tiny LLaMA saved as a Hugging Face folder (``work/model``, character tokenizer) and a
    two-language ``text`` manifest (``work/corpus.yaml``) of pseudo-words: ``aa`` over a-m and
    ``bb`` over n-z, with ``docs`` documents each, and a ``valid`` split derived by hash when
    ``valid_share`` is given."""
    tiny_model("llama").save_pretrained(work / "model")
    char_tokenizer().save_pretrained(work / "model")
    (work / "texts").mkdir()
    lines = ["name: tiny-two-languages", "languages:"]
    for (code, letters), n, seed in zip((("aa", "abcdefghijklm"), ("bb", "nopqrstuvwxyz")), docs, (1, 2)):
        (work / "texts" / f"{code}.txt").write_text("\n".join(pseudo_documents(letters, n, seed=seed)) + "\n")
        lines += [f"  {code}:", f"    source: generated pseudo-words over {letters[0]}-{letters[-1]}"]
        lines += ["    license: CC0"] if license else []
        lines += [f"    train: {{kind: text, path: texts/{code}.txt}}"]
        lines += [f"    valid: {{from: train, share: {valid_share}}}"] if valid_share is not None else []
    (work / "corpus.yaml").write_text("\n".join(lines) + "\n")


class ModelWouldLoad(Exception):
    """Raised by the ``model_loads`` fixture (conftest.py) in place of loading a model."""


class Interrupted(RuntimeError):
    """Raised by :func:`interrupt_after` in place of a forward pass."""


@contextmanager
def interrupt_after(module: torch.nn.Module, n: int):
    """Let ``n`` forward passes of ``module`` run, then raise :class:`Interrupted` (a killed run)."""
    calls = []

    def hook(mod, args, kwargs):
        calls.append(1)
        if len(calls) == n + 1:
            raise Interrupted("stop")

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class Seq:
    """One packed sequence, as a corpus stream yields it."""

    input_ids: torch.Tensor  # LongTensor [T]
    attention_mask: torch.Tensor  # LongTensor [T]


def random_sequences(n: int, length: int, seed: int, real_last: int | None = None) -> list[Seq]:
    """``n`` random sequences of ``length`` tokens; the last one has only ``real_last`` real
    tokens (the rest is padding: pad id 0, mask 0)."""
    ids = random_ids(n, length, seed=seed)
    out = []
    for i in range(n):
        mask = torch.ones(length, dtype=torch.long)
        row = ids[i].clone()
        if i == n - 1 and real_last is not None:
            mask[real_last:], row[real_last:] = 0, 0
        out.append(Seq(row, mask))
    return out
