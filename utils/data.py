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
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from utils.config import repo_path
from utils.imageset import FolderFiles, ImageSet, ResizedArrays, materialize
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


# --------------------------------------------------------------------------------------------------------------------
# Classification tasks by name. Which one a notebook runs is a parameter (`task`, `transfer_tasks`); the files are
# found through the path parameters (`data_root`, `imagenet_root`, `transfer_root`), so no notebook names a dataset.
# --------------------------------------------------------------------------------------------------------------------
DIGITS_CLASSES = [str(d) for d in range(10)]
# Pixel statistics an encoder trained on a task normalizes with: Fashion-MNIST's train split; ImageNet's.
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CIFAR_FILES = {"cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                           "meta": "batches.meta"},
               "cifar100": {"train": ["train"], "test": ["test"], "meta": "meta"}}
# The path parameter each task reads its files from (None: shipped with the suite's packages).
SOURCE_KEYS = ("data_root", "imagenet_root", "transfer_root", "image_size")


@dataclass(frozen=True)
class TaskInfo:
    """What a classification task is: its channels, the pixel statistics an encoder trained on it normalizes with,
    the parameter naming its folder, and the layout expected there."""

    name: str
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    root_key: str | None
    layout: str


TASKS: dict[str, TaskInfo] = {
    "fashion_mnist": TaskInfo("fashion_mnist", 1, FASHION_MEAN, FASHION_STD, "data_root",
                              "<data_root>/FashionMNIST/raw/ (made by `make setup`)"),
    "digits": TaskInfo("digits", 1, FASHION_MEAN, FASHION_STD, None, "scikit-learn's 8x8 digits (installed)"),
    "imagenet": TaskInfo("imagenet", 3, IMAGENET_MEAN, IMAGENET_STD, "imagenet_root",
                         "<imagenet_root>/train/<class>/*.JPEG and <imagenet_root>/val/<class>/*.JPEG (ImageFolder)"),
    "cifar10": TaskInfo("cifar10", 3, IMAGENET_MEAN, IMAGENET_STD, "transfer_root",
                        "<transfer_root>/cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta)"),
    "cifar100": TaskInfo("cifar100", 3, IMAGENET_MEAN, IMAGENET_STD, "transfer_root",
                         "<transfer_root>/cifar-100-python/ (train, test, meta)"),
}


def task_info(task: str) -> TaskInfo:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    return TASKS[task]


def sources(params: dict) -> dict:
    """The path and size parameters among `params` that the task loaders take (`SOURCE_KEYS`)."""
    return {k: params[k] for k in SOURCE_KEYS if k in params}


def _root(task: str, roots: dict) -> Path:
    info = task_info(task)
    value = roots.get(info.root_key)
    if not value:
        raise DataMissingError(f"task {task!r} needs the parameter `{info.root_key}`: set it to the folder laid out "
                               f"as {info.layout} (e.g. `--set {info.root_key}=/path`)")
    return repo_path(value)


def task_problems(task: str, **roots) -> list[str]:
    """What is missing for `task` under the given roots (empty when its files are all there). Only Fashion-MNIST's
    raw files are read (size, idx header and sha256, `raw_problems`); the other tasks' files are only looked for."""
    info = task_info(task)
    if info.root_key is None:
        return []
    try:
        root = _root(task, roots)
    except DataMissingError as e:
        return [str(e)]
    if task == "fashion_mnist":
        return [f"{p}: {why}" for p, why in raw_problems(root).items()]
    if not root.is_dir():
        return [f"{root}: missing ({info.root_key} of task {task}; layout {info.layout})"]
    if task == "imagenet":
        return [f"{root / s}: missing (layout {info.layout})" for s in ("train", "val") if not (root / s).is_dir()]
    folder = root / CIFAR_DIRS[task]
    if not folder.is_dir():
        return [f"{folder}: missing (layout {info.layout})"]
    files = [*CIFAR_FILES[task]["train"], *CIFAR_FILES[task]["test"], CIFAR_FILES[task]["meta"]]
    return [f"{folder / f}: missing (layout {info.layout})" for f in files if not (folder / f).is_file()]


class _ArrayUnpickler(pickle.Unpickler):
    """Reads CIFAR's pickles without running code: only numpy arrays and plain containers may be rebuilt."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR file holds arrays, lists and bytes only")


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DataCorruptError(f"{path} is not a CIFAR pickle ({e}): copy the file again from the official archive")
    if not isinstance(obj, dict):
        raise DataCorruptError(f"{path} holds a {type(obj).__name__}, not CIFAR's dict")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def read_cifar(task: str, split: str, transfer_root: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10/100 from its own python-pickle files (the official archive, as torchvision lays it out), checked by
    format and size instead of torchvision's md5 (which rejects any copy that is not byte-identical): uint8 images
    [N, 3, 32, 32] and int64 labels [N]."""
    folder = _root(task, {"transfer_root": transfer_root}) / CIFAR_DIRS[task]
    label_key = "labels" if task == "cifar10" else "fine_labels"
    n_classes = 10 if task == "cifar10" else 100
    xs, ys = [], []
    for name in CIFAR_FILES[task][split]:
        path = folder / name
        if not path.is_file():
            raise DataMissingError(f"{path} is missing: set `transfer_root` to the folder holding {CIFAR_DIRS[task]}/ "
                                   f"(the official archive unpacked; nothing is downloaded at run time)")
        d = _read_pickle(path)
        x, y = np.asarray(d.get("data")), np.asarray(d.get(label_key, []), dtype=np.int64)
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or len(y) != len(x):
            raise DataCorruptError(f"{path}: data {x.dtype} {x.shape} with {len(y)} labels; CIFAR holds uint8 rows of "
                                   f"3072 values (32x32 RGB planes), one label each")
        if len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise DataCorruptError(f"{path}: labels outside 0..{n_classes - 1}")
        xs.append(x.reshape(-1, 3, 32, 32))
        ys.append(y)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _image_folder(root: Path, split: str, size: int):
    from torchvision import datasets, transforms

    folder = root / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise DataMissingError(f"{folder} does not exist: `imagenet_root` must hold train/ and val/, one sub-folder "
                               f"per class (see README, 'Running the study on ImageNet')")
    # the official evaluation: resize the short side to 256/224 of the crop, centre crop; RGB (grayscale and CMYK
    # JPEGs are converted by ImageFolder's loader); uint8, normalization is a layer inside each model
    tf = transforms.Compose([transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size),
                             transforms.PILToTensor()])
    return datasets.ImageFolder(str(folder), transform=tf)


def class_names(task: str, **roots) -> list[str]:
    """The class names of `task`, in label order (ImageNet: the class folder names)."""
    if task == "fashion_mnist":
        return list(FASHION_CLASSES)
    if task == "digits":
        return list(DIGITS_CLASSES)
    root = _root(task, roots)
    if task == "imagenet":
        folder = root / "train"
        if not folder.is_dir():
            raise DataMissingError(f"{folder} does not exist (`imagenet_root` must hold train/ and val/)")
        return sorted(p.name for p in folder.iterdir() if p.is_dir())
    meta = _read_pickle(root / CIFAR_DIRS[task] / CIFAR_FILES[task]["meta"])
    names = meta.get("label_names") or meta.get("fine_label_names") or []
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def load_classification(task: str, split: str, *, data_root: str = "data", imagenet_root: str | None = None,
                        transfer_root: str | None = None, image_size: int | None = None, n: int | None = None,
                        seed: int = 0) -> tuple[torch.Tensor | ImageSet, torch.Tensor]:
    """One split ("train" or "test"; ImageNet's "test" is its val folder) of a classification task by name, as
    (x, y int64 [N]); `n` points chosen by `seed` (`subset_indices`: a larger `n` holds a smaller one).
    x: Fashion-MNIST and digits (28x28, small) as a float32 tensor [N, C, H, W] in [0, 1]; ImageNet and CIFAR as an
    `ImageSet` (utils.imageset) that decodes on demand, so that no size of the set fills the host's memory (walk it
    with `image_batches`, or `materialize` a set that fits). `image_size`: ImageNet is resized and centre-cropped
    to it (224 in `paper`), CIFAR resized to it; None keeps the native size."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    info = task_info(task)
    roots = {"data_root": data_root, "imagenet_root": imagenet_root, "transfer_root": transfer_root}
    if task == "fashion_mnist":
        return load_fashion_mnist(data_root, split, n, seed)
    if task == "digits":
        return load_digits_28(split, n, seed)
    if task == "imagenet":
        ds = _image_folder(_root(task, roots), split, int(image_size or 224))
        if split == "test" and ds.classes != class_names(task, **roots):
            raise DataCorruptError(f"{_root(task, roots)}: val/ and train/ hold different class folders, so labels "
                                   f"would not match; give both the same class folders")
        idx = subset_indices(len(ds), n, seed)
        source, shape = FolderFiles(ds), (info.channels, int(image_size or 224), int(image_size or 224))
        y = torch.tensor([ds.targets[int(i)] for i in idx], dtype=torch.int64)
    else:
        x, y = read_cifar(task, split, transfer_root)
        idx = subset_indices(len(y), n, seed)
        source = ResizedArrays(x, y, image_size)
        side = source.size or x.shape[-1]
        shape, y = (info.channels, side, side), y[idx]
    return ImageSet(source, idx, shape, name=f"{task} {split}"), y


def load_points(task: str, split: str, *, n: int | None = None, seed: int = 0, **roots) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """`load_classification` as float32 tensors (an ImageSet decoded): for sets that are attacked, shown or
    otherwise used as a whole, whose size is a parameter (n_attack, n_teach), not the dataset's."""
    x, y = load_classification(task, split, n=n, seed=seed, **roots)
    return materialize(x), y


def classification_task(task: str, *, n_train: int | None = None, n_test: int | None = None, seed: int = 0,
                        **roots) -> dict:
    """Train and test tensors of a classification task: {"x_train","y_train","x_test","y_test","n_classes","task",
    "classes"}; `roots`: the path parameters and `image_size` (`sources(params)`).

    The test subset is the first `n_test` points of a seeded permutation, so a notebook that attacks fewer points
    attacks a prefix-compatible subset of the points the probe was scored on.
    """
    x_tr, y_tr = load_classification(task, "train", n=n_train, seed=seed, **roots)
    x_te, y_te = load_classification(task, "test", n=n_test, seed=seed, **roots)
    classes = class_names(task, **roots)
    return {"task": task, "x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te,
            "n_classes": max(len(classes), int(max(y_tr.max(), y_te.max())) + 1), "classes": classes}


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
