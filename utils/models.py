"""Models: small ResNets for small images, torchvision ResNets, normalization as a layer inside every model, classifiers built
from an encoder and a head, and their safetensors files. (Official ResNet-50 files: `utils.checkpoints`.)

Contract: every model here takes images in [0, 1] of shape [N, C, H, W]; an encoder returns pooled features [N, D]
(attribute `feat_dim` = D); a classifier returns logits [N, K].
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from utils.data import FASHION_MEAN, FASHION_STD, IMAGENET_MEAN, IMAGENET_STD  # noqa: F401 (re-exported)
from utils.store import CorruptFileError, load_tensors, save_tensors



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


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without its classifier.

    Input: normalized images [N, 3, H, W]. forward -> pooled features [N, feat_dim] (feat_dim = 2048 for resnet50);
    feature_map -> layer4 map [N, feat_dim, ~H/32, ~W/32]. The torchvision module is kept as `net` with fc = Identity.
    """

    def __init__(self, net):
        super().__init__()
        self.feat_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.net.avgpool(self.feature_map(x)), 1)  # the same ops as torchvision's forward


def use_tf_same_padding(net: nn.Module) -> None:
    """Swap stride-2 convolutions (kernel > 1) and max-pools for TensorFlow "SAME" versions, in place: on even sizes
    they pad 2/3 (left/right) instead of 3/3 for the 7x7 stem and 0/1 instead of 1/1 for 3x3 layers. Parameter names
    and values are unchanged; stride-1 and 1x1 layers already pad the same way in both frameworks."""
    from timm.layers import Conv2dSame
    from timm.layers.pool2d_same import MaxPool2dSame

    for name, mod in list(net.named_modules()):
        if isinstance(mod, nn.Conv2d) and max(mod.stride) > 1 and max(mod.kernel_size) > 1:
            new = Conv2dSame(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, 0, mod.dilation,
                             mod.groups, mod.bias is not None, device=mod.weight.device, dtype=mod.weight.dtype)
            new.load_state_dict(mod.state_dict(), assign=True)
        elif isinstance(mod, nn.MaxPool2d):
            new = MaxPool2dSame(mod.kernel_size, mod.stride, 0, mod.dilation, mod.ceil_mode)
        else:
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, leaf, new)


def torchvision_resnet(arch: str, *, meta: bool = False):
    """An untrained torchvision ResNet named `arch` (resnet18, resnet50, ...); `meta=True`: shapes only, every tensor
    to be assigned from a file (skips the random initialization)."""
    try:
        if meta:
            with torch.device("meta"):
                net = torchvision.models.get_model(arch, weights=None)
        else:
            net = torchvision.models.get_model(arch, weights=None)
    except ValueError:
        net = None
    if not isinstance(net, torchvision.models.ResNet):
        raise ValueError(f"arch={arch!r} is neither a small ResNet of the suite ({sorted(ARCHS)}) nor a torchvision "
                         f"ResNet (resnet18, resnet50, ...)")
    return net


def build_encoder(arch: str = "resnet_tiny", in_chans: int = 1, mean=FASHION_MEAN, std=FASHION_STD, *,
                  normalize: bool = True, tf_same_padding: bool = False) -> Encoder:
    """A freshly initialized encoder: a small ResNet of the suite (`ARCHS`, any channel count) or a torchvision
    ResNet (`resnet18`, `resnet50`, ...; 3 channels, ImageNet layout). `encoder.spec` records how it was built, so a
    saved classifier is rebuilt from its sidecar alone (`build_from_spec`)."""
    if normalize and in_chans != len(mean):
        raise ValueError(f"in_chans={in_chans} but normalization has {len(mean)} channels")
    if arch in ARCHS:
        backbone = SmallResNet(in_chans=in_chans, **ARCHS[arch])
    else:
        if in_chans != 3:
            raise ValueError(f"{arch} takes 3-channel images; this task has {in_chans} channel(s): use a small ResNet "
                             f"({sorted(ARCHS)}) or an RGB task")
        net = torchvision_resnet(arch)
        if tf_same_padding:
            use_tf_same_padding(net)
        backbone = ResNetTrunk(net)
    enc = Encoder(backbone, mean, std, normalize=normalize)
    enc.arch = arch  # lets a saved classifier be rebuilt from its sidecar
    enc.spec = {"arch": arch, "in_chans": int(in_chans), "mean": [float(v) for v in mean],
                "std": [float(v) for v in std], "normalize": bool(normalize), "tf_same_padding": bool(tf_same_padding)}
    return enc


def build_from_spec(spec: dict) -> Encoder:
    """An (untrained) encoder shaped as `spec` (`encoder.spec` of a built or loaded encoder) says."""
    return build_encoder(spec["arch"], int(spec["in_chans"]), tuple(spec["mean"]), tuple(spec["std"]),
                         normalize=bool(spec.get("normalize", True)),
                         tf_same_padding=bool(spec.get("tf_same_padding", False)))


def encoder_spec(encoder: nn.Module) -> dict | None:
    """How to rebuild `encoder` (`build_from_spec`), or None for a module built elsewhere."""
    spec = getattr(encoder, "spec", None)
    return dict(spec) if spec is not None else None


class Classifier(nn.Module):
    """Encoder + linear (or any) head: [0,1] images [N,C,H,W] -> logits [N,K]. One module, ready to attack."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def save_classifier(clf: Classifier, path: str | os.PathLike, meta: dict) -> Path:
    """A classifier as ONE safetensors file: its weights, and in the header `meta` plus `encoder` (the encoder's
    `spec`: architecture, channels, normalization, padding) and `n_classes` and the sha256 of the weights (`utils.store.save_tensors`), so weights and metadata are always
    of one write."""
    spec = encoder_spec(clf.encoder)
    if spec is None:
        raise ValueError("this classifier's encoder has no `spec` (build it with build_encoder, load_backbone or "
                         "build_from_spec) so it could not be rebuilt from its file")
    return save_tensors(path, clf.state_dict(), {**meta, "encoder": spec, "n_classes": clf.head.out_features})


def read_classifier(path: str | os.PathLike) -> tuple[Classifier, dict]:
    """(classifier, its meta) from a file written by `save_classifier` (any encoder `build_from_spec` rebuilds: the
    suite's small ResNets and torchvision ResNets such as the official ResNet-50s; eval mode, float32).
    FileNotFoundError when absent; `utils.store.CorruptFileError` naming the file when it is damaged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier {path} is missing: run notebook 02 first "
                                f"(`python -m utils.pipeline --only 02`).")
    state, meta = load_tensors(path)
    spec = meta.get("encoder")  # files written before specs were stored name a small Fashion-MNIST encoder's arch
    if "n_classes" not in meta or (spec is None and meta.get("arch") is None):
        raise CorruptFileError(path, f"its metadata lacks encoder / n_classes (has {sorted(meta)}): it cannot be "
                                     f"rebuilt; rerun the notebook that made it")
    encoder = build_from_spec(spec) if spec is not None else build_encoder(meta["arch"])
    clf = Classifier(encoder, nn.Linear(encoder.feat_dim, meta["n_classes"]))
    try:
        clf.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CorruptFileError(path, f"its weights do not fit a {encoder.arch} classifier ({str(e)[:160]})") from None
    return clf.eval(), meta


def load_classifier(path: str | os.PathLike) -> Classifier:
    """The classifier of `read_classifier(path)`."""
    return read_classifier(path)[0]
