"""Data: Fashion-MNIST (shipped offline by Debian), scikit-learn digits as a transfer target, and local roots for the
`paper` profile. Every image tensor is float32 in [0, 1], shape [N, C, H, W]; labels are int64 [N].

Nothing is downloaded at run time except by `prepare_fashion_mnist`, the set-up step behind `make setup`. The raw
Fashion-MNIST files are checked by size, idx header and sha256 whenever they are read; `python -m utils.data` repairs
a damaged copy (moved aside, decompressed again). Relative roots are taken relative to the repository.
"""
from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from utils.config import repo_path
from utils.store import quarantine, text_digest

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
RAW_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
# What each decompressed file must be: its idx header (magic number: 0x0803 images, 0x0801 labels; then the sizes)
# and its sha256 (the publisher's files; Debian only recompressed them, so the decompressed bytes are the same).
RAW_HEADERS = {"train-images-idx3-ubyte": (0x0803, (60000, 28, 28)), "train-labels-idx1-ubyte": (0x0801, (60000,)),
               "t10k-images-idx3-ubyte": (0x0803, (10000, 28, 28)), "t10k-labels-idx1-ubyte": (0x0801, (10000,))}
RAW_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


class DataMissingError(FileNotFoundError):
    """A dataset is not where the suite looks for it; the message names the fix."""


class DataCorruptError(ValueError):
    """A data file is damaged (wrong size, header or sha256); the message names the file and the repair."""


def _raw_dir(root: str | os.PathLike) -> Path:
    return repo_path(root) / "FashionMNIST" / "raw"


def _raw_problem(name: str, data: bytes) -> str | None:
    """What is wrong with the bytes of raw file `name` (size, idx header, sha256), or None when they are right."""
    magic, dims = RAW_HEADERS[name]
    size = 4 + 4 * len(dims) + int(np.prod(dims))
    if len(data) != size:
        return f"{len(data):,} bytes instead of {size:,} (truncated or padded)"
    head = [int.from_bytes(data[4 * i: 4 * i + 4], "big") for i in range(1 + len(dims))]
    if head != [magic, *dims]:
        return f"idx header {head} instead of {[magic, *dims]} (not this Fashion-MNIST file, or zeroed)"
    if text_digest(data) != RAW_SHA256[name]:
        return "sha256 differs from the published file's (damaged content)"
    return None


def raw_problems(root: str | os.PathLike) -> dict[str, str]:
    """{path: what is wrong} for each raw Fashion-MNIST file under `root` that is missing or damaged."""
    raw = _raw_dir(root)
    out = {}
    for name in RAW_FILES:
        path = raw / name
        problem = _raw_problem(name, path.read_bytes()) if path.is_file() else "missing"
        if problem:
            out[str(path)] = problem
    return out


def fashion_mnist_ready(root: str | os.PathLike) -> bool:
    """True when the four raw files under `root` are there and intact (size, idx header, sha256)."""
    return not raw_problems(root)


def _decompress_into(src_dir: Path, raw: Path) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    for name in RAW_FILES:
        tmp = raw / (name + ".tmp")
        with gzip.open(src_dir / (name + ".gz"), "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        os.replace(tmp, raw / name)  # atomic: a killed set-up never leaves a half file


def prepare_fashion_mnist(root: str | os.PathLike = "data", *, debian_dir: Path = DEBIAN_DIR,
                          allow_apt: bool = True, allow_download: bool = True) -> Path:
    """Make `<root>/FashionMNIST/raw/` hold the four decompressed idx files; return that folder.

    Order: already there -> Debian's `dataset-fashion-mnist` files (installed with apt-get when missing and we are
    root) -> torchvision's download (needs internet) -> `DataMissingError` naming both fixes. Debian recompressed
    the files, so their md5 differs from upstream and torchvision's own integrity check would reject the .gz files;
    we decompress them ourselves.
    """
    raw = _raw_dir(root)
    problems = raw_problems(root)
    if not problems:
        return raw
    for path, problem in problems.items():  # a damaged copy is kept aside, never trusted again
        if problem != "missing":
            quarantine(path, f"damaged Fashion-MNIST file: {problem}")
    debian_dir = Path(debian_dir)
    have_debian = all((debian_dir / (f + ".gz")).is_file() for f in RAW_FILES)
    apt_error = ""
    if not have_debian and allow_apt and shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        print("Fashion-MNIST: installing the Debian package dataset-fashion-mnist ...", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"]):
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                apt_error = (r.stderr or r.stdout).strip()[-500:]
                break
        have_debian = all((debian_dir / (f + ".gz")).is_file() for f in RAW_FILES)
    if have_debian:
        _decompress_into(debian_dir, raw)
        return raw
    download_error = ""
    if allow_download:
        try:
            from torchvision.datasets import FashionMNIST
            FashionMNIST(str(repo_path(root)), train=True, download=True)
            FashionMNIST(str(repo_path(root)), train=False, download=True)
        except Exception as e:  # no internet, or a mirror down
            download_error = f"{type(e).__name__}: {e}"
        if fashion_mnist_ready(root):
            return raw
    raise DataMissingError(
        f"Fashion-MNIST is not in {raw} and could not be fetched.\n"
        f"Fix it one of two ways:\n"
        f"  1. as root on Debian/Ubuntu: `apt-get update && apt-get install dataset-fashion-mnist` "
        f"(files land in {debian_dir}), then rerun `make setup`;\n"
        f"  2. on a machine with internet: `python -c \"from torchvision.datasets import FashionMNIST; "
        f"FashionMNIST('{root}', download=True)\"`.\n"
        + (f"apt-get said: {apt_error}\n" if apt_error else "")
        + (f"download said: {download_error}\n" if download_error else ""))


def _read_raw(root: str | os.PathLike, name: str) -> np.ndarray:
    """The array of raw file `name`, after checking its size, idx header and sha256."""
    path = _raw_dir(root) / name
    data = path.read_bytes()
    problem = _raw_problem(name, data)
    if problem:
        raise DataCorruptError(f"{path} is damaged: {problem}. Repair it with `python -m utils.data --root {root}` "
                               f"(it moves the damaged copy aside and decompresses the file again).")
    dims = RAW_HEADERS[name][1]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def subset_indices(n_total: int, n: int | None, seed: int) -> torch.Tensor:
    """Deterministic subset: the first `n` of a seeded permutation (so a larger `n` contains a smaller one); `None`
    means all `n_total` points. n <= 0 is an error (it used to mean "all", silently)."""
    if n is not None and int(n) <= 0:
        raise ValueError(f"n={n} points asked for: pass a count >= 1, or None for the whole split")
    if n is None or n >= n_total:
        return torch.arange(n_total)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=g)[:n].sort().values


def load_fashion_mnist(root: str | os.PathLike = "data", split: str = "train", n: int | None = None,
                       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as (x float32 [N,1,28,28] in [0,1], y int64 [N]); `n` points chosen deterministically by `seed`."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    names = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    if not all((_raw_dir(root) / f).is_file() for f in names):
        raise DataMissingError(
            f"Fashion-MNIST is not prepared under {_raw_dir(root)} (parameter `data_root`={str(root)!r}). "
            f"Run `make setup` (or `python -m utils.data --root {root}`) to install and decompress it.")
    x = torch.from_numpy(_read_raw(root, names[0]).copy())
    y = torch.from_numpy(_read_raw(root, names[1]).astype(np.int64))
    idx = subset_indices(len(y), n, seed)
    return x[idx].unsqueeze(1).float().div_(255.0), y[idx]


def load_digits_28(split: str = "train", n: int | None = None, seed: int = 0,
                   test_fraction: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits upsampled (bilinear) to [N,1,28,28] in [0,1]: a real, offline transfer target.

    The 1,797 images are split train/test by a fixed seeded permutation (`test_fraction` to test), independent of `seed`
    so that every experiment shares one test set; `seed` only picks the `n`-subset.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp_(0, 1)
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))
    n_test = int(round(test_fraction * len(y)))
    part = perm[:n_test] if split == "test" else perm[n_test:]
    part = part[subset_indices(len(part), n, seed)]
    return x[part], y[part]


def load_image_folder(root: str | os.PathLike, size: int = 224, param: str = "data_root"):
    """An ImageFolder (ImageNet layout) as a Dataset of ([3,size,size] in [0,1], label); never downloads."""
    from torchvision import datasets, transforms

    root = repo_path(root)
    if not root.is_dir():
        raise DataMissingError(f"image folder {root} does not exist: set the parameter `{param}` to the folder that "
                               f"holds one sub-folder per class (ImageNet layout).")
    tf = transforms.Compose([transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size),
                             transforms.ToTensor()])
    return datasets.ImageFolder(str(root), transform=tf)


def load_torchvision_set(name: str, root: str | os.PathLike, split: str = "train", size: int = 224):
    """CIFAR-10/100 and other torchvision classification sets from a local root (download=False), images in [0,1]."""
    from torchvision import datasets, transforms

    classes = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}
    if name not in classes:
        raise ValueError(f"unknown transfer set {name!r}; choose one of {sorted(classes)} or 'digits'")
    tf = transforms.Compose([transforms.Resize(size), transforms.ToTensor()])
    try:
        return classes[name](str(repo_path(root)), train=(split == "train"), download=False, transform=tf)
    except RuntimeError as e:
        raise DataMissingError(f"{name} not found under {root}: set `data_root` to a folder holding it "
                               f"(torchvision layout); nothing is downloaded at run time. ({e})") from e


def load_classification(task: str, split: str, *, data_root: str = "data", n: int | None = None, seed: int = 0):
    """Uniform entry for the notebooks: `task` in {fashion_mnist, digits} returns tensors (x, y)."""
    if task == "fashion_mnist":
        return load_fashion_mnist(data_root, split, n, seed)
    if task == "digits":
        return load_digits_28(split, n, seed)
    raise ValueError(f"task {task!r} has no tensor loader; use load_image_folder/load_torchvision_set for `paper`")


def classification_task(task: str, *, data_root: str = "data", n_train: int | None = None, n_test: int | None = None,
                        seed: int = 0) -> dict:
    """Train and test tensors of a classification task: {"x_train","y_train","x_test","y_test","n_classes","task"}.

    The test subset is the first `n_test` points of a seeded permutation, so a notebook that attacks fewer points
    attacks a prefix-compatible subset of the points the probe was scored on.
    """
    x_tr, y_tr = load_classification(task, "train", data_root=data_root, n=n_train, seed=seed)
    x_te, y_te = load_classification(task, "test", data_root=data_root, n=n_test, seed=seed)
    return {"task": task, "x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te,
            "n_classes": int(max(y_tr.max(), y_te.max())) + 1}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Prepare Fashion-MNIST under <root>/FashionMNIST/raw/")
    ap.add_argument("--root", default="data", help="data root (a relative path is taken from the repository)")
    args = ap.parse_args(argv)
    try:
        raw = prepare_fashion_mnist(args.root)
    except DataMissingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Fashion-MNIST ready in {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
