"""load_model() / load_tokenizer(): one-line LapeErrors for bad devices, an offline hub, paths
that are not there, unsafe or corrupt model folders. Every test is fast (tiny models only)."""

from __future__ import annotations

import json
import socket
import time

import huggingface_hub.constants
import pytest
import torch
from tiny_models import tiny_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import lape.model_cache
import lape.models
from lape.errors import LapeError
from lape.models import load_model, load_tokenizer


def _error(call, *needles: str) -> str:
    """Run ``call``; it must raise a one-line LapeError holding every needle."""
    with pytest.raises(LapeError) as err:
        call()
    msg = str(err.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def _save_tokenizer(folder) -> None:
    backend = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>").save_pretrained(folder)


def _save_tiny(folder, *, pickle: bool = False, tokenizer: bool = True) -> torch.nn.Module:
    """A tiny GPT-2 saved as a Hugging Face folder (safetensors, or a pickle checkpoint)."""
    model = tiny_model("gpt2")
    if pickle:
        folder.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder)
    if tokenizer:
        _save_tokenizer(folder)
    return model


def _same_logits(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        return torch.equal(a(ids).logits, b(ids).logits)


@pytest.fixture
def no_builtin(monkeypatch):
    """Fail the test if anything heavy (the built-in model) would be loaded."""
    def heavy(*args, **kwargs):
        raise AssertionError("the built-in model was loaded before the arguments were checked")

    for name in ("builtin_folder", "builtin_gguf", "dequantise_to"):
        monkeypatch.setattr(lape.model_cache, name, heavy)


@pytest.fixture
def hub_env(monkeypatch):
    """No offline variables, no remembered probe answer, no proxy, the default endpoint."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HTTPS_PROXY", "https_proxy",
                 "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(lape.models, "_UNREACHABLE", {}, raising=False)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# --------------------------------------------------------------------------------------------
# 1. devices, checked before anything loads


def test_cuda_on_a_machine_without_cuda(monkeypatch, no_builtin):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _error(lambda: load_model("builtin", device="cuda"), "device cuda is not available", "no CUDA GPU",
           "use cpu")
    _error(lambda: load_model("builtin", device_map="cuda:0"), "device map cuda:0 is not available")


def test_mps_on_a_machine_without_mps(monkeypatch, no_builtin):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    _error(lambda: load_model("builtin", device="mps"), "device mps is not available", "MPS")


def test_unknown_device(no_builtin):
    _error(lambda: load_model("builtin", device="banana"), "device 'banana' is not a device", "cpu",
           "cuda:N", "mps")
    _error(lambda: load_model("builtin", device="cuda:x"), "'cuda:x' is not a device")
    _error(lambda: load_model("builtin", device="meta"), "device meta", "use cpu")


def test_unknown_device_map(no_builtin):
    msg = _error(lambda: load_model("builtin", device_map="banana"), "device map 'banana' is not valid")
    for allowed in ("auto", "balanced", "balanced_low_0", "sequential", "cpu", "dict"):
        assert allowed in msg, msg
    _error(lambda: load_model("builtin", device_map={"": "banana"}), "'banana' is not a device")
    _error(lambda: load_model("builtin", device_map=1.5), "is not valid")


def test_device_index_out_of_range(monkeypatch, no_builtin):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    _error(lambda: load_model("builtin", device="cuda:7"), "device cuda:7 does not exist", "1 CUDA GPU",
           "cuda:0")
    _error(lambda: load_model("builtin", device_map="cuda:7"), "cuda:7 does not exist")
    _error(lambda: load_model("builtin", device_map={"": 7}), "cuda:7 does not exist")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    _error(lambda: load_model("builtin", device=torch.device("cuda", 2)), "2 CUDA GPUs", "cuda:0 to cuda:1")


def test_valid_devices_and_device_maps_pass_the_checks():
    lape.models._check_device(None)
    lape.models._check_device("cpu")
    lape.models._check_device(torch.device("cpu"))
    for dm in (None, "auto", "balanced", "balanced_low_0", "sequential", "cpu",
               {"": "cpu"}, {"model": "cpu", "lm_head": "disk"}):
        lape.models._check_device_map(dm)


def test_device_map_places_a_folder_model(tmp_path):
    _save_tiny(tmp_path)
    model, _ = load_model(str(tmp_path), device_map="cpu")
    assert lape.models.input_device(model).type == "cpu"


# --------------------------------------------------------------------------------------------
# 2. dtype


def test_unknown_dtype_is_refused_before_anything_loads(no_builtin):
    _error(lambda: load_model("builtin", dtype="float8"), "unknown dtype 'float8'", "bfloat16")
    _error(lambda: load_model("builtin", dtype=3), "unknown dtype 3")
    assert lape.models._parse_dtype("BF16") is torch.bfloat16
    assert lape.models._parse_dtype("torch.float16") is torch.float16


# --------------------------------------------------------------------------------------------
# 3. an offline hub fails fast, without retries; the local HF cache still works


def test_hub_id_on_this_machine_fails_fast_and_quietly(hub_env, capfd, caplog):
    """No mocking: on an offline machine the old code took ~49 s and printed 44 lines of retries.
    (An online machine gets a quick 'not found' from the hub instead.)"""
    t0 = time.perf_counter()
    msg = _error(lambda: load_model("lape-test-org/no-such-model-lape"), "lape-test-org/no-such-model-lape",
                 "builtin")
    assert time.perf_counter() - t0 < 10
    out, err = capfd.readouterr()
    assert "Retry" not in out + err + caplog.text
    if "cannot be reached" in msg:  # offline, as on the development machine
        assert "not in the local Hugging Face cache" in msg


def test_offline_is_detected_once_per_process(hub_env, monkeypatch):
    calls = []

    def no_network(address, timeout=None, *args, **kwargs):
        calls.append(address)
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_network)
    t0 = time.perf_counter()
    for _ in range(2):
        _error(lambda: load_model("someorg/some-model"), "someorg/some-model was not found",
               "the Hugging Face hub cannot be reached", "huggingface.co does not resolve")
    _error(lambda: load_tokenizer("someorg/some-model"), "tokenizer someorg/some-model was not found")
    assert time.perf_counter() - t0 < 5
    assert calls == [("huggingface.co", 443)]


def test_a_hanging_probe_is_cut_short(monkeypatch):
    def hang(*args, **kwargs):
        time.sleep(3)
        raise OSError("late")

    monkeypatch.setattr(socket, "create_connection", hang)
    t0 = time.perf_counter()
    assert "did not answer within 0.2 s" in lape.models._unreachable("huggingface.co", 443, timeout=0.2)
    assert time.perf_counter() - t0 < 1.5


@pytest.mark.parametrize("name", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_variables_skip_the_probe(hub_env, monkeypatch, name):
    def probe(*args, **kwargs):
        raise AssertionError("probed the network although offline mode is set")

    monkeypatch.setattr(socket, "create_connection", probe)
    monkeypatch.setenv(name, "1")
    _error(lambda: load_model("someorg/some-model"), f"{name}=1 is set", "seems offline",
           "not in the local Hugging Face cache", "--model builtin")


def test_probe_goes_to_the_endpoint_or_its_proxy(hub_env, monkeypatch):
    assert lape.models._hub_address() == ("huggingface.co", 443)
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example:8443")
    assert lape.models._hub_address() == ("hf-mirror.example", 8443)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert lape.models._hub_address() == ("proxy.example", 3128)


def _fake_hub_cache(monkeypatch, tmp_path, repo: str, **save) -> tuple:
    """A local Hugging Face cache holding ``repo`` at ``main``; returns (model, snapshot folder)."""
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    model = _save_tiny(snapshot, **save)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return model, snapshot


def test_offline_hub_id_loads_from_the_local_cache(monkeypatch, tmp_path, offline):
    model, _ = _fake_hub_cache(monkeypatch, tmp_path, "lape-test/tiny-gpt2")
    loaded, tok = load_model("lape-test/tiny-gpt2")
    assert loaded.lape_model_id == "lape-test/tiny-gpt2"
    assert _same_logits(loaded, model)
    assert tok("a b").input_ids == [1, 2]
    assert load_tokenizer("lape-test/tiny-gpt2")("b a").input_ids == [2, 1]


def test_offline_cached_hub_model_gets_the_folder_checks(monkeypatch, tmp_path, offline):
    _fake_hub_cache(monkeypatch, tmp_path, "lape-test/pickled", pickle=True)
    _error(lambda: load_model("lape-test/pickled"), "lape-test/pickled", "pickle")


def test_offline_partly_cached_hub_model(monkeypatch, tmp_path, offline):
    _, snapshot = _fake_hub_cache(monkeypatch, tmp_path, "lape-test/partial")
    (snapshot / "config.json").unlink()
    _error(lambda: load_model("lape-test/partial"), "only partly in the local Hugging Face cache",
           "seems offline")
    assert load_tokenizer("lape-test/partial")("a").input_ids == [1]  # the tokenizer is there


# --------------------------------------------------------------------------------------------
# 4. something that looks like a path is a path


@pytest.mark.parametrize("spec", ["a/b/c", "./nope", "../nope-lape", "~/nope-lape-dir", "nope\\x",
                                  "/no/such/folder"])
def test_path_like_specs_never_go_to_the_hub(hub_env, monkeypatch, spec):
    def probe(*args, **kwargs):
        raise AssertionError("a path was sent to the hub")

    monkeypatch.setattr(socket, "create_connection", probe)
    _error(lambda: load_model(spec), f"model path {spec} does not exist", "--model builtin")
    _error(lambda: load_tokenizer(spec), f"tokenizer path {spec} does not exist")


def test_missing_path_under_an_existing_folder_is_a_path(hub_env, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    _error(lambda: load_model("models/x"), "model path models/x does not exist", "models exists here")


def test_ambiguous_missing_relative_path_names_both_possibilities(monkeypatch, tmp_path, offline):
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    _error(lambda: load_model("nope_dir/x"), "no folder nope_dir/x here",
           "not in the local Hugging Face cache", "hub cannot be reached", "check the path")
    assert time.perf_counter() - t0 < 10


def test_which_specs_look_like_paths(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local").mkdir()
    looks = lape.models._looks_like_path
    for spec in ("/x", "./x", "../x", "~/x", "x.gguf", "a/b/c", "a\\b", "local/x", "C:/models/x"):
        assert looks(spec), spec
    for spec in ("gpt2", "meta-llama/Llama-2-7b-hf", "nope_dir/x"):
        assert not looks(spec), spec


def test_a_file_is_not_a_model_folder(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    _error(lambda: load_model(str(tmp_path / "model.safetensors")), "is a file, not a folder", ".gguf")


def test_not_a_hub_id_either(hub_env, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _error(lambda: load_model("no such model"), "neither a folder here nor a Hugging Face hub id")


# --------------------------------------------------------------------------------------------
# 5. pickle checkpoints and custom code need --trust-remote-code


def test_pickle_only_folder_is_refused(tmp_path):
    _save_tiny(tmp_path, pickle=True)
    _error(lambda: load_model(str(tmp_path)), "pickle checkpoint (pytorch_model.bin", "can run code",
           "convert it to safetensors", "--trust-remote-code")


def test_pickle_only_folder_loads_when_trusted(tmp_path):
    model = _save_tiny(tmp_path, pickle=True)
    loaded, _ = load_model(str(tmp_path), trust_remote_code=True)
    assert _same_logits(loaded, model)


def test_safetensors_win_over_a_pickle_beside_them(tmp_path):
    model = _save_tiny(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle, and never read")
    loaded, _ = load_model(str(tmp_path))
    assert _same_logits(loaded, model)


def test_auto_map_is_refused(tmp_path):
    _save_tiny(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomLM"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    _error(lambda: load_model(str(tmp_path)), "own Python code", "config.json has auto_map",
           "runs on this machine", "--trust-remote-code")


def test_modeling_files_are_refused_unless_trusted(tmp_path):
    model = _save_tiny(tmp_path)
    (tmp_path / "modeling_custom.py").write_text("raise SystemExit('custom code ran')\n")
    _error(lambda: load_model(str(tmp_path)), "own Python code (modeling_custom.py)", "--trust-remote-code")
    loaded, _ = load_model(str(tmp_path), trust_remote_code=True)
    assert _same_logits(loaded, model)


def test_tokenizer_code_is_refused_for_load_tokenizer(tmp_path):
    _save_tokenizer(tmp_path)
    (tmp_path / "tokenization_custom.py").write_text("")
    _error(lambda: load_tokenizer(str(tmp_path)), "tokenizer folder", "tokenization_custom.py",
           "--trust-remote-code")
    assert load_tokenizer(str(tmp_path), trust_remote_code=True)("a").input_ids == [1]


# --------------------------------------------------------------------------------------------
# 6. corrupt or incomplete folders


def test_corrupt_config_json(tmp_path):
    _save_tiny(tmp_path)
    (tmp_path / "config.json").write_text('{\n  "model_type": "gpt2",\n  "n_layer": 3,,\n}\n')
    msg = _error(lambda: load_model(str(tmp_path)), str(tmp_path / "config.json"), "is not valid JSON",
                 "line 3")
    assert "repair" in msg


def test_config_json_that_is_not_an_object(tmp_path):
    _save_tiny(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    _error(lambda: load_model(str(tmp_path)), "config.json holds a JSON list, not an object")


def test_config_json_without_model_type(tmp_path):
    _save_tiny(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 96, "n_layer": 3}))
    _error(lambda: load_model(str(tmp_path)), "config.json names no model", "model_type", "architectures")


def test_config_json_with_an_unknown_model_type(tmp_path):
    _save_tiny(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model_type"] = "banana"
    (tmp_path / "config.json").write_text(json.dumps(config))
    _error(lambda: load_model(str(tmp_path)), "model type 'banana'", "upgrade transformers")


def test_folder_without_weights(tmp_path):
    _save_tiny(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    _error(lambda: load_model(str(tmp_path)), "holds no weights")


def test_folder_without_tokenizer(tmp_path):
    _save_tiny(tmp_path, tokenizer=False)
    _error(lambda: load_model(str(tmp_path)), "has no tokenizer", "save_pretrained")


def test_corrupt_tokenizer_json(tmp_path):
    _save_tiny(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{nope")
    _error(lambda: load_model(str(tmp_path)), "the tokenizer of model folder", "could not be loaded")


# --------------------------------------------------------------------------------------------
# 7. load_tokenizer: the same handling


def test_load_tokenizer_of_a_tokenizer_only_folder(tmp_path):
    _save_tokenizer(tmp_path)
    assert load_tokenizer(str(tmp_path))("a b").input_ids == [1, 2]


def test_load_tokenizer_errors(tmp_path, monkeypatch, offline):
    monkeypatch.chdir(tmp_path)
    _error(lambda: load_tokenizer("nope_dir/x"), "tokenizer nope_dir/x was not found",
           "no folder nope_dir/x here", "builtin")
    _error(lambda: load_tokenizer("/no/such/file.gguf"), "tokenizer file /no/such/file.gguf does not exist")
    (tmp_path / "empty").mkdir()
    _error(lambda: load_tokenizer("empty"), "tokenizer folder empty has no tokenizer")
    _save_tokenizer(tmp_path / "tok")
    (tmp_path / "tok" / "tokenizer_config.json").write_text("{")
    _error(lambda: load_tokenizer("tok"), "tokenizer_config.json is not valid JSON", "line 1")


def test_sequences_longer_than_the_position_range_are_refused_before_work():
    """--seq-len 100000000 used to try to allocate hundreds of GB; now the config refuses it, and a
    length the config allows but the model cannot attend over is refused by record()."""
    import torch
    from tiny_models import tiny_model

    from lape.models import check_positions
    from lape.neurons.stats import RecordConfig, record

    with pytest.raises(LapeError, match="setting seq_len \\(--seq-len\\) is 100000000: it must be at most"):
        RecordConfig(seq_len=100_000_000)
    model = tiny_model("gpt2")  # n_positions 1024
    check_positions(model, 1024)
    with pytest.raises(LapeError, match="longer than GPT2LMHeadModel can attend over \\(1024 positions\\)"):
        check_positions(model, 4096)

    class Seq:
        input_ids, attention_mask = torch.ones(8, dtype=torch.long), torch.ones(8, dtype=torch.long)

    class Stream(list):
        seq_len = 4096

    with pytest.raises(LapeError, match="--seq-len"):
        record(model, {"a": Stream([Seq()]), "b": Stream([Seq()])}, progress=False)
