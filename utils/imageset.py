"""Images decoded on demand: a dataset of any size held as a list of files (or compact uint8 arrays), never as one
float32 tensor.

At the `paper` profile's sizes a float32 tensor of the images does not fit in a host's memory (100k ImageNet images
at 224 px: ~60 GB; CIFAR's 50k upsampled to 224: ~30 GB). An `ImageSet` keeps what the suite asks of an image
tensor and nothing more: `len(x)`, `x.shape`, `x[idx]` (an int, slice, list, bool mask or index tensor -> float32
[k, C, H, W] in [0, 1], decoded now), `x.subset(idx)` (a smaller ImageSet, nothing decoded) and `batches(x, ...)`
(`image_batches`: DataLoader workers decode the next batches while the model runs). Only the batches in flight are in memory.

Every loop that walks a whole set goes through `image_batches` here, which takes tensors too, so one code path serves the
small profiles (tensors in memory) and `paper` (ImageSets).
"""
from __future__ import annotations

import hashlib
import os
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

# Batches decoded ahead of the one in use per DataLoader worker (torch's default); with `decode_workers()` workers
# and a batch of 256 ImageNet images at 224 px (uint8, 38 MB) the images in flight stay under ~1 GB.
PREFETCH = 2
# Below this many images, decoding runs in the calling process (starting workers costs more than it saves).
WORKER_MIN_IMAGES = 256


def decode_workers() -> int:
    """DataLoader workers that decode images: $SSL_ADV_DECODE_WORKERS if set, else min(8, CPU cores)."""
    env = os.environ.get("SSL_ADV_DECODE_WORKERS")
    return int(env) if env else min(8, os.cpu_count() or 1)


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images [N, C, h, w] resized to size x size (bilinear, antialiased, rounded back to uint8)."""
    return F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False).round_().clamp_(0, 255).to(torch.uint8)


class ResizedArrays(Dataset):
    """uint8 images [N, C, h, w] held in memory (e.g. CIFAR's 50k 32x32 images: 150 MB), resized on demand to
    size x size (bilinear, antialiased, rounded back to uint8), as one would store them resized; item i ->
    (uint8 [C, size, size], label)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, size: int | None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise TypeError(f"ResizedArrays takes uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        self.images, self.labels = images, labels
        self.size = int(size) if size and int(size) != images.shape[-1] else None

    def __len__(self) -> int:
        return len(self.images)

    def fetch(self, idx: Sequence[int]) -> torch.Tensor:
        x = self.images[torch.as_tensor(list(idx), dtype=torch.int64)]
        return x if self.size is None else resize_uint8(x, self.size)

    def __getitem__(self, i: int):
        return self.fetch([i])[0], int(self.labels[i])

    def identity(self, idx: torch.Tensor) -> bytes:
        """What identifies images idx: their stored bytes and the size they are resized to."""
        return self.images[idx].contiguous().numpy().tobytes() + str(self.size).encode()


class FolderFiles(Dataset):
    """A torchvision ImageFolder whose transform returns uint8 [C, H, W]; identified by its files' paths and sizes."""

    def __init__(self, folder):
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int):
        return self.folder[i]

    def identity(self, idx: torch.Tensor) -> bytes:
        """The relative paths, byte sizes and labels of images idx, and the transform (not their pixels: reading
        100k JPEGs to name a set would cost as much as the work)."""
        root, parts = str(self.folder.root), [repr(self.folder.transform)]
        for i in idx.tolist():
            path, label = self.folder.samples[i]
            parts.append(f"{os.path.relpath(path, root)}:{os.path.getsize(path)}:{label}")
        return "\n".join(parts).encode()


class ResizedFiles(Dataset):
    """Image files read as RGB and resized to canvas x canvas (`resize_uint8`); item i -> (uint8 [3, canvas,
    canvas], 0). Identified by the files' paths and sizes and the canvas."""

    def __init__(self, paths: list[str], canvas: int):
        self.paths, self.canvas = paths, int(canvas)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from torchvision.transforms.functional import pil_to_tensor

        with Image.open(self.paths[i]) as img:
            x = pil_to_tensor(img.convert("RGB"))
        return resize_uint8(x[None], self.canvas)[0], 0

    def identity(self, idx: torch.Tensor) -> bytes:
        return "\n".join([str(self.canvas)] + [f"{self.paths[i]}:{os.path.getsize(self.paths[i])}"
                                                 for i in idx.tolist()]).encode()


class ImageSet:
    """A sequence of images in [0, 1] decoded on demand from `source` (`ResizedArrays`, `FolderFiles` or
    `ResizedFiles`: items (uint8 [C, H, W], label)) at positions `indices`; see the module docstring."""

    def __init__(self, source: Dataset, indices: torch.Tensor, shape: tuple[int, int, int], name: str = "images"):
        self.source, self.indices = source, torch.as_tensor(indices, dtype=torch.int64)
        self.item_shape, self.name = tuple(int(s) for s in shape), name

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.item_shape))

    def __repr__(self) -> str:
        return f"ImageSet({self.name}, {len(self)} images of {'x'.join(map(str, self.item_shape))}, decoded on demand)"

    def _positions(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            return self.indices[key]
        key = torch.as_tensor(key)
        if key.dtype == torch.bool:
            if key.shape != (len(self),):
                raise IndexError(f"a bool mask must have shape ({len(self)},), got {tuple(key.shape)}")
            return self.indices[key]
        return self.indices[key.to(torch.int64)]

    def subset(self, key) -> "ImageSet":
        """The images at `key` (slice, indices or bool mask) as an ImageSet; nothing is decoded."""
        return ImageSet(self.source, self._positions(key).reshape(-1), self.item_shape, self.name)

    def __getitem__(self, key) -> torch.Tensor:
        """float32 [k, C, H, W] in [0, 1] (an int key: [C, H, W]), decoded now."""
        if isinstance(key, int):
            return self.subset([key]).decode()[0]
        return self.subset(key).decode()

    def decode(self) -> torch.Tensor:
        """Every image of the set as one float32 tensor [N, C, H, W] in [0, 1] (for sets that fit in memory)."""
        out = torch.empty(self.shape, dtype=torch.float32)
        i = 0
        for xb in image_batches(self, 256):
            out[i:i + len(xb)] = xb
            i += len(xb)
        return out

    def uint8_batches(self, batch_size: int, order: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """uint8 batches [b, C, H, W] of the images in `order` (positions in this set; default: in order), decoded
        by DataLoader workers when there are enough images to pay for starting them."""
        pos = torch.arange(len(self)) if order is None else torch.as_tensor(order, dtype=torch.int64)
        ids = self.indices[pos].tolist()
        groups = [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]
        if not groups:
            return
        if isinstance(self.source, ResizedArrays):  # in memory: a batched resize here is cheaper than a worker
            yield from (self.source.fetch(g) for g in groups)
            return
        workers = decode_workers() if len(ids) >= WORKER_MIN_IMAGES else 0
        if workers == 0:
            yield from (_stack_images([self.source[i] for i in g]) for g in groups)
            return
        loader = DataLoader(self.source, batch_sampler=groups, num_workers=min(workers, len(groups)),
                            prefetch_factor=PREFETCH, collate_fn=_stack_images)
        yield from loader

    def identity(self) -> bytes:
        """Bytes that name this set (source files or arrays, order); `utils.store.points_digest` hashes them."""
        return hashlib.sha256(self.source.identity(self.indices)).digest()


def _stack_images(items) -> torch.Tensor:
    return torch.stack([x for x, _ in items])


def image_batches(images, batch_size: int, *, order: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """float32 batches in [0, 1] of `images` (a tensor [N, ...] or an ImageSet) in `order` (default: in order),
    `batch_size` at a time. An ImageSet is decoded by DataLoader workers a few batches ahead; a tensor is sliced."""
    if isinstance(images, ImageSet):
        yield from (xb.float().div_(255.0) for xb in images.uint8_batches(batch_size, order))
    elif order is None:
        yield from (images[i:i + batch_size] for i in range(0, len(images), batch_size))
    else:
        pos = torch.as_tensor(order, dtype=torch.int64)
        yield from (images[pos[i:i + batch_size]] for i in range(0, len(pos), batch_size))


def materialize(images) -> torch.Tensor:
    """A float32 tensor of `images` (an ImageSet is decoded; a tensor is returned as it is)."""
    return images.decode() if isinstance(images, ImageSet) else images
