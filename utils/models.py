"""Models: small ResNets for 28x28 grayscale input, normalization as a layer inside every model, classifiers built
from an encoder and a head, and their safetensors files. (Official ResNet-50 files: `utils.checkpoints`.)

Contract: every model here takes images in [0, 1] of shape [N, C, H, W]; an encoder returns pooled features [N, D]
(attribute `feat_dim` = D); a classifier returns logits [N, K].
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from utils.store import CorruptFileError, load_tensors, save_tensors

# Fashion-MNIST pixel statistics (train split), used by the small encoders trained here.
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """(x - mean) / std per channel, as the first layer of a model so that attacks work on [0, 1] images."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet for small images: 3x3 stem (no max-pool), stages of basic blocks, global average pool.

    Input [N, in_chans, H, W] (already normalized), output features [N, widths[-1]]. `stage_features(x)` also returns
    the last feature map [N, widths[-1], H/s, W/s] for dense heads.
    """

    def __init__(self, in_chans: int = 1, widths=(32, 64, 128), blocks=(1, 1, 1), stem_stride: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, stem_stride, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        layers, cin = [], widths[0]
        for i, (w, b) in enumerate(zip(widths, blocks)):
            for j in range(b):
                layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.feat_dim = cin
        self.out_stride = stem_stride * 2 ** (len(widths) - 1)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))


# Architectures trained here. Widths/blocks were chosen so the `cpu` profile fits its time budget on 2 cores.
ARCHS = {
    "resnet_micro": dict(widths=(8, 16, 32), blocks=(1, 1, 1), stem_stride=1),
    "resnet_tiny": dict(widths=(16, 32, 64), blocks=(1, 1, 1), stem_stride=1),
    "resnet_tiny_deep": dict(widths=(16, 32, 64), blocks=(2, 2, 2), stem_stride=1),
    "resnet_small": dict(widths=(32, 64, 128), blocks=(1, 1, 1), stem_stride=1),
}


class Encoder(nn.Module):
    """[0,1] images -> Normalize -> backbone -> pooled features [N, feat_dim]."""

    def __init__(self, backbone: nn.Module, mean=FASHION_MEAN, std=FASHION_STD, normalize: bool = True):
        super().__init__()
        self.normalize = Normalize(mean, std) if normalize else nn.Identity()
        self.backbone = backbone
        self.feat_dim = backbone.feat_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_shape(x)
        return self.backbone(self.normalize(x))

    def _check_shape(self, x: torch.Tensor) -> None:
        # shape only (no data access, so no cost): a wrong channel count otherwise fails deep inside a conv
        chans = getattr(self.normalize, "mean", None)
        want = chans.shape[1] if chans is not None else None
        if x.dim() != 4 or (want is not None and x.shape[1] != want):
            raise ValueError(f"this encoder takes images [N, {want}, H, W] in [0, 1], got shape {tuple(x.shape)}; "
                             f"convert the data (grayscale <-> RGB) or pick a backbone built for "
                             f"{x.shape[1] if x.dim() == 4 else '?'} channels")
        if min(x.shape[2:]) < 8:
            raise ValueError(f"image size {tuple(x.shape[2:])} is too small for this backbone (minimum 8x8); "
                             f"upsample the images")

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Last spatial feature map [N, feat_dim, h, w] (for detection and segmentation heads)."""
        self._check_shape(x)
        return self.backbone.feature_map(self.normalize(x))


def build_encoder(arch: str = "resnet_tiny", in_chans: int = 1, mean=FASHION_MEAN, std=FASHION_STD) -> Encoder:
    """A freshly initialized encoder of a named small architecture (see `ARCHS`)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)} (or load_backbone for resnet50)")
    if in_chans != len(mean):
        raise ValueError(f"in_chans={in_chans} but normalization has {len(mean)} channels")
    enc = Encoder(SmallResNet(in_chans=in_chans, **ARCHS[arch]), mean, std)
    enc.arch = arch  # lets a saved classifier be rebuilt from its sidecar
    return enc


class Classifier(nn.Module):
    """Encoder + linear (or any) head: [0,1] images [N,C,H,W] -> logits [N,K]. One module, ready to attack."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def save_classifier(clf: Classifier, path: str | os.PathLike, meta: dict) -> Path:
    """A classifier as ONE safetensors file: its weights, and in the header `meta` (it must say how to rebuild it:
    arch, n_classes) and the sha256 of the weights (`utils.store.save_tensors`), so weights and metadata are always
    of one write."""
    return save_tensors(path, clf.state_dict(), meta)


def read_classifier(path: str | os.PathLike) -> tuple[Classifier, dict]:
    """(classifier, its meta) from a file written by `save_classifier` (small-ResNet encoders; eval mode, float32).
    FileNotFoundError when absent; `utils.store.CorruptFileError` naming the file when it is damaged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier {path} is missing: run notebook 02 first "
                                f"(`python -m utils.pipeline --only 02`).")
    state, meta = load_tensors(path)
    if not {"arch", "n_classes"} <= set(meta):
        raise CorruptFileError(path, f"its metadata lacks arch / n_classes (has {sorted(meta)})")
    encoder = build_encoder(meta["arch"])
    clf = Classifier(encoder, nn.Linear(encoder.feat_dim, meta["n_classes"]))
    try:
        clf.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CorruptFileError(path, f"its weights do not fit a {meta['arch']} classifier ({str(e)[:160]})") from None
    return clf.eval(), meta


def load_classifier(path: str | os.PathLike) -> Classifier:
    """The classifier of `read_classifier(path)`."""
    return read_classifier(path)[0]
