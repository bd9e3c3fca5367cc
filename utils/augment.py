"""Augmentations for small grayscale images, as named families that an ablation can switch off.

`make_augment(["crop", "flip", "intensity", "blur", "noise"])` returns `augment(x, generator) -> view`: one random
view of a whole batch, computed with batched tensor ops (one `grid_sample`, one grouped convolution), no per-image
Python loop and no PIL. Call it twice for the two views of a self-supervised pair.

Families (applied in this order; each draws its randomness from its own sub-generator, so switching one family off
leaves the random parameters of the others unchanged: ablations compare the same crops with and without blur):

| family      | what it does (per image, independently)                                         | probability |
|-------------|---------------------------------------------------------------------------------|-------------|
| `crop`      | random resized crop: area fraction `crop_scale`, aspect ratio in [3/4, 4/3],    | 1           |
|             | resampled back to H x W (bilinear, zero padding = Fashion-MNIST's background)   |             |
| `flip`      | horizontal flip                                                                 | 0.5         |
| `intensity` | brightness x U(1-b, 1+b), contrast around the image mean x U(1-c, 1+c),         | `p_intensity` |
|             | gamma U(1-g, 1+g) (the grayscale analogue of colour jitter)                      |             |
| `blur`      | Gaussian blur, sigma U(`blur_sigma`), 5x5 separable kernel                      | `p_blur`    |
| `noise`     | additive Gaussian noise, sigma U(0, `noise_sigma`)                              | `p_noise`   |

Inputs and outputs are float [N, 1, H, W] in [0, 1] (any channel count works); the output has the input's shape.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from utils.config import AUGMENTATIONS

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _bernoulli(n: int, p: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def _geometry(x: torch.Tensor, crop: bool, flip: bool, crop_scale: tuple[float, float],
              g_crop: torch.Generator, g_flip: torch.Generator, out_size: int | None) -> torch.Tensor:
    """Random resized crop and/or horizontal flip (and the resize to out_size) as one affine resampling."""
    n = x.shape[0]
    sx = torch.ones(n)
    sy = torch.ones(n)
    tx = torch.zeros(n)
    ty = torch.zeros(n)
    if crop:
        area = _uniform(n, *crop_scale, g_crop)
        log_ratio = _uniform(n, math.log(3 / 4), math.log(4 / 3), g_crop)
        ratio = torch.exp(log_ratio)
        # side lengths as fractions of the image (in affine_grid's [-1, 1] units a fraction s spans 2s)
        sx = torch.sqrt(area * ratio).clamp(max=1.0)
        sy = torch.sqrt(area / ratio).clamp(max=1.0)
        tx = (2 * torch.rand(n, generator=g_crop) - 1) * (1 - sx)
        ty = (2 * torch.rand(n, generator=g_crop) - 1) * (1 - sy)
    if flip:
        flips = _bernoulli(n, 0.5, g_flip)
        if not crop and out_size is None:
            # exact pixel flip, no resampling blur
            return torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
        sx = torch.where(flips, -sx, sx)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = ty
    size = [n, x.shape[1], out_size or x.shape[2], out_size or x.shape[3]]
    grid = F.affine_grid(theta.to(x.dtype), size, align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _intensity(x: torch.Tensor, p: float, brightness: float, contrast: float, gamma: float,
               g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    apply = _bernoulli(n, p, g).view(-1, 1, 1, 1)
    b = _uniform(n, 1 - brightness, 1 + brightness, g).view(-1, 1, 1, 1)
    c = _uniform(n, 1 - contrast, 1 + contrast, g).view(-1, 1, 1, 1)
    gam = _uniform(n, 1 - gamma, 1 + gamma, g).view(-1, 1, 1, 1)
    y = (x * b).clamp(0, 1)
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = ((y - mean) * c + mean).clamp(0, 1)
    y = y.clamp_min(1e-6).pow(gam)  # clamp: 0 ** gamma has an infinite gradient for gamma < 1
    return torch.where(apply, y, x)


def _blur(x: torch.Tensor, p: float, sigma: tuple[float, float], g: torch.Generator, size: int = 5) -> torch.Tensor:
    n, c, h, w = x.shape
    apply = _bernoulli(n, p, g).view(-1, 1, 1, 1)
    s = _uniform(n, *sigma, g).view(-1, 1)
    r = torch.arange(size, dtype=x.dtype) - size // 2
    k = torch.exp(-(r.view(1, -1) ** 2) / (2 * s ** 2))
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [n*c, size]
    # one grouped convolution blurs every image with its own kernel (separable: rows, then columns)
    y = x.reshape(1, n * c, h, w)
    y = F.pad(y, (size // 2,) * 4, mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, size), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, size, 1), groups=n * c)
    return torch.where(apply, y.view(n, c, h, w), x)


def _noise(x: torch.Tensor, p: float, sigma: float, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    apply = _bernoulli(n, p, g).view(-1, 1, 1, 1)
    s = _uniform(n, 0.0, sigma, g).view(-1, 1, 1, 1)
    eps = torch.randn(x.shape, generator=g, dtype=x.dtype)
    return torch.where(apply, (x + s * eps).clamp(0, 1), x)


def make_augment(families: Sequence[str], *, crop_scale: tuple[float, float] = (0.3, 1.0),
                 p_intensity: float = 0.8, brightness: float = 0.4, contrast: float = 0.4, gamma: float = 0.3,
                 p_blur: float = 0.5, blur_sigma: tuple[float, float] = (0.1, 1.2),
                 p_noise: float = 0.5, noise_sigma: float = 0.1, out_size: int | None = None) -> Augment:
    """Build `augment(x, generator) -> view` from the named families (see the module docstring for each one).

    `x`: float [N, C, H, W] in [0, 1]; `generator`: a seeded `torch.Generator` (CPU), the only source of randomness,
    so a seeded generator reproduces the exact views. Returns a new tensor of x's shape (or [N, C, out_size,
    out_size] when `out_size` is set: smaller views train faster, as SwAV/DINO's small crops), in [0, 1].
    An empty list gives the identity. Unknown names raise a ValueError listing the valid ones.
    """
    if isinstance(families, str):
        raise TypeError(f"families must be a list of names such as {AUGMENTATIONS}, got the string {families!r}")
    unknown = [f for f in families if f not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation famil{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
                         f"choose from {AUGMENTATIONS} (utils.config.AUGMENTATIONS)")
    if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
    enabled = set(families)

    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"augment expects images [N, C, H, W], got shape {tuple(x.shape)}")
        # One sub-seed per family, drawn for all families whether enabled or not: switching one family off
        # leaves the random parameters of every other family unchanged.
        seeds = torch.randint(0, 2 ** 62, (len(AUGMENTATIONS),), generator=generator).tolist()
        gens = {f: torch.Generator().manual_seed(s) for f, s in zip(AUGMENTATIONS, seeds)}
        x = x.float()
        if "crop" in enabled or "flip" in enabled or out_size is not None:
            x = _geometry(x, "crop" in enabled, "flip" in enabled, crop_scale, gens["crop"], gens["flip"], out_size)
        if "intensity" in enabled:
            x = _intensity(x, p_intensity, brightness, contrast, gamma, gens["intensity"])
        if "blur" in enabled:
            x = _blur(x, p_blur, blur_sigma, gens["blur"])
        if "noise" in enabled:
            x = _noise(x, p_noise, noise_sigma, gens["noise"])
        return x.clamp(0, 1)

    augment.families = list(families)  # type: ignore[attr-defined]
    return augment
