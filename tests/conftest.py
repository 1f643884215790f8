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
