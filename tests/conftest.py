import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def builtin():
    """The built-in Gemma 3 270M (loaded once per session)."""
    from lape import load_model

    return load_model("builtin")


@pytest.fixture
def one_thread():
    """One intra-op thread for a test: tiny models gain nothing from more, and OpenMP threads
    spin-wait for a busy core (a tiny backward pass took 5 s instead of 25 ms with 2 threads
    beside a benchmark). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
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
