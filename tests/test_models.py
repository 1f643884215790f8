"""load_model(): one-line errors for bad specs; fingerprints; the built-in model and its cache (slow)."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from tiny_models import tiny_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import lape.model_cache
import lape.models
from lape.errors import LapeError
from lape.fingerprint import dtype_note, fingerprint, same_model
from lape.models import load_model
from lape.space import NeuronSpace


def _one_line_error(spec: str, *needles: str) -> str:
    with pytest.raises(LapeError) as err:
        load_model(spec)
    msg = str(err.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_missing_paths():
    _one_line_error("./nope", "model path ./nope does not exist", "builtin")
    _one_line_error("/no/such/file.gguf", "model file /no/such/file.gguf does not exist", "builtin")


def test_folder_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    _one_line_error(str(tmp_path), "has no config.json")


def test_unreachable_hub_id_when_offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the hub library reads the variable at import; set its constant too
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    _one_line_error("someorg/some-model-that-does-not-exist", "someorg/some-model-that-does-not-exist",
                    "seems offline", "builtin")


def _save_encoder(config, folder) -> None:
    """An encoder-only model with a (word-level) tokenizer, as a Hugging Face folder."""
    T.AutoModel.from_config(config).save_pretrained(folder)
    tk = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1, "a": 2, "b": 3}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(folder)


def test_folder_that_is_not_a_causal_lm(tmp_path):
    _save_encoder(T.DistilBertConfig(vocab_size=96, dim=32, n_layers=1, n_heads=2, hidden_dim=48), tmp_path)
    _one_line_error(str(tmp_path), str(tmp_path), "not a causal language model")


def test_bert_folder_is_not_a_causal_lm(tmp_path):
    _save_encoder(T.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=48), tmp_path)
    _one_line_error(str(tmp_path), "not a causal language model")


def test_folder_roundtrip_loads_the_same_weights(tmp_path):
    model = tiny_model("gpt2")
    model.save_pretrained(tmp_path)
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
                            unk_token="<unk>").save_pretrained(tmp_path)
    loaded, tok = load_model(str(tmp_path))
    assert loaded.lape_model_id == str(tmp_path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert fingerprint(loaded) == fingerprint(model)


def test_fingerprint_is_stable_across_dtypes_and_differs_across_weights():
    fp32 = fingerprint(tiny_model("llama", seed=0))
    bf16 = fingerprint(tiny_model("llama", seed=0).to(torch.bfloat16))
    fp16 = fingerprint(tiny_model("llama", seed=0).to(torch.float16))
    other = fingerprint(tiny_model("llama", seed=1))
    assert same_model(fp32, bf16) and same_model(fp32, fp16) and same_model(fp16, bf16)
    assert (fp32["dtype"], bf16["dtype"], fp16["dtype"]) == ("float32", "bfloat16", "float16")
    assert dtype_note(fp32, fp16) == "made in float32, used in float16" and dtype_note(fp32, fp32) is None
    assert other["checksum"] != fp32["checksum"] and not same_model(fp32, other)
    assert fp32["architecture"] == "LlamaForCausalLM" and fp32["num_layers"] == 3
    n_params = sum(p.numel() for p in tiny_model("llama").parameters())
    assert fp32["num_parameters"] == n_params
    gpt2 = fingerprint(tiny_model("gpt2"))
    assert not same_model(fp32, gpt2)


def test_fingerprint_follows_weight_edits():
    """Never served from a cache on the model object: an edited weight changes the fingerprint."""
    model = tiny_model("llama")
    before = fingerprint(model)
    first = next(model.parameters())
    with torch.no_grad():
        first.view(-1)[0] += 1.0
    after = fingerprint(model)
    assert not same_model(before, after) and after["checksum"] != before["checksum"]
    with torch.no_grad():
        first.view(-1)[0] -= 1.0
    assert same_model(before, fingerprint(model))


def test_unknown_dtype():
    with pytest.raises(LapeError, match="unknown dtype 'float8'"):
        load_model("./nope", dtype="float8")


@pytest.mark.slow
def test_builtin_model_space_generation_and_cache(builtin, monkeypatch):
    model, tok = builtin
    space = NeuronSpace.of(model)
    assert space.shape == (18, 2048)
    ids = tok("La capitale de la France est", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    text = tok.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)
    assert text.strip()

    folder = lape.model_cache.builtin_folder()
    assert (folder / "lape_cache.json").is_file() and (folder / "config.json").is_file()
    assert (folder / "model.safetensors").is_file()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the built-in model was de-quantised again instead of read from the cache")

    monkeypatch.setattr(lape.model_cache, "dequantise_to", no_rebuild)
    monkeypatch.setattr(lape.model_cache, "builtin_gguf", no_rebuild)
    again, _ = load_model("builtin")
    assert again is not model
    probe = tok("Hello world, bonjour le monde", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(again(probe).logits, model(probe).logits)
    assert fingerprint(again) == fingerprint(model)


@pytest.mark.slow
def test_builtin_fast_tokenizer_equals_auto_tokenizer(builtin):
    """lape reads its caches' tokenizer.json directly (faster); ids, specials, decoding and
    padding must equal what transformers' AutoTokenizer makes of the same folder."""
    from transformers import AutoTokenizer

    _, tok = builtin
    auto = AutoTokenizer.from_pretrained(lape.model_cache.builtin_folder())
    texts = ["Hello world, bonjour le monde!", "你好，世界。今日は良い天気です。", "Привет, мир — مرحبا بالعالم",
             "  spaces\tand\nnewlines <b> 123 ٣٤٥ 😀", "Xin chào thế giới, 안녕하세요"]
    for text in texts:
        assert tok(text).input_ids == auto(text).input_ids
        ids = auto(text).input_ids
        assert tok.decode(ids, skip_special_tokens=True) == auto.decode(ids, skip_special_tokens=True)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(tok, name) == getattr(auto, name) is not None
    tok.padding_side = auto.padding_side = "left"
    a, b = tok(texts, padding=True, return_tensors="pt"), auto(texts, padding=True, return_tensors="pt")
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.attention_mask, b.attention_mask)
    tok.padding_side = "right"


def test_artifacts_of_the_same_weights_load_in_another_dtype_with_a_note(tmp_path, caplog):
    """`lape steer --dtype float16` used to refuse neurons recorded in float32 as another model."""
    import logging

    from lape.masks import NeuronSets

    model = tiny_model("llama")
    sets = NeuronSets.from_neurons({"a": [(0, 1)]}, (3, 48), {"fingerprint": fingerprint(model)})
    sets.save(tmp_path / "n")
    with caplog.at_level(logging.INFO, logger="lape.artifacts"):
        back = NeuronSets.load(tmp_path / "n", model=model.to(torch.float16))
    assert back.neurons("a") == [(0, 1)]
    assert "the same model, made in float32, used in float16" in caplog.text
