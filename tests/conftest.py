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


@pytest.fixture
def tiny_repo(tmp_path):
    """A throwaway repository for the chain runner. `tiny_repo("01_x.ipynb", "x = 1", ("md", "## A"), ...)` writes a
    notebook of a `parameters` cell (smoke profile, no progress bars) and the given cells (a string: code; ("md",
    text): markdown) under notebooks/; returns the repository root."""
    import nbformat

    from utils.pipeline import KERNEL_NAME

    for folder in ("notebooks", "utils"):
        (tmp_path / folder).mkdir(exist_ok=True)
    (tmp_path / "pyproject.toml").write_text("")

    def write(name: str, *cells) -> Path:
        nb = nbformat.v4.new_notebook(cells=[
            nbformat.v4.new_code_cell("profile = 'smoke'\nprogress = False", metadata={"tags": ["parameters"]}),
            *(nbformat.v4.new_markdown_cell(c[1]) if isinstance(c, tuple) else nbformat.v4.new_code_cell(c)
              for c in cells)])
        nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "x", "language": "python"}
        nbformat.write(nb, tmp_path / "notebooks" / name)
        return tmp_path

    return write


@pytest.fixture(scope="session")
def trained_cnn(data_root):
    """The small CNN of tests/cnn_models.py trained 300 steps of 128 images (~83 % clean test accuracy), once per
    session for every attack test. Tests must not change its weights."""
    from cnn_models import fit_cnn, small_cnn

    torch.manual_seed(0)
    return fit_cnn(small_cnn(), data_root, steps=300, seed=1)
