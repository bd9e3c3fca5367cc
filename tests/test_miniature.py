"""The generated miniature of the paper's inputs: layouts and counts, the quirks it must carry (grayscale and CMYK
JPEGs, a PNG under a .JPEG name, VOC's void bands and difficult objects, Python-2 CIFAR pickles), that the suite's and
torchvision's readers take every part, that the eight checkpoints load through `load_backbone` with the very weights
written, that classes are learnable, and that writing is idempotent, deterministic and atomic.

One miniature is built per module (~4 s, ~780 MB, removed afterwards); the rebuild tests build a second one.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import time
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
import torch.nn.functional as F
from PIL import Image
from torchvision import datasets, transforms

from utils import encoders, miniature as M, probe, stats
from utils.checkpoints import PUBLISHED_TASK, REGISTRY, load_backbone
from utils.config import METHODS, OWN_FC_REGIME, notebook_parameters
from utils.data import classification_task, read_cifar
from utils.scenes import VOC_CLASSES, voc_scenes
from utils.imageset import ImageSet

VOC = Path("VOCdevkit") / "VOC2012"


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    parent = tmp_path_factory.mktemp("miniature")
    start = time.perf_counter()
    roots = M.make_miniature(parent / "paper-mini")
    elapsed = time.perf_counter() - start
    yield {"root": parent / "paper-mini", "roots": roots, "elapsed": elapsed}
    shutil.rmtree(parent, ignore_errors=True)  # ~790 MB: do not leave it to pytest's tmp retention


def _digests(root: Path) -> dict[str, str]:
    """sha256 of every file except the big checkpoints (their digests are in checkpoints/SHA256SUMS, compared too)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.parent.name != "checkpoints" or p.name == "SHA256SUMS"}


# ---------------------------------------------------------------------------------------------------- layout
def test_layout_counts_and_marker(mini):
    root, roots = mini["root"], mini["roots"]
    assert roots == {"imagenet_root": root / "imagenet", "transfer_root": root / "cifar", "voc_root": root / "voc",
                     "checkpoint_root": root / "checkpoints"}
    for split, per_class in (("train", M.IMAGENET_TRAIN_PER_CLASS), ("val", M.IMAGENET_VAL_PER_CLASS)):
        folder = roots["imagenet_root"] / split
        assert sorted(p.name for p in folder.iterdir()) == sorted(M.IMAGENET_WNIDS)
        assert {w: len(list((folder / w).glob("*.JPEG"))) for w in M.IMAGENET_WNIDS} == dict.fromkeys(
            M.IMAGENET_WNIDS, per_class)
    assert sorted(p.name for p in (roots["transfer_root"] / "cifar-10-batches-py").iterdir()) == sorted(
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"])
    assert sorted(p.name for p in (roots["transfer_root"] / "cifar-100-python").iterdir()) == ["meta", "test", "train"]
    voc = roots["voc_root"] / VOC
    ids = {s: (voc / "ImageSets" / "Main" / f"{s}.txt").read_text().split() for s in ("train", "val", "trainval")}
    assert (len(ids["train"]), len(ids["val"])) == (M.VOC_TRAIN, M.VOC_VAL)
    assert sorted(ids["trainval"]) == sorted(ids["train"] + ids["val"]) and not set(ids["train"]) & set(ids["val"])
    seg = {s: (voc / "ImageSets" / "Segmentation" / f"{s}.txt").read_text().split() for s in ("train", "val", "trainval")}
    assert set(seg["train"]) < set(ids["train"]) and set(seg["val"]) < set(ids["val"]) and seg["val"]
    assert sorted(seg["trainval"]) == sorted(seg["train"] + seg["val"])
    assert {p.stem for p in (voc / "JPEGImages").glob("*.jpg")} == set(ids["trainval"])
    assert {p.stem for p in (voc / "Annotations").glob("*.xml")} == set(ids["trainval"])
    assert {p.stem for p in (voc / "SegmentationClass").glob("*.png")} == set(seg["trainval"])
    ckpt = roots["checkpoint_root"]
    assert sorted(p.name for p in ckpt.iterdir()) == sorted([REGISTRY[m].file_name for m in METHODS] + ["SHA256SUMS"])
    sums = dict(line.split()[::-1] for line in (ckpt / "SHA256SUMS").read_text().splitlines())
    assert sums == {REGISTRY[m].file_name: hashlib.sha256((ckpt / REGISTRY[m].file_name).read_bytes()).hexdigest()
                    for m in METHODS}
    marker = json.loads((root / M.MARKER).read_text())
    assert marker["format_version"] == M.FORMAT_VERSION and marker["seed"] == 0
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {M.MARKER}
    assert set(marker["files"]) == on_disk
    size = sum(marker["files"].values())
    assert 700e6 < size < 850e6, size  # eight full ResNet-50s; the dropped heads cost bytes, not megabytes
    print(f"miniature: {mini['elapsed']:.1f} s, {size / 1e6:.0f} MB")


def test_imagenet_has_real_quirks_sizes_and_modes(mini):
    val = sorted((mini["roots"]["imagenet_root"] / "val").rglob("*.JPEG"))
    modes = [Image.open(p).mode for p in val]
    assert modes.count("L") >= 4 and modes.count("CMYK") >= 4 and modes.count("RGB") > len(val) / 2
    assert all(Image.open(p).format == "JPEG" for p in val)
    assert all(p.name.startswith("ILSVRC2012_val_") for p in val)
    sizes = {Image.open(p).size for p in val}
    assert len(sizes) >= 5 and len({round(w / h, 2) for w, h in sizes}) >= 4, sizes
    train = sorted((mini["roots"]["imagenet_root"] / "train").rglob("*.JPEG"))
    pngs = [p for p in train if Image.open(p).format == "PNG"]
    assert len(pngs) == 1  # as ImageNet's n02105855_2933.JPEG
    assert all(p.name.startswith(p.parent.name + "_") for p in train)


def _image_folder(root: Path, size: int = 32):
    tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()])
    return datasets.ImageFolder(str(root), transform=tf)


def _stack(ds):
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.tensor(ys)


def _random_features(x: torch.Tensor) -> torch.Tensor:
    """[N, 64] features of a fixed random 5x5 convolution + ReLU, averaged over space (x: [N, 3, H, W] in [0, 1])."""
    conv = torch.nn.Conv2d(3, 64, 5, stride=2)
    with torch.no_grad():
        torch.nn.init.normal_(conv.weight, generator=torch.Generator().manual_seed(0))
        torch.nn.init.zeros_(conv.bias)
        return torch.relu(conv(x)).mean((2, 3))


def _probe_accuracy(x_tr, y_tr, x_te, y_te, n_classes: int) -> float:
    """A least-squares linear probe (one-hot targets, ridge 1e-2) on standardized features: test accuracy."""
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    a, b = (x_tr - mu) / sd, (x_te - mu) / sd
    a, b = torch.cat([a, torch.ones(len(a), 1)], 1), torch.cat([b, torch.ones(len(b), 1)], 1)
    w = torch.linalg.solve(a.T @ a + 1e-2 * torch.eye(a.shape[1]), a.T @ torch.eye(n_classes)[y_tr])
    return float(((b @ w).argmax(1) == y_te).float().mean())


def test_imagenet_reads_as_image_folder_and_classes_are_learnable(mini):
    """torchvision's ImageFolder takes every file (grayscale, CMYK and the PNG become RGB); a linear probe on the
    features of a random convolution beats chance (0.25) by far."""
    train, val = (_image_folder(mini["roots"]["imagenet_root"] / s) for s in ("train", "val"))
    assert train.classes == sorted(M.IMAGENET_WNIDS) == val.classes
    (x_tr, y_tr), (x_te, y_te) = _stack(train), _stack(val)
    assert x_tr.shape == (4 * M.IMAGENET_TRAIN_PER_CLASS, 3, 32, 32) and x_te.shape[0] == 4 * M.IMAGENET_VAL_PER_CLASS
    acc = _probe_accuracy(_random_features(x_tr), y_tr, _random_features(x_te), y_te, 4)
    print(f"ImageNet probe accuracy {acc:.2f}")
    assert acc >= 0.75, acc


# ------------------------------------------------------------------------------------------------------ CIFAR
def _unpickle(path: Path, encoding: str = "bytes"):
    with open(path, "rb") as f:
        return pickle.load(f, encoding=encoding)


def test_cifar_pickles_are_the_official_format(mini):
    c10 = mini["roots"]["transfer_root"] / "cifar-10-batches-py"
    total = 0
    for i in range(1, 6):
        d = _unpickle(c10 / f"data_batch_{i}")
        assert list(d) == [b"batch_label", b"labels", b"data", b"filenames"]
        assert d[b"data"].dtype == np.uint8 and d[b"data"].shape == (M.CIFAR10_PER_BATCH, 3072)
        assert len(d[b"labels"]) == len(d[b"filenames"]) == M.CIFAR10_PER_BATCH
        assert all(type(y) is int and 0 <= y < 10 for y in d[b"labels"])
        assert d[b"batch_label"] == f"training batch {i} of 5".encode()
        total += len(d[b"labels"])
    test = _unpickle(c10 / "test_batch")
    assert test[b"data"].shape == (M.CIFAR10_TEST, 3072) and sorted(set(test[b"labels"])) == list(range(10))
    meta = _unpickle(c10 / "batches.meta")
    assert meta[b"label_names"] == [c.encode() for c in M.CIFAR10_CLASSES] and meta[b"num_vis"] == 3072
    # torchvision reads with encoding="latin1": Python-2 strings come back as str, as from the official files
    assert _unpickle(c10 / "batches.meta", "latin1")["label_names"][0] == "airplane"
    assert set(_unpickle(c10 / "data_batch_1", "latin1")) == {"batch_label", "labels", "data", "filenames"}

    c100 = mini["roots"]["transfer_root"] / "cifar-100-python"
    for split, n in (("train", M.CIFAR100_TRAIN), ("test", M.CIFAR100_TEST)):
        d = _unpickle(c100 / split)
        assert set(d) == {b"filenames", b"batch_label", b"fine_labels", b"coarse_labels", b"data"}
        assert d[b"data"].shape == (n, 3072) and len(d[b"fine_labels"]) == n
        assert all(0 <= y < 100 for y in d[b"fine_labels"]) and all(0 <= y < 20 for y in d[b"coarse_labels"])
        assert [M.CIFAR100_COARSE_OF_FINE[y] for y in d[b"fine_labels"]] == d[b"coarse_labels"]
    meta = _unpickle(c100 / "meta")
    assert len(meta[b"fine_label_names"]) == 100 and len(meta[b"coarse_label_names"]) == 20
    assert np.bincount(M.CIFAR100_COARSE_OF_FINE).tolist() == [5] * 20  # five fine classes per superclass


def test_cifar_reads_through_the_suite_and_torchvision(mini, monkeypatch):
    root = mini["roots"]["transfer_root"]
    x, y = read_cifar("cifar10", "train", root)
    assert x.shape == (5 * M.CIFAR10_PER_BATCH, 3, 32, 32) and x.dtype == torch.uint8 and int(y.max()) <= 9
    x100, y100 = read_cifar("cifar100", "test", root)
    assert x100.shape == (M.CIFAR100_TEST, 3, 32, 32) and set(y100.tolist()) == set(M.CIFAR100_USED)
    # torchvision checks the official md5 (which no other copy has): with that check off, it reads the files
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    tv = datasets.CIFAR10(str(root), train=True, download=False)
    assert len(tv) == 5 * M.CIFAR10_PER_BATCH and tv.classes == list(M.CIFAR10_CLASSES)
    assert np.array_equal(tv.data, x.permute(0, 2, 3, 1).numpy())  # R, G, B planes, row-major, as CIFAR's rows
    tv100 = datasets.CIFAR100(str(root), train=False, download=False)
    assert len(tv100) == M.CIFAR100_TEST and tv100.classes == list(M.CIFAR100_CLASSES)
    # learnable: a linear probe on random-convolution features beats chance (0.1) by far
    xt, yt = read_cifar("cifar10", "test", root)
    acc = _probe_accuracy(_random_features(x / 255), y, _random_features(xt / 255), yt, 10)
    print(f"CIFAR-10 probe accuracy {acc:.2f}")
    assert acc >= 0.5, acc


# -------------------------------------------------------------------------------------------------------- VOC
def _annotations(voc: Path, ids):
    out = {}
    for image_id in ids:
        ann = ET.parse(voc / "Annotations" / f"{image_id}.xml").getroot()
        size = ann.find("size")
        objects = [{"name": o.findtext("name"), "difficult": int(o.findtext("difficult")),
                    "truncated": int(o.findtext("truncated")), "pose": o.findtext("pose"),
                    "box": [int(o.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]}
                   for o in ann.findall("object")]
        out[image_id] = {"filename": ann.findtext("filename"), "width": int(size.findtext("width")),
                         "height": int(size.findtext("height")), "objects": objects}
    return out


def test_voc_annotations_and_masks(mini):
    voc = mini["roots"]["voc_root"] / VOC
    ids = (voc / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    seg = set((voc / "ImageSets" / "Segmentation" / "trainval.txt").read_text().split())
    anns = _annotations(voc, ids)
    objects = [o for a in anns.values() for o in a["objects"]]
    assert any(o["difficult"] for o in objects) and any(o["truncated"] for o in objects)
    assert {o["name"] for o in objects} <= set(VOC_CLASSES[1:]) and len({o["name"] for o in objects}) >= 8
    palette = None
    for image_id, a in anns.items():
        img = Image.open(voc / "JPEGImages" / a["filename"])
        assert img.size == (a["width"], a["height"]) and img.mode == "RGB" and 100 <= min(img.size)
        assert a["objects"] and not a["objects"][0]["difficult"]  # every image has a scored object
        for o in a["objects"]:
            x1, y1, x2, y2 = o["box"]  # 1-based, inclusive
            assert 1 <= x1 < x2 <= a["width"] and 1 <= y1 < y2 <= a["height"]
        if image_id not in seg:
            continue
        png = Image.open(voc / "SegmentationClass" / f"{image_id}.png")
        assert png.mode == "P" and png.size == img.size
        palette = palette or png.getpalette()
        m = np.array(png)
        assert set(np.unique(m)) <= set(range(21)) | {255} and (m == 255).any()
        for o in a["objects"]:
            x1, y1, x2, y2 = o["box"]
            k = VOC_CLASSES.index(o["name"])
            inside = m[y1 - 1:y2, x1 - 1:x2]
            if o["difficult"]:
                assert (inside == 255).any()
            else:
                assert (inside == k).sum() > 0.3 * inside.size
        # VOC's void band: no object pixel touches the background directly
        obj, bg = (m > 0) & (m < 255), m == 0
        vertical = (obj[1:] & bg[:-1]) | (obj[:-1] & bg[1:])
        horizontal = (obj[:, 1:] & bg[:, :-1]) | (obj[:, :-1] & bg[:, 1:])
        assert not vertical.any() and not horizontal.any(), image_id
    assert palette[:6] == [0, 0, 0, 128, 0, 0] and palette[255 * 3:] == [224, 224, 192]  # VOC's colour map


def test_voc_reads_through_voc_scenes(mini):
    root = mini["roots"]["voc_root"]
    voc = root / VOC
    for split, image_set in (("train", "train"), ("test", "val")):
        ids = (voc / "ImageSets" / "Main" / f"{image_set}.txt").read_text().split()
        scored = sum(1 - o["difficult"] for a in _annotations(voc, ids).values() for o in a["objects"])
        det = voc_scenes(str(root), split, "detection", canvas=64)
        assert len(det) == len(ids) and sum(len(b) for b in det.boxes) == scored  # difficult objects dropped
        assert all(((b >= 0) & (b <= 64)).all() and (b[:, 2:] > b[:, :2]).all() for b in det.boxes)
        segmentation = voc_scenes(str(root), split, "segmentation", canvas=64)
        n_seg = len((voc / "ImageSets" / "Segmentation" / f"{image_set}.txt").read_text().split())
        assert len(segmentation) == n_seg and segmentation.masks.shape == (n_seg, 64, 64)
        assert segmentation.ignore_index == 255 and (segmentation.masks == 255).any()
        assert segmentation.mask_batch([0]).dtype == torch.int64
        # the images stay files, decoded when used, to exactly what an eager resize of the file gives
        assert isinstance(det.images, ImageSet) and det.images.shape == (len(ids), 3, 64, 64)
        for scenes in (det, segmentation):
            j = len(scenes) - 1
            path = scenes.images.source.paths[int(scenes.images.indices[j])]
            eager = F.interpolate(torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None]
                                  .float(), size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
            assert torch.equal(scenes.image_batch([j])[0], eager[0].round().clamp(0, 255) / 255)
            assert torch.equal(torch.cat(list(scenes.image_batches(3))), scenes.image_batch(slice(None)))


# ------------------------------------------------------------------------------------------------ checkpoints
# method -> (container key or None, prefix of the backbone keys, num_batches_tracked written), as the official files
EXPECTED = {"supervised": (None, "", False), "simclr": ("state_dict", "", True),
            "mocov2": ("state_dict", "module.encoder_q.", True), "byol": (None, "", False),
            "swav": (None, "module.", True), "dino": (None, "", True), "barlowtwins": (None, "", True),
            "vicreg": (None, "", True)}
DROPPED = {"supervised": ["fc."], "simclr": ["fc."], "byol": ["fc."], "dino": [], "barlowtwins": [], "vicreg": [],
           "mocov2": ["module.encoder_q.fc.", "module.encoder_k.", "module.queue"],
           "swav": ["module.projection_head.", "module.prototypes."]}


def test_every_checkpoint_loads_with_the_weights_written(mini):
    root = mini["roots"]["checkpoint_root"]
    reference = torchvision.models.resnet50(weights=None).state_dict()
    backbone_keys = [k for k in reference if not k.startswith("fc.")]
    first_convs = {}
    for method in METHODS:
        model = load_backbone(method, root, sha256=False)
        info = model.checkpoint_info
        assert info["layout"] == REGISTRY[method].layouts[0].name and Path(info["path"]).parent == root
        container, prefix, counters = EXPECTED[method]
        obj = torch.load(root / REGISTRY[method].file_name, map_location="cpu", weights_only=True)
        state = obj[container] if container else obj
        for head in DROPPED[method]:
            assert any(k.startswith(head) for k in state), (method, head)  # the loader's dropping is exercised
        loaded = model.backbone.net.state_dict()
        for key in backbone_keys:
            if key.endswith("num_batches_tracked") and not counters:
                assert prefix + key not in state
                continue
            written = state[prefix + key]
            assert written.shape == reference[key].shape and torch.equal(loaded[key], written), (method, key)
        first_convs[method] = loaded["conv1.weight"]
    for i, a in enumerate(METHODS):  # a different random ResNet-50 per method
        for b in METHODS[i + 1:]:
            assert not torch.allclose(first_convs[a], first_convs[b]), (a, b)
    with torch.no_grad():
        feats = model(torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert feats.shape == (4, 2048) and torch.isfinite(feats).all() and 0.01 < float(feats.std()) < 10


# ----------------------------------------------------------------------- 02's guard: a wrong normalization is flagged
def _own_fc_guard(roots, cache_dir):
    """What notebook 02 runs for the supervised checkpoint's own classifier in `paper-mini`: 01's manifest of the
    official file, the fc scored on 02's in-domain test points, the guard; returns (the fc's row, the sentence)."""
    p = notebook_parameters("paper-mini", "02")
    params01 = {**notebook_parameters("paper-mini", "01"), "checkpoint_root": str(roots["checkpoint_root"])}
    encoders.pretrained_encoders("paper-mini", ["supervised"], params01=params01, cache_dir=cache_dir, record=True)
    task = classification_task(p["task"], n_train=p["n_probe_train"], n_test=p["n_test"], seed=p["seed"],
                               imagenet_root=str(roots["imagenet_root"]), image_size=p["image_size"])
    table = probe.with_own_classifiers(pd.DataFrame(columns=["model", "regime", "task", "accuracy", "n"]),
                                       encoders.official_classifiers("paper-mini", ["supervised"], cache_dir=cache_dir),
                                       task)
    table, sentence = stats.published_check(table, encoders.published_top1("paper-mini", ["supervised"], cache_dir),
                                            task=p["task"], published_task=PUBLISHED_TASK,
                                            tolerance=p["published_tolerance"])
    (row,) = table[table.regime == OWN_FC_REGIME].to_dict("records")
    return row, sentence


def test_02s_guard_flags_a_wrong_normalization_of_the_supervised_fc(mini, tmp_path, monkeypatch):
    """The miniature's supervised fc is learned (random weights would score ~0 % either way). With the correct
    normalization its top-1 on 02's test points is the 'published' value of this run (the registry's 76.13 % belongs
    to the real weights): not flagged. With inputs left unnormalized (SimCLR's convention: the classic mistake) or
    normalized with other statistics, the same fc falls far below it: flagged, the causes named. (A linear probe
    refitted on the wrongly normalized features would hide it: 0.958 either way on the 48 val images, measured.)"""
    spec = REGISTRY["supervised"]
    right, _ = _own_fc_guard(mini["roots"], tmp_path / "right")
    assert right["accuracy"] >= 0.8 and right["n"] == notebook_parameters("paper-mini", "02")["n_test"]
    monkeypatch.setitem(REGISTRY, "supervised", replace(spec, fc_top1=100 * right["accuracy"]))
    right, sentence = _own_fc_guard(mini["roots"], tmp_path / "right-again")
    assert right["shortfall"] == 0 and stats.BELOW_PUBLISHED not in right["flags"] and "within" in sentence
    for wrong in ({"mean": None, "std": None}, {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}):
        monkeypatch.setitem(REGISTRY, "supervised", replace(spec, fc_top1=100 * right["accuracy"], **wrong))
        row, sentence = _own_fc_guard(mini["roots"], tmp_path / f"wrong-{wrong['mean']}")
        assert row["accuracy"] < right["accuracy"] - 0.3, wrong  # far more than the 2-point tolerance
        assert stats.BELOW_PUBLISHED in row["flags"].split(";"), wrong
        assert "supervised (own_fc)" in sentence and "normalization" in sentence


# ------------------------------------------------------------------------------------------ idempotence, atomicity
def test_second_call_does_no_work(mini):
    root = mini["root"]
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert M.make_miniature(root) == mini["roots"]
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    assert M.miniature_ready(root) and not M.miniature_ready(root, seed=1)


def test_half_written_tree_is_rebuilt_identically(mini, tmp_path):
    """A tree without its marker (a run from before the atomic rename, or a copy cut short) is rebuilt; the rebuild
    is byte-identical to the first build (same seed), checkpoints included (their sha256 sums); so is a forced one."""
    root = tmp_path / "paper-mini"
    junk = root / "imagenet" / "train" / M.IMAGENET_WNIDS[0] / "half.JPEG"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"\xff\xd8 cut short")
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / REGISTRY["dino"].file_name).write_bytes(b"PK\x03\x04 cut short")
    assert not M.miniature_ready(root)
    M.make_miniature(root)
    assert M.miniature_ready(root) and not junk.exists()
    assert _digests(root) == _digests(mini["root"])
    assert not [p for p in tmp_path.iterdir() if p.name != "paper-mini"]  # no .tmp-/.old- folder left behind
    marker_mtime = (root / M.MARKER).stat().st_mtime_ns
    M.make_miniature(root, force=True)  # force rebuilds a complete tree, to the same bytes
    assert (root / M.MARKER).stat().st_mtime_ns != marker_mtime and _digests(root) == _digests(mini["root"])
    (root / "voc" / VOC / "ImageSets" / "Main" / "val.txt").unlink()  # a listed file gone: not complete any more
    assert not M.miniature_ready(root)
    shutil.rmtree(root)


def test_interrupted_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", fail)  # fails while writing the first checkpoint, after all images
    with pytest.raises(RuntimeError, match="simulated"):
        M.make_miniature(tmp_path / "paper-mini")
    assert list(tmp_path.iterdir()) == []  # neither the root nor the temporary tree


def test_a_folder_with_other_files_is_refused(tmp_path):
    notes = tmp_path / "mine" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("keep me")
    with pytest.raises(M.MiniatureError, match="refusing to replace"):
        M.make_miniature(notes.parent)
    assert notes.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_cli_reuses_a_complete_tree(mini, capsys):
    assert M.main(["--out", str(mini["root"])]) == 0
    out = capsys.readouterr().out
    assert "reused" in out and f"checkpoint_root = {mini['root'] / 'checkpoints'}" in out
