"""A model's fingerprint: what artifacts record so that neurons found on one model are never
silently applied to another, and so that a stage's cache key changes whenever any weight does.

:func:`fingerprint` gives architecture, sizes, a few sampled weight values (compared with a
tolerance by :func:`same_model`, so one model loaded in another dtype still matches) and a digest of
every weight (``content``, cached per tensor until it changes in place).
"""

from __future__ import annotations

import hashlib
import weakref
from typing import Any

import torch

_SAMPLE = 16  # values per picked tensor kept in the fingerprint, compared with a tolerance


def _picks(params: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    return [params[0], params[len(params) // 2], params[-1]] if params else []


_content_cache: dict[int, tuple[Any, int, int, str]] = {}  # id(param) -> (weakref, data_ptr, _version, digest)


def _param_digest(p: torch.Tensor) -> str:
    """Every value of ``p``: its raw bytes summed as int64 words and as int32 words (wrapping, so
    exact and independent of the reduction order and thread count; about 0.1 s per 100M values).
    Any edit that changes a value changes them, short of edits that cancel exactly."""
    raw = p.detach().contiguous().reshape(-1).view(torch.uint8)
    n8, n4 = raw.numel() // 8 * 8, raw.numel() // 4 * 4
    s64 = int(raw[:n8].view(torch.int64).sum()) & (2**64 - 1)
    s32 = int(raw[:n4].view(torch.int32).sum(dtype=torch.int32)) & (2**32 - 1)
    return f"{s64:x}.{s32:x}.{bytes(raw[n8:].tolist()).hex()}"


def _content(params: list[tuple[str, torch.Tensor]]) -> str:
    """A digest of every parameter's content. Each tensor's digest is kept until the tensor is
    changed in place (its version counter moves) or replaced, so repeated calls on an unchanged
    model cost microseconds; an in-place edit (``edit_weights``, an optimizer step) moves the
    version counter and is seen. Writes through ``param.data`` bypass that counter and are not
    seen (lape never edits that way)."""
    h = hashlib.sha256()
    for name, p in params:
        hit = _content_cache.get(id(p))
        if hit is None or hit[0]() is not p or hit[1] != p.data_ptr() or hit[2] != p._version:
            hit = (weakref.ref(p), p.data_ptr(), p._version, _param_digest(p))
            _content_cache[id(p)] = hit
        h.update(f"{name}{tuple(p.shape)}:{hit[3]};".encode())
    for key in [k for k, v in _content_cache.items() if v[0]() is None]:
        del _content_cache[key]
    return h.hexdigest()[:16]


def fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """Identify a model's weights: architecture, sizes, a few weight values, a checksum of those
    and a digest of every value.

    Artifacts carry this so that neurons found on one model are never silently applied to another.
    It is computed afresh on every call, so it can never go stale after weights are edited:
    ``content`` covers every weight (cached per tensor until the tensor changes in place), so a
    model edited by ``edit_weights`` or trained never shares a stage's cache key with the unedited
    one. :func:`same_model` compares architecture, sizes and the sampled weight values with a
    tolerance, so the same weights loaded in float32, bfloat16 or float16 match (an edited model is
    still "the same model" for applying its neurons); ``dtype`` is recorded (results computed in
    another dtype differ, so cache keys include it).

    Returns:
        ``{"architecture", "num_layers", "hidden_size", "intermediate_size", "vocab_size",
        "num_parameters", "dtype", "sample", "checksum", "content"}``.
    """
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    params = list(model.named_parameters())
    h = hashlib.sha256()
    sample: list[float] = []
    for name, p in _picks(params):
        values = p.detach().reshape(-1)[:_SAMPLE].to("cpu", torch.float32)
        sample += [float(f"{v:.3g}") for v in values.tolist()]
        h.update(f"{name}{tuple(p.shape)}".encode())
        # bfloat16 rounding keeps the display checksum stable across most dtypes
        h.update(values.to(torch.bfloat16).view(torch.int16).numpy().tobytes())
    return {
        "architecture": type(model).__name__,
        "num_layers": getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None),
        "hidden_size": getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None),
        "intermediate_size": getattr(cfg, "intermediate_size", None) or getattr(cfg, "ffn_dim", None)
        or getattr(cfg, "n_inner", None),
        "vocab_size": getattr(cfg, "vocab_size", None),
        "num_parameters": sum(p.numel() for _, p in params),
        "dtype": str(params[0][1].dtype).replace("torch.", "") if params else None,
        "sample": sample,
        "checksum": h.hexdigest()[:16],
        "content": _content(params),
    }


_SIZE_KEYS = ("architecture", "num_layers", "hidden_size", "intermediate_size", "vocab_size", "num_parameters")


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two fingerprints describe the same weights (in any dtype)."""
    if any(a.get(k) != b.get(k) for k in _SIZE_KEYS):
        return False
    sa, sb = a.get("sample"), b.get("sample")
    if not sa or not sb or len(sa) != len(sb):
        return a.get("checksum") == b.get("checksum")
    # float16 keeps ~3 significant digits: equal weights agree to 1e-2 relative
    return bool(torch.allclose(torch.tensor(sa), torch.tensor(sb), rtol=1e-2, atol=1e-5))


def dtype_note(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """A note when two fingerprints of the same weights differ in dtype (allowed, but results
    computed in one dtype are approximations of the other's)."""
    if a.get("dtype") and b.get("dtype") and a["dtype"] != b["dtype"]:
        return f"made in {a['dtype']}, used in {b['dtype']}"
    return None


def describe_fingerprint(fp: dict[str, Any]) -> str:
    """A short human-readable form: ``Gemma3ForCausalLM 18L 268M #1a2b3c4d``."""
    n = fp.get("num_parameters") or 0
    return f"{fp.get('architecture')} {fp.get('num_layers')}L {n / 1e6:.0f}M #{fp.get('checksum', '')[:8]}"
