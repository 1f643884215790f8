"""Tiny randomly initialised models, one per architecture family, built in-process from configs."""

from __future__ import annotations

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
