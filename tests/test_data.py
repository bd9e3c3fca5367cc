import hashlib

import pytest
import torch

from utils import data
from utils.config import PROFILES, REPO_ROOT, notebook_parameters, output_dirs


def test_fashion_mnist_shapes_ranges_and_labels(data_root):
    x, y = data.load_fashion_mnist(data_root, "train")
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (60000,) and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) > 0.99
    assert torch.bincount(y).tolist() == [6000] * 10
    xt, yt = data.load_fashion_mnist(data_root, "test")
    assert xt.shape == (10000, 1, 28, 28) and torch.bincount(yt).tolist() == [1000] * 10
    # Known statistic of the train split (mean pixel 0.2860), used by the Normalize layer of the small encoders.
    assert abs(float(x.mean()) - 0.2860) < 1e-3


def test_subsets_are_deterministic_and_nested(data_root):
    a, ya = data.load_fashion_mnist(data_root, "test", n=500, seed=3)
    b, yb = data.load_fashion_mnist(data_root, "test", n=500, seed=3)
    c, _ = data.load_fashion_mnist(data_root, "test", n=500, seed=4)
    assert torch.equal(a, b) and torch.equal(ya, yb)
    assert not torch.equal(a, c)
    idx_small = data.subset_indices(10000, 100, seed=3)
    idx_big = data.subset_indices(10000, 500, seed=3)
    assert set(idx_small.tolist()) <= set(idx_big.tolist())


def test_digits_transfer_set():
    xtr, ytr = data.load_digits_28("train")
    xte, yte = data.load_digits_28("test")
    assert xtr.shape[1:] == (1, 28, 28) and len(xtr) + len(xte) == 1797
    assert 0.0 <= float(xtr.min()) and float(xtr.max()) <= 1.0
    assert set(ytr.unique().tolist()) == set(range(10))
    # train and test are disjoint images (compare hashes of the pixels)
    h = lambda t: {hashlib.sha1(im.numpy().tobytes()).hexdigest() for im in t}
    assert not (h(xtr) & h(xte))


def test_missing_data_error_names_both_fixes(tmp_path):
    with pytest.raises(data.DataMissingError) as e:
        data.prepare_fashion_mnist(tmp_path / "nothing", debian_dir=tmp_path / "no-debian", allow_apt=False,
                                   allow_download=False)
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "download=True" in msg
    with pytest.raises(data.DataMissingError, match="data_root"):
        data.load_fashion_mnist(tmp_path / "nothing", "train")


def test_deleting_data_and_preparing_again_restores_the_same_files(tmp_path, data_root):
    if not (data.DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("the Debian package is not installed on this machine")
    raw = data.prepare_fashion_mnist(tmp_path / "d", allow_apt=False, allow_download=False)
    for name in data.RAW_FILES:
        assert (raw / name).read_bytes() == (data._raw_dir(data_root) / name).read_bytes()


def test_profiles_are_complete():
    keys = {nb: set(notebook_parameters("cpu", nb)) for nb in ("01", "02", "03", "04", "05")}
    for name in PROFILES:
        for nb, k in keys.items():
            assert set(notebook_parameters(name, nb)) == k, (name, nb)
    assert output_dirs("cpu")["figures_dir"] == REPO_ROOT / "figures"
    assert output_dirs("smoke")["figures_dir"] == REPO_ROOT / "figures" / "smoke"
    with pytest.raises(ValueError, match="unknown profile"):
        notebook_parameters("gpu", "01")
