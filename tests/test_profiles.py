"""A profile is data: `--set` overrides, the preflight's one error, task-agnostic notebooks, the loaders of the
`paper` inputs (ImageFolder JPEGs of every mode, CIFAR from its own files), and classifiers on official encoders that
reload from their file alone."""
import ast
import json
import os
import pickle
import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from utils import config, data, pipeline, preflight, stats
from utils.checkpoints import REGISTRY
from utils.models import Classifier, build_encoder, read_classifier, save_classifier
from utils.imageset import ImageSet, materialize

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ --set overrides

def test_set_values_are_literals_or_strings():
    got = config.parse_set(["eps_linf=[0, 2 / 255]", "steps=20", "imagenet_root=/data/in 1k", "image_size=None",
                            "verify_sha256=False", "device=cuda:1"])
    assert got == {"eps_linf": [0, 2 / 255], "steps": 20, "imagenet_root": "/data/in 1k", "image_size": None,
                   "verify_sha256": False, "device": "cuda:1"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        config.parse_set(["steps"])


def test_unknown_key_is_an_error_listing_the_keys(capsys):
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['stpes'\].*steps"):
        config.check_overrides("paper", {"stpes": 5})
    assert pipeline.main(["--profile", "smoke", "--set", "stpes=5"]) == 2
    assert "stpes" in capsys.readouterr().err
    with pytest.raises(ValueError, match="stpes"):
        pipeline.run_chain("smoke", overrides={"stpes": 5}, log=lambda *_: None)


def test_overrides_reach_exactly_the_notebooks_that_take_the_key(monkeypatch):
    over = {"imagenet_root": "/elsewhere/imagenet", "steps": 7}
    for nb in ("01", "02", "03", "04", "05"):
        p = config.notebook_parameters("paper", nb, over)
        base = config.notebook_parameters("paper", nb, {})
        for k, v in over.items():
            assert p.get(k) == (v if k in base else None), (nb, k)
    # the runner hands them to its kernels through the environment; notebook_parameters reads them there
    monkeypatch.setenv(config.SET_ENV, json.dumps(over))
    assert config.notebook_parameters("paper", "03")["steps"] == 7
    assert config.notebook_parameters("paper", "03", {})["steps"] == config.PROFILES["paper"]["03"]["steps"]


def test_a_set_value_is_what_the_notebook_runs_with(monkeypatch):
    """Under a chain run with `--set steps=...` a notebook holding the injected value keeps it, even where it equals
    the cpu default (which otherwise means "take the profile's value")."""
    cpu_steps = config.notebook_parameters("cpu", "03", {})["steps"]
    monkeypatch.setenv(config.SET_ENV, json.dumps({"steps": cpu_steps}))
    ns = {**config.notebook_parameters("paper", "03")}
    assert pipeline.resolve_parameters("paper", "03", ns, log=lambda *_: None)["steps"] == cpu_steps


# ------------------------------------------------------------------------------------------------------- preflight

def test_preflight_lists_everything_missing_at_once(tmp_path):
    over = {k: str(tmp_path / k) for k in config.PATH_KEYS}
    with pytest.raises(preflight.PreflightError) as e:
        preflight.check("paper", ["01", "02", "03", "04", "05"], over)
    msg = str(e.value)
    for spec in REGISTRY.values():
        if spec.method in config.METHODS:
            assert spec.file_name in msg and (spec.url in msg or spec.conversion in msg), spec.method
    assert "imagenet_root" in msg and "cifar-10-batches-py" in msg and "VOC2012" in msg and "--set" in msg
    # what is there is not listed: a CIFAR-10 folder in place leaves the rest
    folder = tmp_path / "transfer_root" / "cifar-10-batches-py"
    _write_cifar(folder.parent, "cifar10", n=4)
    with pytest.raises(preflight.PreflightError) as e:
        preflight.check("paper", ["02"], over)
    msg = str(e.value)
    assert "cifar-10-batches-py" not in msg and "cifar-100-python" in msg and "imagenet" in msg


def test_the_runner_runs_the_preflight_before_any_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv(config.OUTPUT_ROOT_ENV, str(tmp_path))
    over = {"imagenet_root": str(tmp_path / "nowhere")}
    with pytest.raises(preflight.PreflightError, match="nowhere"):
        pipeline.run_chain("paper", only=["02"], overrides=over, log=lambda *_: None)
    assert not (tmp_path / "runs" / "paper" / "02_linear_eval.ipynb").exists()


# ---------------------------------------------------------------------------------------------- task-agnostic code

def test_no_dataset_name_or_profile_test_in_notebook_code():
    """A profile is data: the notebooks' code (not their parameters cell or prose) names no dataset and never asks
    which profile it runs in."""
    names = set(data.TASKS) | {"fashion_scenes", "voc", "FASHION_CLASSES", "load_fashion_mnist", "load_digits_28"}
    for path in pipeline.list_notebooks(ROOT):
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or "parameters" in cell.metadata.get("tags", []):
                continue
            strings = {n.value for n in ast.walk(ast.parse(cell.source)) if isinstance(n, ast.Constant)
                       and isinstance(n.value, str)}
            attrs = {n.attr for n in ast.walk(ast.parse(cell.source)) if isinstance(n, ast.Attribute)}
            assert not (strings | attrs) & names, f"{path.name} cell {i}: {(strings | attrs) & names}"
            assert not re.search(r"profile\s*[=!]=", cell.source), f"{path.name} cell {i} tests the profile"


# --------------------------------------------------------------------------------------------------------- loaders

def _write_cifar(root: Path, task: str, n: int = 6, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder = root / data.CIFAR_DIRS[task]
    folder.mkdir(parents=True, exist_ok=True)
    key = b"labels" if task == "cifar10" else b"fine_labels"
    k = 10 if task == "cifar10" else 100
    for split in ("train", "test"):
        for name in data.CIFAR_FILES[task][split]:
            batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                     key: [int(v) for v in rng.integers(0, k, n)], b"batch_label": name.encode()}
            (folder / name).write_bytes(pickle.dumps(batch))
    meta = {b"label_names" if task == "cifar10" else b"fine_label_names": [f"c{i}".encode() for i in range(k)]}
    (folder / data.CIFAR_FILES[task]["meta"]).write_bytes(pickle.dumps(meta))


@pytest.mark.parametrize("task", ["cifar10", "cifar100"])
def test_cifar_is_read_from_its_own_files_at_any_size(tmp_path, task):
    _write_cifar(tmp_path, task)
    n_files = len(data.CIFAR_FILES[task]["train"])
    lazy, y = data.load_classification(task, "train", transfer_root=str(tmp_path), seed=0)
    assert isinstance(lazy, ImageSet)  # decoded on demand: CIFAR upsampled to 224 would not fit in memory
    x = materialize(lazy)
    assert x.shape == (6 * n_files, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(lazy[3], x[3]) and torch.equal(lazy[torch.tensor([5, 1])], x[[5, 1]])
    raw = pickle.loads((tmp_path / data.CIFAR_DIRS[task] / data.CIFAR_FILES[task]["train"][0]).read_bytes())
    first = torch.from_numpy(raw[b"data"][0].reshape(3, 32, 32)).float() / 255
    assert torch.equal(x[0], first)  # R, G, B planes in that order
    big, _ = data.load_classification(task, "test", transfer_root=str(tmp_path), image_size=64)
    assert big.shape[-2:] == (64, 64)
    assert data.class_names(task, transfer_root=str(tmp_path))[:2] == ["c0", "c1"]


def test_cifar_files_are_checked_not_trusted(tmp_path):
    _write_cifar(tmp_path, "cifar10")
    target = tmp_path / "cifar-10-batches-py" / "data_batch_1"

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    target.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(data.DataCorruptError, match="refused"):
        data.load_classification("cifar10", "train", transfer_root=str(tmp_path))
    target.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(data.DataCorruptError, match="3072"):
        data.load_classification("cifar10", "train", transfer_root=str(tmp_path))
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(data.DataMissingError, match="transfer_root"):
        data.load_classification("cifar10", "test", transfer_root=str(tmp_path))


def test_image_folder_of_every_jpeg_mode_becomes_rgb_crops(tmp_path):
    """ImageNet holds grayscale and CMYK JPEGs among the RGB ones, of every size and aspect ratio: all come out as
    3-channel centre crops of `image_size`, labelled by their class folder."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, wnid in enumerate(["n01", "n02"]):
            d = tmp_path / split / wnid
            d.mkdir(parents=True)
            for i, (mode, size) in enumerate([("RGB", (50, 70)), ("L", (90, 40)), ("CMYK", (64, 64))]):
                arr = rng.integers(0, 256, (size[1], size[0], len(mode) if mode != "L" else 1), dtype=np.uint8)
                Image.fromarray(arr.squeeze(-1) if mode == "L" else arr, mode).save(d / f"{i}.JPEG")
    x, y = data.load_classification("imagenet", "test", imagenet_root=str(tmp_path), image_size=32)
    assert x.shape == (6, 3, 32, 32) and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]
    assert data.class_names("imagenet", imagenet_root=str(tmp_path)) == ["n01", "n02"]
    sub, _ = data.load_classification("imagenet", "train", imagenet_root=str(tmp_path), image_size=32, n=4, seed=1)
    full, _ = data.load_classification("imagenet", "train", imagenet_root=str(tmp_path), image_size=32)
    idx = data.subset_indices(6, 4, 1)
    assert torch.equal(sub[:], full[idx])  # the seeded subset rule of every loader


# --------------------------------------------------------------------------------- classifiers on official encoders

@pytest.mark.parametrize("method", ["simclr", "byol", "dino"])
def test_classifier_on_an_official_encoder_reloads_from_its_file(tmp_path, method):
    """Architecture, normalization (none for SimCLR) and TF-"SAME" padding (BYOL) are in the classifier's sidecar:
    the reloaded classifier gives the same logits."""
    from utils.checkpoints import load_backbone

    spec = REGISTRY[method]
    torch.manual_seed(0)
    net = build_encoder("resnet50", 3, (0.5,) * 3, (0.25,) * 3).backbone.net
    torch.save({"state_dict": net.state_dict()} if "converted" in spec.layouts[0].name else net.state_dict(),
               tmp_path / spec.file_name)
    enc = load_backbone(method, tmp_path / spec.file_name, sha256=False)
    clf = Classifier(enc, torch.nn.Linear(enc.feat_dim, 4)).eval()
    save_classifier(clf, tmp_path / "clf.safetensors", {"method": method})
    again, meta = read_classifier(tmp_path / "clf.safetensors")
    assert meta["encoder"]["tf_same_padding"] == spec.tf_same_padding
    assert meta["encoder"]["normalize"] == (spec.mean is not None)
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.allclose(clf(x), again(x), atol=1e-5)


# ----------------------------------------------------------------------------------------- published top-1 guard

def test_published_check_flags_a_shortfall_and_names_the_causes():
    table = pd.DataFrame({"model": ["supervised", "simclr", "dino", "dino"],
                          "task": ["imagenet", "imagenet", "imagenet", "cifar10"],
                          "accuracy": [0.755, 0.60, 0.752, 0.50], "n": [100] * 4})
    published = {"supervised": 76.1, "simclr": 69.1, "dino": 75.3}
    out, msg = stats.published_check(table, published, task="imagenet", published_task="imagenet", tolerance=2.0)
    assert out["flags"].tolist() == ["", stats.BELOW_PUBLISHED, "", ""]  # only simclr is 9.1 points short
    assert out["shortfall"].round(6).tolist()[:3] == [0.6, 9.1, 0.1] and np.isnan(out["shortfall"].iloc[3])
    assert "simclr (linear) 60.0 vs 69.1" in msg and "normalization" in msg and "SAME" in msg
    same, msg = stats.published_check(table, {}, task="imagenet", published_task="imagenet")
    assert same is table and "trained here" in msg  # nothing to compare: the table is left as it is
    same, _ = stats.published_check(table, published, task="fashion_mnist", published_task="imagenet")
    assert same is table


def test_seed_replicates_are_named_seeded_and_refused_where_they_cannot_be_honoured():
    from utils.encoders import seed_replicates
    p = config.notebook_parameters("cpu", "01")
    reps = seed_replicates(p)
    assert reps == {f"{m}@seed{s}": (m, s) for m in p["seed_methods"] for s in range(1, p["seeds"])}
    assert seed_replicates({**p, "seed": 5})["simclr@seed7"] == ("simclr", 7)
    assert seed_replicates({**p, "seeds": 1}) == {} and seed_replicates({**p, "seed_methods": []}) == {}
    for bad, match in (({"seeds": 0}, "seeds must be >= 1"), ({"seed_methods": ["simclr", "byol"]}, "supervised"),
                       ({"seed_methods": ["supervised", "mae"]}, "not among methods"),
                       ({"epochs": 0}, "official checkpoints")):
        with pytest.raises(ValueError, match=match):
            seed_replicates({**p, **bad})
    assert seed_replicates(config.notebook_parameters("paper", "01")) == {}  # official checkpoints: one file per method


def test_published_check_sets_each_regime_beside_its_own_published_value():
    """Keyed by (model, regime): the supervised linear probe and the checkpoint's own fc each meet their value."""
    table = pd.DataFrame({"model": ["supervised", "supervised", "dino"], "regime": ["linear", "own_fc", "linear"],
                          "task": ["imagenet"] * 3, "accuracy": [0.755, 0.70, 0.74], "n": [100] * 3,
                          "flags": [None, "", None]})
    published = {("supervised", "linear"): 76.1, ("supervised", "own_fc"): 76.13, ("dino", "linear"): 75.3}
    out, msg = stats.published_check(table, published, task="imagenet", published_task="imagenet", tolerance=2.0)
    assert out["published_top1"].tolist() == [76.1, 76.13, 75.3]
    assert out["flags"].tolist() == ["", stats.BELOW_PUBLISHED, ""]  # the fc is 6.13 points short, dino 1.3
    assert "supervised (own_fc) 70.0 vs 76.1" in msg and "1 row(s)" in msg
    out, msg = stats.published_check(table, {("supervised", "linear"): 76.1}, task="imagenet",
                                     published_task="imagenet")
    assert out["published_top1"].isna().tolist() == [False, True, True] and "within 2 points" in msg
