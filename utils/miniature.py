"""A generated miniature of the study's real inputs: the data of the `paper-mini` profile.

`make_miniature(root)` writes, deterministically from `seed`, small stand-ins in the exact on-disk formats the `paper`
profile reads, so that the paper code path (file layouts, loaders, quirks) runs in tests and on a laptop:

- `imagenet/{train,val}/<wnid>/*.JPEG`: an ImageFolder of 4 classes named by real WordNet ids. JPEGs of several sizes
  and aspect ratios; some grayscale (mode "L") and some CMYK, as in real ImageNet, and one PNG under a .JPEG name
  (ImageNet's n02105855_2933.JPEG is one). Classes differ in colour, brightness and stripe orientation, with noise:
  a linear probe on random-init features beats chance, as the chain's sanity checks expect.
- `cifar/cifar-10-batches-py/` and `cifar/cifar-100-python/`: CIFAR's official python-pickle files (dicts of uint8
  rows [N, 3072] = R, G, B planes of 32x32, row-major; labels as lists of int), written as Python 2's cPickle wrote
  them: `pickle.load(f, encoding="bytes")` gives bytes keys, `encoding="latin1"` (torchvision) str keys. Their md5
  differs from the official archive, so torchvision's own CIFAR classes reject them (as they reject any copy).
- `voc/VOCdevkit/VOC2012/`: Pascal VOC's layout: JPEGImages, Annotations (VOC XML; 1-based inclusive boxes; some
  objects `difficult`), SegmentationClass (palette PNGs with VOC's palette; 255 = void band around each object and
  over difficult objects, as in VOC) and ImageSets/{Main,Segmentation}/{train,val,trainval}.txt (segmentation a subset).
- `checkpoints/<file_name>`: one random ResNet-50 per method of `utils.config.METHODS` (its own seed), in the official
  layout that `utils.checkpoints.REGISTRY[method]` lists first, under the registry's file name, plus `SHA256SUMS`.
  Tensors the loader must drop (MoCo's key encoder and queue, SwAV's projection head and prototypes) carry their
  official names and shapes but one stored value each (stride-0), so each costs bytes, not megabytes.
  The supervised file's `fc` is learned (`_fitted_fc`), so that 02's guard, which scores it, has something to catch:
  only a head that learned something loses accuracy when the inputs are normalized or resized wrongly.

Writes are atomic: the tree is built in `<root>.tmp-XXXX` and renamed onto `root`, its marker `MINIATURE.json` (format
version, seed, every file with its size) written last, so an interrupted run never leaves a tree that looks complete.
A complete tree for the same seed and format is reused. Output is byte-identical for a given seed and library versions.
"""
from __future__ import annotations

import argparse
import colorsys
import json
import math
import os
import pickle
import shutil
import struct
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn

from utils.checkpoints import REGISTRY, imagenet_fc_labels
from utils.config import METHODS, PROFILES
from utils.data import CIFAR_DIRS, CIFAR_FILES, class_names, load_classification
from utils.models import Encoder, ResNetTrunk, torchvision_resnet
from utils.probe import extract_features, fit_logistic_regression
from utils.scenes import VOC_CLASSES
from utils.store import atomic_write_json, file_sha256

__all__ = ["make_miniature", "miniature_ready", "MiniatureError", "FORMAT_VERSION", "MARKER", "IMAGENET_WNIDS",
           "IMAGENET_TRAIN_PER_CLASS", "IMAGENET_VAL_PER_CLASS", "IMAGE_SIZES", "CIFAR10_CLASSES", "CIFAR100_CLASSES",
           "CIFAR100_COARSE_CLASSES", "CIFAR100_COARSE_OF_FINE", "VOC_PALETTE", "CHECKPOINT_LAYOUTS", "main"]

FORMAT_VERSION = 2  # 2: the supervised checkpoint's fc is learned. Bump when any file's content or layout changes: older trees are then rebuilt
MARKER = "MINIATURE.json"
TOP_LEVEL = ("imagenet", "cifar", "voc", "checkpoints", MARKER)  # all a miniature root holds
STALE_AFTER_S = 3600  # a `<root>.tmp-*` / `.old-*` folder untouched this long is a crashed run's leftover

# ImageNet: tench, goldfish, great white shark, tiger shark (the first four ILSVRC-2012 classes).
IMAGENET_WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361")
IMAGENET_TRAIN_PER_CLASS = 24
IMAGENET_VAL_PER_CLASS = 12
IMAGE_SIZES = ((64, 48), (80, 60), (100, 100), (37, 90), (120, 72), (48, 64), (90, 37), (75, 110))  # (width, height)
# Colour mode of the j-th image of a class (cyclic): ImageNet holds some grayscale and some CMYK JPEGs.
IMAGENET_MODES = ("RGB", "RGB", "RGB", "L", "RGB", "RGB", "CMYK", "RGB")
PNG_AS_JPEG = ("train", 0, 1)  # (split, class, index) of the one PNG saved under a .JPEG name

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_PER_BATCH = 20  # images in each of data_batch_1..5 (official: 10,000)
CIFAR10_TEST = 40
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest",
    "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard",
    "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine", "possum",
    "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper",
    "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf",
    "woman", "worm")
CIFAR100_COARSE_CLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "insects", "large_carnivores", "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes", "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates",
    "people", "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2")
CIFAR100_COARSE_OF_FINE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10,
    12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17, 10, 3, 2, 12, 12, 16,
    12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14,
    13)
CIFAR100_USED = tuple(range(0, 100, 11))  # the 10 fine classes that appear (labels still index all 100 names)
CIFAR100_TRAIN = 60
CIFAR100_TEST = 30

VOC_TRAIN = 16
VOC_VAL = 8
VOC_SIZES = ((160, 120), (120, 160), (144, 108), (128, 128), (100, 150), (150, 100), (136, 112), (112, 136))
VOC_POSES = ("Frontal", "Rear", "Left", "Right", "Unspecified")
VOC_BAND = 2  # half-width (pixels) of the void (255) band drawn along each object's outline


class MiniatureError(RuntimeError):
    """The miniature could not be written where asked; the message names the folder and the fix."""


def _seed(seed: int, *parts: str) -> int:
    """A stable 32-bit seed for one part of the miniature (crc32, not hash(): the same in every process)."""
    ss = np.random.SeedSequence([int(seed), *(zlib.crc32(p.encode()) for p in parts)])
    return int(ss.generate_state(1)[0])


# ------------------------------------------------------------------------------------------------ learnable images
def _class_image(rng: np.random.Generator, label: int, n_classes: int, height: int, width: int) -> np.ndarray:
    """uint8 [height, width, 3]: the class's colour (hue, and brightness so grayscale copies stay separable) under
    stripes of a class-specific orientation and frequency, with per-image jitter, random phase and pixel noise.
    Stripe coordinates are relative to the image, so resizing and cropping keep the class cues."""
    hue = label / n_classes
    value = 0.35 + 0.5 * (((label * 7) % n_classes) + 0.5) / n_classes
    base = np.array(colorsys.hsv_to_rgb(hue, 0.7, value), dtype=np.float32)
    angle = math.pi * ((label * 3) % n_classes) / n_classes
    freq = 2.0 + 1.5 * (label % 3)  # cycles across the image
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = xx / width * math.cos(angle) + yy / height * math.sin(angle)
    stripes = np.sin(2 * math.pi * freq * t + rng.uniform(0, 2 * math.pi)).astype(np.float32)
    img = base * (1 + 0.3 * stripes)[..., None] + rng.normal(0, 0.04, 3) + rng.normal(0, 0.05, (height, width, 3))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def _save_image(pixels: np.ndarray, path: Path, mode: str = "RGB", fmt: str = "JPEG", quality: int = 90) -> None:
    im = Image.fromarray(pixels).convert(mode)
    if fmt == "JPEG":
        im.save(path, "JPEG", quality=quality)
    else:
        im.save(path, fmt)


def _write_imagenet(root: Path, seed: int) -> None:
    """<root>/{train,val}/<wnid>/*.JPEG; train files named like ImageNet's (<wnid>_<n>.JPEG), val files like the
    reorganised official val set (ILSVRC2012_val_<8 digits>.JPEG, numbered across classes in a seeded order)."""
    rng = np.random.default_rng(_seed(seed, "imagenet"))
    n = len(IMAGENET_WNIDS)
    val_numbers = iter((rng.permutation(n * IMAGENET_VAL_PER_CLASS) + 1).tolist())
    for split, per_class in (("train", IMAGENET_TRAIN_PER_CLASS), ("val", IMAGENET_VAL_PER_CLASS)):
        for label, wnid in enumerate(IMAGENET_WNIDS):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            numbers = np.sort(rng.choice(13000, per_class, replace=False) + 1).tolist()
            for j in range(per_class):
                width, height = IMAGE_SIZES[(j + 3 * label) % len(IMAGE_SIZES)]
                pixels = _class_image(rng, label, n, height, width)
                name = f"{wnid}_{numbers[j]}.JPEG" if split == "train" else f"ILSVRC2012_val_{next(val_numbers):08d}.JPEG"
                fmt = "PNG" if (split, label, j) == PNG_AS_JPEG else "JPEG"
                _save_image(pixels, folder / name, IMAGENET_MODES[j % len(IMAGENET_MODES)], fmt,
                            quality=int(rng.integers(75, 96)))


# ------------------------------------------------------------------------------------------------------- CIFAR
class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table can be extended
    """Pickles as Python 2's cPickle wrote CIFAR's files: bytes as py2 `str` opcodes (read back as bytes with
    encoding="bytes", as str with encoding="latin1"), and numpy's array rebuilder under its historical module name
    numpy.core.multiarray (which numpy 1.x and 2.x both resolve)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str

    def save_global(self, obj, name=None):
        if getattr(obj, "__module__", None) == "numpy._core.multiarray":
            self.write(pickle.GLOBAL + f"numpy.core.multiarray\n{name or obj.__name__}\n".encode())
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def _dump_py2(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def _cifar_images(rng: np.random.Generator, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """uint8 [N, 3072]: each 32x32 image as its R, G and B planes, each plane row-major (CIFAR's row layout)."""
    images = np.stack([_class_image(rng, int(y), n_classes, 32, 32) for y in labels])
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(labels), 3072))


def _cifar_filenames(rng: np.random.Generator, labels: np.ndarray, names) -> list[bytes]:
    serials = rng.choice(60000, len(labels), replace=False)
    return [f"{names[int(y)]}_s_{int(s):06d}.png".encode() for y, s in zip(labels, serials)]


def _balanced(rng: np.random.Generator, classes, n: int) -> np.ndarray:
    """n labels cycling through `classes`, in a seeded order (every class appears when n >= len(classes))."""
    return rng.permutation(np.resize(np.asarray(classes, dtype=np.int64), n))


def _write_cifar10(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(_seed(seed, "cifar10"))
    files = CIFAR_FILES["cifar10"]
    n_batches = len(files["train"])
    labels = _balanced(rng, range(10), n_batches * CIFAR10_PER_BATCH)
    data, names = _cifar_images(rng, labels, 10), _cifar_filenames(rng, labels, CIFAR10_CLASSES)
    for b, name in enumerate(files["train"]):
        part = slice(b * CIFAR10_PER_BATCH, (b + 1) * CIFAR10_PER_BATCH)
        _dump_py2(folder / name, {b"batch_label": f"training batch {b + 1} of {n_batches}".encode(),
                                  b"labels": labels[part].tolist(), b"data": data[part], b"filenames": names[part]})
    labels = _balanced(rng, range(10), CIFAR10_TEST)
    _dump_py2(folder / files["test"][0], {b"batch_label": b"testing batch 1 of 1", b"labels": labels.tolist(),
                                          b"data": _cifar_images(rng, labels, 10),
                                          b"filenames": _cifar_filenames(rng, labels, CIFAR10_CLASSES)})
    _dump_py2(folder / files["meta"], {b"num_cases_per_batch": CIFAR10_PER_BATCH,
                                       b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072})


def _write_cifar100(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(_seed(seed, "cifar100"))
    files = CIFAR_FILES["cifar100"]
    for split, n, label in (("train", CIFAR100_TRAIN, "training"), ("test", CIFAR100_TEST, "testing")):
        fine = _balanced(rng, CIFAR100_USED, n)
        # colours spread over the classes that appear, so the 10 used classes stay far apart
        style = np.array([CIFAR100_USED.index(int(y)) for y in fine])
        _dump_py2(folder / files[split][0], {
            b"filenames": _cifar_filenames(rng, fine, CIFAR100_CLASSES), b"batch_label": f"{label} batch 1 of 1".encode(),
            b"fine_labels": fine.tolist(), b"coarse_labels": [CIFAR100_COARSE_OF_FINE[int(y)] for y in fine],
            b"data": _cifar_images(rng, style, len(CIFAR100_USED))})
    _dump_py2(folder / files["meta"], {b"fine_label_names": [c.encode() for c in CIFAR100_CLASSES],
                                       b"coarse_label_names": [c.encode() for c in CIFAR100_COARSE_CLASSES]})


# --------------------------------------------------------------------------------------------------------- VOC
def _voc_palette() -> list[int]:
    """VOC's colour map, 256 * [r, g, b]: the bits of the index spread over the channels (devkit's labelcolormap)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= (c & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


VOC_PALETTE = _voc_palette()


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation of a bool [h, w] map by a (2r+1)-square."""
    h, w = mask.shape
    padded, out = np.pad(mask, r), np.zeros_like(mask)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


def _voc_scene(rng: np.random.Generator, index: int, width: int, height: int):
    """(uint8 image [h, w, 3], uint8 class mask [h, w], objects). 1 to 3 objects (index % 3 + 1), drawn as filled
    rectangles or ellipses in their class's palette colour, with disjoint boxes; objects may run off the image
    (`truncated`); the third object of a scene is small and `difficult`. Boxes are the objects' visible pixels."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.uniform(0.25, 0.75, (2, 3))
    ramp = (xx / width * rng.uniform(0.2, 1) + yy / height * rng.uniform(0.2, 1))[..., None] / 2
    img = c0 + (c1 - c0) * ramp + rng.normal(0, 0.04, (height, width, 3))
    mask = np.zeros((height, width), np.uint8)
    n_objects, objects = index % 3 + 1, []
    for j in range(n_objects):
        difficult = j == 2
        for _ in range(100):
            label = int(rng.integers(1, len(VOC_CLASSES)))
            lo, hi = (0.08, 0.14) if difficult else (0.14, 0.3)
            a, b = max(3.0, rng.uniform(lo, hi) * width), max(3.0, rng.uniform(lo, hi) * height)
            cx, cy = rng.uniform(-0.3 * a, width - 1 + 0.3 * a), rng.uniform(-0.3 * b, height - 1 + 0.3 * b)
            ellipse = bool(rng.random() < 0.5)
            region = (((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1) if ellipse else (
                (np.abs(xx - cx) <= a) & (np.abs(yy - cy) <= b))
            rows, cols = np.nonzero(region.any(1))[0], np.nonzero(region.any(0))[0]
            if len(rows) < 6 or len(cols) < 6:
                continue
            box = (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))  # 0-based inclusive
            gap = 2 * VOC_BAND + 1  # keep other objects out of each void band
            if all(box[0] > o["box"][2] + gap or o["box"][0] > box[2] + gap or box[1] > o["box"][3] + gap
                   or o["box"][1] > box[3] + gap for o in objects):
                break
        else:
            continue  # no free place for this object
        colour = np.array(VOC_PALETTE[3 * label:3 * label + 3], np.float32) / 255 * rng.uniform(0.85, 1.1)
        img[region] = np.clip(colour, 0.05, 1) + rng.normal(0, 0.04, (int(region.sum()), 3))
        truncated = cx - a < 0 or cy - b < 0 or cx + a > width - 1 or cy + b > height - 1
        objects.append({"name": VOC_CLASSES[label], "label": label, "pose": str(rng.choice(VOC_POSES)),
                        "truncated": int(truncated), "difficult": int(difficult), "box": box, "region": region})
    for o in objects:
        mask[o["region"]] = o["label"]
    for o in objects:  # VOC's void: a band along every outline, and the whole of difficult objects
        band = _dilate(o["region"], VOC_BAND) & _dilate(~o["region"], VOC_BAND)  # near both sides
        mask[band | (o["region"] if o["difficult"] else False)] = 255
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), mask, objects


def _voc_xml(image_id: str, width: int, height: int, objects: list[dict], segmented: bool) -> ET.ElementTree:
    """A Pascal VOC annotation: boxes are 1-based inclusive pixel indices, as in the devkit."""
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "VOC2012"
    ET.SubElement(ann, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(ann, "source")
    for tag, text in (("database", "The VOC2012 Database"), ("annotation", "PASCAL VOC2012"), ("image", "flickr")):
        ET.SubElement(source, tag).text = text
    size = ET.SubElement(ann, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(ann, "segmented").text = str(int(segmented))
    for o in objects:
        obj = ET.SubElement(ann, "object")
        for tag in ("name", "pose", "truncated", "difficult"):
            ET.SubElement(obj, tag).text = str(o[tag])
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), o["box"]):
            ET.SubElement(bndbox, tag).text = str(value + 1)
    tree = ET.ElementTree(ann)
    ET.indent(tree, space="\t")
    return tree


def _write_voc(root: Path, seed: int) -> None:
    """<root>/VOCdevkit/VOC2012/...: VOC_TRAIN + VOC_VAL images; every fourth image is detection-only (no mask, not in
    the Segmentation lists), since VOC's segmentation images are a subset of its detection images."""
    rng = np.random.default_rng(_seed(seed, "voc"))
    base = root / "VOCdevkit" / "VOC2012"
    dirs = {d: base / d for d in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Main",
                                  "ImageSets/Segmentation")}
    for d in dirs.values():
        d.mkdir(parents=True)
    lists = {"Main": {"train": [], "val": []}, "Segmentation": {"train": [], "val": []}}
    for i in range(VOC_TRAIN + VOC_VAL):
        split = "train" if i < VOC_TRAIN else "val"
        image_id = f"2012_{i + 1:06d}"
        width, height = VOC_SIZES[i % len(VOC_SIZES)]
        img, mask, objects = _voc_scene(rng, i, width, height)
        segmented = i % 4 != 3
        Image.fromarray(img).save(dirs["JPEGImages"] / f"{image_id}.jpg", "JPEG", quality=90)
        _voc_xml(image_id, width, height, objects, segmented).write(dirs["Annotations"] / f"{image_id}.xml")
        lists["Main"][split].append(image_id)
        if segmented:
            png = Image.fromarray(mask)
            png.putpalette(VOC_PALETTE)  # an "L" image with a palette becomes mode "P": indices are the classes
            png.save(dirs["SegmentationClass"] / f"{image_id}.png")
            lists["Segmentation"][split].append(image_id)
    for kind, splits in lists.items():
        splits["trainval"] = sorted(splits["train"] + splits["val"])
        for split, ids in splits.items():
            (dirs[f"ImageSets/{kind}"] / f"{split}.txt").write_text("".join(f"{x}\n" for x in ids))


# ------------------------------------------------------------------------------------------------- checkpoints
BN_STEPS = 1000  # the value of every num_batches_tracked counter written


def _random_resnet50(seed: int) -> dict[str, torch.Tensor]:
    """A random torchvision ResNet-50 state dict (incl. fc and BatchNorm counters), drawn with numpy so that it is
    the same on every machine: convolutions as torchvision initializes them (Kaiming normal, fan-out), fc uniform,
    BatchNorm parameters and statistics random (so that a skipped buffer would show), the last BN of each residual
    branch scaled down (0.2..0.4) so that eval-mode features stay O(1) through the 16 blocks."""
    with torch.device("meta"):
        net = torchvision.models.resnet50(weights=None)
    bn = {name for name, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)}
    ranges = {"bias": (-0.1, 0.1), "running_mean": (-0.1, 0.1), "running_var": (0.7, 1.3)}
    rng = np.random.default_rng(seed)
    state = {}
    for key, meta in net.state_dict().items():
        module, _, leaf = key.rpartition(".")
        shape = tuple(meta.shape)
        if leaf == "num_batches_tracked":
            state[key] = torch.tensor(BN_STEPS, dtype=torch.int64)
            continue
        if module in bn:
            lo, hi = ranges.get(leaf) or ((0.2, 0.4) if module.endswith("bn3") else (0.7, 1.3))
            value = rng.uniform(lo, hi, shape)
        elif module == "fc":
            bound = 1 / math.sqrt(net.fc.in_features)
            value = rng.uniform(-bound, bound, shape)
        else:
            value = rng.standard_normal(shape, dtype=np.float32) * math.sqrt(2 / (shape[0] * math.prod(shape[2:])))
        state[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    return state


def _filler(like: torch.Tensor | tuple, value: float = 0.5) -> torch.Tensor:
    """A dropped tensor at full official shape with one stored element (stride 0): torch.save writes a few bytes."""
    if isinstance(like, torch.Tensor):
        return torch.full((), value if like.is_floating_point() else 0, dtype=like.dtype).expand(like.shape)
    return torch.full((), value).expand(like)


def _keys(sd: dict, *, fc: bool, counters: bool, prefix: str = "") -> dict:
    return {prefix + k: v for k, v in sd.items()
            if (fc or not k.startswith("fc.")) and (counters or not k.endswith(".num_batches_tracked"))}


_OPTIMIZER = {"state": {}, "param_groups": [{"lr": 0.0, "momentum": 0.9, "weight_decay": 1e-4, "params": [0]}]}


def _mocov2(sd: dict) -> dict:
    """MoCo v2's training checkpoint: query encoder (with its MLP head in fc), key encoder, queue, optimizer (its
    momentum buffers left out)."""
    head = {"fc.0.weight": (2048, 2048), "fc.0.bias": (2048,), "fc.2.weight": (128, 2048), "fc.2.bias": (128,)}
    encoder = {**_keys(sd, fc=False, counters=True), **{k: _filler(s) for k, s in head.items()}}
    return {"epoch": 800, "arch": "resnet50", "state_dict": {
        **{"module.encoder_q." + k: v for k, v in encoder.items()},
        **{"module.encoder_k." + k: _filler(v) for k, v in encoder.items()},
        "module.queue": _filler((128, 65536)), "module.queue_ptr": torch.zeros(1, dtype=torch.int64)},
        "optimizer": _OPTIMIZER}


def _swav(sd: dict) -> dict:
    """SwAV's released file: the DDP state dict, `module.` backbone (no fc), projection head and prototypes."""
    head = {"projection_head.0.weight": (2048, 2048), "projection_head.0.bias": (2048,),
            "projection_head.1.weight": (2048,), "projection_head.1.bias": (2048,),
            "projection_head.1.running_mean": (2048,), "projection_head.1.running_var": (2048,),
            "projection_head.3.weight": (128, 2048), "projection_head.3.bias": (128,), "prototypes.weight": (3000, 128)}
    return {**_keys(sd, fc=False, counters=True, prefix="module."),
            **{"module." + k: _filler(s) for k, s in head.items()},
            "module.projection_head.1.num_batches_tracked": torch.tensor(BN_STEPS)}


# method -> (name of the REGISTRY layout it is written in, builder from a full torchvision state dict)
CHECKPOINT_LAYOUTS = {
    "supervised": ("backbone", lambda sd: _keys(sd, fc=True, counters=False)),  # 2017 weights: no counters
    "simclr": ("converted", lambda sd: {"state_dict": _keys(sd, fc=True, counters=True)}),
    "mocov2": ("full", _mocov2),
    "byol": ("backbone", lambda sd: _keys(sd, fc=True, counters=False)),  # converted from Haiku: no counters
    "swav": ("full", _swav),
    "dino": ("backbone", lambda sd: _keys(sd, fc=False, counters=True)),
    "barlowtwins": ("backbone", lambda sd: _keys(sd, fc=False, counters=True)),
    "vicreg": ("backbone", lambda sd: _keys(sd, fc=False, counters=True)),
}


# The methods whose file carries a learned classifier `fc` (`_fitted_fc`), and the bias of the rows of the 996
# ImageNet classes the miniature does not hold (weight 0): far below any fitted logit, so they never win.
LEARNED_FC = ("supervised",)
ABSENT_CLASS_BIAS = -100.0


def _fitted_fc(state: dict[str, torch.Tensor], method: str, imagenet_root: Path) -> dict[str, torch.Tensor]:
    """fc.weight [1000, 2048] and fc.bias [1000] for the random trunk in `state`: notebook 02's probe fitted on the
    trunk's features of the miniature's ImageNet train split as `paper-mini` loads it (its `image_size`, the method's
    normalization), in the rows of the classes' ILSVRC-2012 indices; one thread (bytes independent of the cores)."""
    spec = REGISTRY[method]
    net = torchvision_resnet("resnet50", meta=True)
    net.load_state_dict(state, strict=True, assign=True)
    n_out = net.fc.out_features
    encoder = Encoder(ResNetTrunk(net), mean=spec.mean, std=spec.std, normalize=spec.mean is not None).eval()
    x, y = load_classification("imagenet", "train", imagenet_root=str(imagenet_root),
                               image_size=PROFILES["paper-mini"]["common"]["image_size"], seed=0)
    rows = imagenet_fc_labels(class_names("imagenet", imagenet_root=str(imagenet_root)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        head = fit_logistic_regression(extract_features(encoder, x), y, len(rows), seed=0)
    finally:
        torch.set_num_threads(threads)
    weight = torch.zeros(n_out, encoder.feat_dim)
    bias = torch.full((n_out,), ABSENT_CLASS_BIAS)
    weight[rows], bias[rows] = head.weight.detach(), head.bias.detach()
    return {"fc.weight": weight.contiguous(), "fc.bias": bias.contiguous()}


def _write_checkpoints(folder: Path, seed: int, imagenet_root: Path) -> None:
    folder.mkdir(parents=True)
    sums = []
    for method in METHODS:
        spec = REGISTRY[method]
        layout, build = CHECKPOINT_LAYOUTS[method]
        if spec.layouts[0].name != layout:
            raise MiniatureError(f"utils.checkpoints.REGISTRY[{method!r}] now lists layout {spec.layouts[0].name!r} "
                                 f"first, but the miniature writes {layout!r}: update CHECKPOINT_LAYOUTS")
        path = folder / spec.file_name
        state = _random_resnet50(_seed(seed, "checkpoint", method))
        if method in LEARNED_FC:
            state.update(_fitted_fc(state, method, imagenet_root))
        torch.save(build(state), path)
        sums.append(f"{file_sha256(path)}  {spec.file_name}\n")
    (folder / "SHA256SUMS").write_text("".join(sorted(sums, key=lambda line: line.split()[1])))


# ------------------------------------------------------------------------------------------------------ the tree
def _roots(root: Path) -> dict[str, Path]:
    return {"imagenet_root": root / "imagenet", "transfer_root": root / "cifar", "voc_root": root / "voc",
            "checkpoint_root": root / "checkpoints"}


def _files(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def miniature_ready(root: str | os.PathLike, seed: int = 0) -> bool:
    """Whether `root` holds a complete miniature of this format for `seed`: its marker is readable and every file
    it lists is present with the recorded size (a stat per file, no hashing)."""
    marker = Path(root) / MARKER
    try:
        info = json.loads(marker.read_text())
        files = info["files"]
        if info.get("format_version") != FORMAT_VERSION or info.get("seed") != int(seed):
            return False
        return all((Path(root) / rel).stat().st_size == size for rel, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _check_replaceable(root: Path) -> None:
    """Refuse to replace a folder that holds anything a miniature does not write (a wrong --out must not cost data)."""
    if root.exists() and not root.is_dir():
        raise MiniatureError(f"{root} exists and is not a folder: pass a new or empty folder as the miniature's root")
    foreign = sorted(p.name for p in root.iterdir() if p.name not in TOP_LEVEL) if root.is_dir() else []
    if foreign:
        raise MiniatureError(f"refusing to replace {root}: it holds {foreign[:5]}, which the miniature does not write "
                             f"(it writes only {list(TOP_LEVEL)}); pass a new or empty folder, or remove them")


def _remove_stale(root: Path) -> None:
    """Remove leftovers of crashed runs (`<root>.tmp-*`, `<root>.old-*`) untouched for STALE_AFTER_S."""
    now = time.time()
    for p in root.parent.iterdir():
        if not p.name.startswith((f"{root.name}.tmp-", f"{root.name}.old-")):
            continue
        try:
            stale = now - p.stat().st_mtime > STALE_AFTER_S
        except OSError:  # removed meanwhile by another run
            continue
        if stale:
            shutil.rmtree(p, ignore_errors=True)


def make_miniature(root: str | os.PathLike, *, seed: int = 0, force: bool = False) -> dict[str, Path]:
    """Write the miniature under `root` (see the module docstring) unless a complete one for `seed` is there.

    force: rebuild even when complete. Returns the folders to give the `paper-mini` parameters: imagenet_root (holds
    train/ and val/), transfer_root (holds cifar-10-batches-py/ and cifar-100-python/), voc_root (holds VOCdevkit/),
    checkpoint_root (the eight files and SHA256SUMS). Takes ~4 s on a 2-core machine (after imports) and ~780 MB,
    almost all of it the eight ResNet-50s.
    Raises MiniatureError when `root` holds files the miniature did not write (nothing is removed then).
    """
    root = Path(root).expanduser().absolute()
    if not force and miniature_ready(root, seed):
        return _roots(root)
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(root)
    tmp = Path(tempfile.mkdtemp(prefix=f"{root.name}.tmp-", dir=root.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would stay with the renamed tree
        _write_imagenet(tmp / "imagenet", seed)
        for task, write in (("cifar10", _write_cifar10), ("cifar100", _write_cifar100)):
            (tmp / "cifar" / CIFAR_DIRS[task]).mkdir(parents=True)
            write(tmp / "cifar" / CIFAR_DIRS[task], seed)
        _write_voc(tmp / "voc", seed)
        _write_checkpoints(tmp / "checkpoints", seed, tmp / "imagenet")
        roots = {k: v.relative_to(root).as_posix() for k, v in _roots(root).items()}
        atomic_write_json(tmp / MARKER, {"format_version": FORMAT_VERSION, "seed": int(seed),
                                         "generator": "utils.miniature", "roots": roots, "files": _files(tmp)})
        old = None
        if root.exists():  # a half-written, stale or forced tree: move it aside, then swap in the new one
            old = Path(tempfile.mkdtemp(prefix=f"{root.name}.old-", dir=root.parent))
            os.replace(root, old / "tree")
        try:
            os.replace(tmp, root)
        except OSError:
            if not miniature_ready(root, seed):  # not a concurrent run that finished first: a real failure
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _roots(root)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m utils.miniature",
                                 description="Write the generated miniature of the paper's inputs (paper-mini profile)")
    ap.add_argument("--out", required=True, help="the miniature's root folder (created; the profile reads "
                                                 "data/paper-mini)")
    ap.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    ap.add_argument("--force", action="store_true", help="rebuild even if a complete miniature is there")
    args = ap.parse_args(argv)
    reused = not args.force and miniature_ready(args.out, args.seed)
    start = time.perf_counter()
    try:
        roots = make_miniature(args.out, seed=args.seed, force=args.force)
    except (MiniatureError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = sum(json.loads((Path(args.out) / MARKER).read_text())["files"].values())
    what = "complete already, reused" if reused else f"written in {time.perf_counter() - start:.1f} s"
    print(f"miniature (seed {args.seed}, {size / 1e6:.0f} MB) {what}:")
    for key, path in roots.items():
        print(f"  {key} = {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
