import os
import sys
from pathlib import Path

# no test reaches a hub: a hub id fails at once instead of after the network's timeouts
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
# under pytest-xdist (the README's `-n 2`) each worker gets one core: one torch thread per worker
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the subprocesses the tests start too
torch.set_num_threads(1 if WORKER else min(2, os.cpu_count() or 1))


SPREAD = {"test_benchmarks.py"}  # independent subprocess runs: spread over the workers one by one


def pytest_collection_modifyitems(config, items):
    """Under ``--dist loadgroup`` each test file runs on one worker (its module fixtures are built
    once; the notebooks run in order), except the files in ``SPREAD``, whose tests go to whichever
    worker is free."""
    for item in items:
        if item.path.name not in SPREAD:
            item.add_marker(pytest.mark.xdist_group(item.path.name))


def pytest_configure(config):
    """With several workers, build the built-in model's cache (de-quantised once, about a minute)
    before they start, so that they do not build it side by side and swap it under each other."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        from lape.models import load_model

        load_model("builtin")


@pytest.fixture(scope="session")
def builtin():
    """The built-in Gemma 3 270M (loaded once per session)."""
    from lape import load_model

    return load_model("builtin")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module (the only such fixture): tiny models gain nothing from
    more, and OpenMP threads spin-wait for a busy core (a tiny backward pass took 5 s instead of
    25 ms with 2 threads beside a benchmark). Module-scoped, so that module fixtures computed for
    the tests run with it too: ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model_loads(monkeypatch):
    """Counts calls of lape.models.load_model; each raises ``tiny_models.ModelWouldLoad``, so a
    test can check that bad input is refused before any model loads."""
    from tiny_models import ModelWouldLoad

    import lape.models

    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        raise ModelWouldLoad

    monkeypatch.setattr(lape.models, "load_model", spy)
    return calls
