import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# Keep the test suite predictable on the 2-core CI machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def data_root() -> str:
    """The prepared Fashion-MNIST root (`make setup` prepares it; prepared here too when tests run alone)."""
    from utils.data import prepare_fashion_mnist

    prepare_fashion_mnist(ROOT / "data")
    return str(ROOT / "data")
