"""Dense-task scenes: images with class-labelled boxes and per-pixel masks, generated or read from Pascal VOC.

Data layer: imports only `utils.data` and `utils.imageset` (and torch).

`cpu`/`smoke`: "Fashion scenes", canvases of `canvas` x `canvas` pixels (64 to 96) holding one to `max_items`
Fashion-MNIST items at random places, with exact class-labelled boxes and per-pixel masks derived from the items'
pixels (`compose_scenes`); train scenes come from train items, test scenes from test items. `paper`: Pascal VOC through
torchvision's `VOCDetection` / `VOCSegmentation` from a local root (never downloaded), resized to `canvas` x `canvas`.

Boxes are float [x1, y1, x2, y2] in pixel-edge coordinates: an item covering columns c0..c1 (inclusive) has
x1 = c0, x2 = c1 + 1. Labels are 1..K-1 (0 is the background class of the masks).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence
from xml.etree.ElementTree import parse as ET_parse

import torch
import torch.nn.functional as F
from PIL import Image

from utils.data import FASHION_CLASSES, DataMissingError, load_fashion_mnist, subset_indices
from utils.imageset import ImageSet, ResizedFiles, image_batches

FASHION_SCENE_CLASSES = ["background"] + FASHION_CLASSES
VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]
FASHION_SPLIT_SIZES = {"train": 60000, "test": 10000}


# ----------------------------------------------------------------------------------------------------------- scenes
@dataclass
class Scenes:
    """A set of dense-task scenes.

    images: [S, C, H, W], float32 in [0, 1], uint8 0..255 to save memory, or an `ImageSet` (VOC: files decoded
        when used); `image_batch` gives float32 in [0, 1] from each.
    masks: [S, H, W] class per pixel (0 = background, `ignore_index` = not scored), int64 or uint8 (VOC: 8x less
        memory; `mask_batch` gives int64), or None (detection only).
    boxes: S tensors [k_i, 4] float32 (x1, y1, x2, y2), pixel-edge coordinates; None for segmentation-only sets.
    labels: S tensors [k_i] int64 in 1..len(class_names)-1; None with `boxes`.
    source: where the items came from (Fashion scenes: split, item ids into that split, top-left offsets).
    """

    images: torch.Tensor
    masks: torch.Tensor | None
    boxes: list[torch.Tensor] | None
    labels: list[torch.Tensor] | None
    class_names: list[str]
    ignore_index: int | None = None
    source: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def canvas(self) -> int:
        return int(self.images.shape[-1])

    def image_batch(self, idx) -> torch.Tensor:
        """Float32 images [n, C, H, W] in [0, 1] for indices `idx` (slice, list or tensor)."""
        x = self.images[idx]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def mask_batch(self, idx) -> torch.Tensor:
        """int64 masks [n, H, W] for indices `idx` (slice, list or tensor)."""
        return self.masks[idx].long()

    def image_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Float32 image batches of every scene, in order (what `utils.probe.extract_features` takes)."""
        if isinstance(self.images, ImageSet):  # decoded ahead by DataLoader workers
            yield from image_batches(self.images, batch_size)
            return
        for i in range(0, len(self), batch_size):
            yield self.image_batch(slice(i, i + batch_size))

    def targets(self, idx: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        """torchvision detection targets [{"boxes": [k,4] float32, "labels": [k] int64}] for scenes `idx`."""
        if self.boxes is None:
            raise ValueError("these scenes carry no boxes (a segmentation-only set); load the detection scenes")
        return [{"boxes": self.boxes[i], "labels": self.labels[i]} for i in idx]


def _tight_box(fg: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(r0, r1, c0, c1), inclusive, of the True pixels of a [h, w] bool map; None if there are none."""
    rows, cols = torch.nonzero(fg.any(1)).flatten(), torch.nonzero(fg.any(0)).flatten()
    if len(rows) == 0:
        return None
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def compose_scenes(x_items: torch.Tensor, y_items: torch.Tensor, n_scenes: int, *, canvas: int = 64, seed: int = 0,
                   max_items: int = 4, mask_threshold: float = 0.1, max_tries: int = 50,
                   item_ids: torch.Tensor | None = None, split: str = "") -> Scenes:
    """Compose `n_scenes` scenes from items x_items [N, C, h, w] in [0, 1] with labels y_items [N] in 0..9.

    Each scene draws k ~ U{1..max_items} items (each item is used at most once over all scenes, in a seeded order) and
    places each at a seeded random offset where its tight box (of its nonzero pixels) overlaps no box placed before;
    an item that finds no free place in `max_tries` offsets is left out, so a scene holds 1..k items (the first item
    always fits). Because boxes are disjoint, the items' nonzero pixels never overlap and the canvas is their exact sum.
    Box = tight box of the item's nonzero pixels after placement; mask = item pixels above `mask_threshold`, set to
    label + 1. `item_ids` (default arange(N)) names each item in its source; they are recorded in `source`.
    Deterministic in `seed`.
    """
    if x_items.dim() != 4 or len(x_items) != len(y_items):
        raise ValueError(f"expected items [N, C, h, w] with N labels, got {tuple(x_items.shape)} and {len(y_items)}")
    n, c, h, w = x_items.shape
    if not 1 <= max_items:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    if canvas < max(h, w):
        raise ValueError(f"canvas {canvas} is smaller than an item ({h}x{w}); use canvas >= {max(h, w)}")
    if float(x_items.min()) < 0 or float(x_items.max()) > 1:
        raise ValueError("items must lie in [0, 1]")
    item_ids = torch.arange(n) if item_ids is None else torch.as_tensor(item_ids)
    g = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n, generator=g)
    images = torch.zeros(n_scenes, c, canvas, canvas)
    masks = torch.zeros(n_scenes, canvas, canvas, dtype=torch.int64)
    boxes, labels, ids, offsets = [], [], [], []
    ptr = 0
    for s in range(n_scenes):
        k = int(torch.randint(1, max_items + 1, (1,), generator=g))
        if ptr + k > n:
            raise ValueError(f"{n} items are too few for {n_scenes} scenes of up to {max_items} items: pass more "
                             f"items (about {n_scenes * max_items}) or fewer scenes")
        placed, lab, sid, off = [], [], [], []
        for i in order[ptr:ptr + k].tolist():
            item = x_items[i]
            tb = _tight_box(item.amax(0) > 0)
            if tb is None:
                continue  # an empty item has no box
            r0, r1, c0, c1 = tb
            for _ in range(max_tries):
                top = int(torch.randint(0, canvas - h + 1, (1,), generator=g))
                left = int(torch.randint(0, canvas - w + 1, (1,), generator=g))
                box = (left + c0, top + r0, left + c1 + 1, top + r1 + 1)
                if all(box[0] >= b[2] or b[0] >= box[2] or box[1] >= b[3] or b[1] >= box[3] for b in placed):
                    break
            else:
                continue  # no free place: leave this item out
            images[s, :, top:top + h, left:left + w] += item  # nonzero pixels are disjoint: the sum is exact
            region = masks[s, top:top + h, left:left + w]
            region[item.amax(0) > mask_threshold] = int(y_items[i]) + 1
            placed.append(box)
            lab.append(int(y_items[i]) + 1)
            sid.append(int(item_ids[i]))
            off.append((top, left))
        ptr += k
        boxes.append(torch.tensor(placed, dtype=torch.float32).reshape(-1, 4))
        labels.append(torch.tensor(lab, dtype=torch.int64))
        ids.append(torch.tensor(sid, dtype=torch.int64))
        offsets.append(torch.tensor(off, dtype=torch.int64).reshape(-1, 2))
    images.clamp_(0, 1)
    return Scenes(images, masks, boxes, labels, list(FASHION_SCENE_CLASSES), None,
                  {"split": split, "item_ids": ids, "offsets": offsets, "mask_threshold": mask_threshold,
                   "seed": seed})


def fashion_scenes(split: str, n_scenes: int, *, canvas: int = 64, max_items: int = 4, seed: int = 0,
                   data_root: str = "data", mask_threshold: float = 0.1) -> Scenes:
    """Fashion scenes built from Fashion-MNIST items of `split` ("train" or "test" items only, so the two sets of
    scenes share no item). Loads n_scenes * max_items items (a seeded subset) and calls `compose_scenes`;
    `source["item_ids"]` are indices into the full split as `load_fashion_mnist(data_root, split)` orders it."""
    if split not in FASHION_SPLIT_SIZES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    n_items = min(n_scenes * max_items, FASHION_SPLIT_SIZES[split])
    # A split-dependent seed so train and test items and layouts are drawn independently.
    split_seed = seed if split == "train" else seed + 1
    x, y = load_fashion_mnist(data_root, split, n=n_items, seed=split_seed)
    ids = subset_indices(FASHION_SPLIT_SIZES[split], n_items, split_seed)
    return compose_scenes(x, y, n_scenes, canvas=canvas, seed=split_seed, max_items=max_items, item_ids=ids,
                          split=split, mask_threshold=mask_threshold)


def voc_scenes(root: str, split: str, task: str, *, canvas: int = 512, n: int | None = None, seed: int = 0,
               year: str = "2012") -> Scenes:
    """Pascal VOC from a local root (torchvision layout: <root>/VOCdevkit/VOC<year>/...), never downloaded.

    task "detection" uses `VOCDetection` (boxes from the XML annotations, "difficult" objects dropped, images with no
    box left out), task "segmentation" uses `VOCSegmentation` (masks with 255 = boundary, not scored). split "train"
    reads image set "train", "test" reads "val". Images are resized to canvas x canvas (bilinear, antialiased; boxes
    scaled alike, masks nearest); masks are kept as uint8, images as their files (an `ImageSet`, decoded batch by
    batch). `n` (None or 0 = all) picks a seeded subset.
    """
    from torchvision import datasets
    from torchvision.transforms.functional import pil_to_tensor

    if task not in ("detection", "segmentation"):
        raise ValueError(f"task must be 'detection' or 'segmentation', got {task!r}")
    image_set = {"train": "train", "test": "val"}.get(split)
    if image_set is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    cls = datasets.VOCDetection if task == "detection" else datasets.VOCSegmentation
    try:
        ds = cls(str(root), year=year, image_set=image_set, download=False)
    except RuntimeError as e:
        raise DataMissingError(f"Pascal VOC {year} not found under {root}: set the parameter `voc_root` to the folder "
                               f"that holds VOCdevkit/VOC{year} (nothing is downloaded at run time). ({e})") from e
    idx = subset_indices(len(ds), n, seed).tolist()
    kept, masks, boxes, labels = [], [], [], []
    for i in idx:
        if task == "segmentation":
            with Image.open(ds.masks[i]) as ann:
                m = pil_to_tensor(ann)[None].float()
            masks.append(F.interpolate(m, size=(canvas, canvas), mode="nearest")[0, 0].to(torch.uint8))
        else:
            ann = ds.parse_voc_xml(ET_parse(ds.annotations[i]).getroot())
            with Image.open(ds.images[i]) as img:  # the header only: the pixels are decoded when used
                w, h = img.size
            objs = ann["annotation"].get("object", [])
            objs = objs if isinstance(objs, list) else [objs]
            bx, lb = [], []
            for o in objs:
                if str(o.get("difficult", "0")) == "1":
                    continue
                b = o["bndbox"]
                # VOC boxes are 1-based inclusive pixel indices: edges are (xmin - 1, xmax).
                x1, y1, x2, y2 = float(b["xmin"]) - 1, float(b["ymin"]) - 1, float(b["xmax"]), float(b["ymax"])
                bx.append([x1 * canvas / w, y1 * canvas / h, x2 * canvas / w, y2 * canvas / h])
                lb.append(VOC_CLASSES.index(o["name"]))
            if not bx:
                continue
            boxes.append(torch.tensor(bx, dtype=torch.float32))
            labels.append(torch.tensor(lb, dtype=torch.int64))
        kept.append(i)
    if not kept:
        raise DataMissingError(f"no usable VOC {task} images under {root} (image set {image_set!r})")
    # the images stay JPEG files, decoded and resized batch by batch when used (VOC's 11.5k images at 512 px would
    # hold 9 GB even as uint8)
    images = ImageSet(ResizedFiles(list(ds.images), canvas), torch.tensor(kept), (3, canvas, canvas),
                      name=f"voc {task} {split}")
    return Scenes(images, torch.stack(masks) if masks else None, boxes or None, labels or None,
                  list(VOC_CLASSES), 255 if task == "segmentation" else None, {"split": split, "voc_index": idx})


def load_dense_data(dataset: str, split: str, *, n_scenes: int, canvas: int, max_items: int = 4, seed: int = 0,
                    data_root: str = "data", voc_root: str | None = None) -> tuple[Scenes, Scenes]:
    """(detection scenes, segmentation scenes) of `split` for `dataset` "fashion_scenes" (the same object twice) or
    "voc" (VOCDetection and VOCSegmentation, which hold different images)."""
    if dataset == "fashion_scenes":
        sc = fashion_scenes(split, n_scenes, canvas=canvas, max_items=max_items, seed=seed, data_root=data_root)
        return sc, sc
    if dataset == "voc":
        if not voc_root:
            raise DataMissingError("dataset 'voc' needs the parameter `voc_root` (the folder holding VOCdevkit/)")
        n = n_scenes or None
        return (voc_scenes(voc_root, split, "detection", canvas=canvas, n=n, seed=seed),
                voc_scenes(voc_root, split, "segmentation", canvas=canvas, n=n, seed=seed))
    raise ValueError(f"unknown dataset {dataset!r}; choose 'fashion_scenes' or 'voc'")
