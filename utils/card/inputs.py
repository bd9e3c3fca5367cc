"""What a card reads: its settings, the encoder (any layout the suite knows, a safetensors file, timm, the suite's
own) and the data (a spec string), each refused with a `CardError` that says what is wrong and how to fix it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from utils import attacks, data
from utils.checkpoints import CheckpointError, load_backbone
from utils.config import SUPERVISED, notebook_parameters, output_dirs
from utils.imageset import materialize
from utils.models import ARCHS, Encoder, build_encoder
from utils.pretrain import encoder_paths, training_params
from utils.store import CorruptFileError, file_sha256, load_tensors, read_json_checked

CARD_VERSION = 1
SUITE_TASKS = ("fashion_mnist", "digits")  # data the suite has a supervised baseline for
DATA_SPECS = "fashion_mnist, digits, cifar10:ROOT, imagefolder:ROOT (ROOT/train and ROOT/val, one folder per class)"
# Flags that make a robust accuracy untrustworthy: gradient masking (a black box beating the white box, zero or
# NaN gradients, no gradient path), an attack that had not converged, a randomized model, probability outputs, and a
# broken evaluation (points outside the ball, accuracy rising with eps, NaN logits).
UNRELIABLE_FLAGS = (attacks.BLACKBOX_BEATS_WHITEBOX, attacks.NOT_CONVERGED, attacks.RANDOMIZED,
                    attacks.PROBABILITY_OUTPUTS, attacks.NO_GRADIENT, attacks.ZERO_GRAD, attacks.NAN_GRAD,
                    attacks.NONFINITE_LOGITS, attacks.OUTSIDE_BALL, attacks.ACCURACY_RISES)
# The timing probe: test points and steps of an APGD-CE run over the grid (its time per pass, and how many points
# survive each eps), and what a FAB-T step and a Square query cost in such passes (measured with bench-style runs of
# each member on resnet_tiny: FAB-T's projections, Square's one forward a query on small batches).
ESTIMATE_POINTS, ESTIMATE_STEPS, FAB_PASSES, SQUARE_PASSES = 32, 4, 2.0, 0.4
ESTIMATE_METHOD = (f"measured before the run: the features of up to 256 training images and a quick probe fitted on "
                   f"them; a {ESTIMATE_STEPS}-step APGD-CE over the eps grid on {ESTIMATE_POINTS} test points, run "
                   f"twice (the second run's seconds per forward-backward pass, and how many points survive each "
                   f"eps); times the passes "
                   f"each stage asks for (a FAB-T step counted as {FAB_PASSES:g} passes, a Square query as "
                   f"{SQUARE_PASSES:g})")


class CardError(ValueError):
    """A refusal: a missing file, an unknown layout or data spec; the message says what and how to fix it."""


@dataclass(frozen=True)
class CardSettings:
    """How much a card computes. Every number on the card states these."""

    n_train: int = 2000  # linear-probe training images
    n_test: int = 250  # test points: clean accuracy and the attack
    eps: tuple[float, ...] = (1 / 255, 2 / 255, 4 / 255, 8 / 255)  # L-inf radii, image units ([0, 1] pixels)
    steps: int = 10  # APGD-CE, APGD-T and FAB-T iterations
    restarts: int = 1
    n_targets: int = 3  # target classes of APGD-T and FAB-T (AutoAttack's standard: 9)
    n_queries: int = 100  # Square's queries (AutoAttack's standard: 5000)
    probe_iters: int = 100  # L-BFGS iterations of the logistic-regression probe
    convergence_n: int = 64  # first test points of the convergence check
    convergence_eps: float | None = None  # None: the middle eps of the grid
    schedule: tuple[tuple[int, int], ...] = ((10, 1), (50, 1), (100, 1), (100, 5))  # (steps, restarts), APGD-CE
    batch_size: int = 50  # points per attacked batch (memory: a ResNet-50 at 224 px needs a few GB for 50)
    seed: int = 0
    image_size: int | None = None  # cifar10 / imagefolder images are resized to this (default 32 / 224)

    def conv_eps(self) -> float:
        grid = sorted(e for e in self.eps if e > 0)
        return float(self.convergence_eps) if self.convergence_eps is not None else grid[len(grid) // 2]

    def grid(self) -> list[float]:
        """The attacked grid: 0 (clean, AutoAttack's sanity check) and the eps asked for, ascending."""
        return sorted({0.0, *(float(e) for e in self.eps)})


# Sizes of a card: `smoke` for tests, `cpu` fits 3 minutes per resnet_tiny encoder on 2 cores (README).
SIZES = {"smoke": CardSettings(n_train=200, n_test=64, eps=(2 / 255, 8 / 255), steps=3, n_targets=3, n_queries=20,
                               probe_iters=30, convergence_n=16, schedule=((3, 1), (6, 1)), batch_size=32),
         "cpu": CardSettings()}


# ----------------------------------------------------------------------------------------------------- encoders

class FeatureTrunk(nn.Module):
    """A timm model built with num_classes=0 as the backbone of `utils.models.Encoder`: pooled features."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.feat_dim = net, int(net.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)


class InputAdapter(nn.Module):
    """The data as given -> what the encoder takes: grey -> RGB (channel repeated), RGB -> grey (channel mean) and
    a bilinear resize. Part of the model, so an attack's eps-ball is on the data as given."""

    def __init__(self, in_chans: int, out_chans: int, size: int | None = None):
        super().__init__()
        self.in_chans, self.out_chans, self.size = in_chans, out_chans, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.out_chans != self.in_chans:
            x = x.mean(1, keepdim=True) if self.out_chans == 1 else x.expand(-1, self.out_chans, -1, -1)
        if self.size and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x

    def extra_repr(self) -> str:
        return f"{self.in_chans} -> {self.out_chans} channels, size={self.size}"


def _in_chans(encoder: nn.Module) -> int:
    conv = next((m for m in encoder.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise CardError("the encoder has no Conv2d layer: cannot tell how many image channels it takes")
    return int(conv.in_channels)


def _small_resnet(state: dict) -> tuple[Encoder, str] | None:
    """(a `build_encoder` encoder of the suite's small ResNets holding `state`, its arch) when the tensors have
    exactly the names and shapes of one of `ARCHS`; else None."""
    mean = state.get("normalize.mean")
    if mean is None or mean.dim() != 4:
        return None
    c = int(mean.shape[1])
    for arch in ARCHS:
        enc = build_encoder(arch, in_chans=c, mean=(0.0,) * c, std=(1.0,) * c)
        ref = enc.state_dict()
        if ref.keys() == state.keys() and all(ref[k].shape == state[k].shape for k in ref):
            enc.load_state_dict(state)
            return enc.float().eval(), arch
    return None


def _read_safetensors(path: Path) -> tuple[dict, str]:
    """(tensors, how the file was checked). A file of `utils.store.save_tensors` is checked against the sha256 in
    its header (a mismatch is refused); any other safetensors file (tensors only, nothing runs) is read as it is."""
    try:
        return load_tensors(path)[0], "sha256 in its header, checked"
    except CorruptFileError as e:
        if "damaged" in e.reason:
            raise CardError(f"{path}: {e.reason}") from None
        try:
            return load_file(str(path)), f"not checked ({e.reason})"
        except Exception as e2:  # noqa: BLE001 - safetensors raises its own SafetensorError
            raise CardError(f"{path} is not a readable safetensors file ({str(e2)[:200]})") from None


def _sidecar(path: Path) -> dict:
    side = path.with_suffix(".json")
    try:
        return read_json_checked(side, dict) if side.is_file() else {}
    except CorruptFileError:
        return {}


def suite_encoder_path(method: str, profile: str, suite_cache: str | Path | None = None) -> Path:
    """The suite's trained `method` encoder of `profile` (notebook 01's parameters) in its cache (default
    `cache/<profile>`); CardError naming the file and the fix when it is not there."""
    p = notebook_parameters(profile, "01")
    cache = Path(suite_cache) if suite_cache is not None else output_dirs(profile)["cache_dir"]
    try:
        params = training_params(method, arch=p["arch"], n_pretrain=p["n_pretrain"], epochs=p["epochs"],
                                 batch_size=p["batch_size"], lr=p["lr"], augmentations=p["augmentations"],
                                 seed=p["seed"])
    except (KeyError, ValueError) as e:
        raise CardError(f"the suite trains no encoder {method!r} ({e})") from None
    path = encoder_paths(cache, params)["encoder"]
    if not path.is_file():
        raise CardError(f"the suite's {method} encoder of profile {profile!r} is not in {path}: run notebook 01 "
                        f"(`python -m utils.pipeline --profile {profile} --only 01`), pass --suite-cache DIR, or "
                        f"pass the .safetensors file as --encoder")
    return path


def _torch_state(path: Path) -> dict:
    if path.name.endswith(".safetensors"):
        return _read_safetensors(path)[0]
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - an unpicklable or unsafe file: refused, nothing was run
        raise CardError(f"{path} could not be read safely with torch.load(weights_only=True) ({str(e)[:200]}); "
                        f"nothing in it was run") from None
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CardError(f"{path} holds a {type(obj).__name__}, not a state dict")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _timm_encoder(name: str, weights: str | None) -> tuple[Encoder, dict]:
    import timm

    if not weights:
        raise CardError(f"timm:{name} needs local weights: pass --weights FILE (.safetensors or a torch file); "
                        f"nothing is downloaded")
    wpath = Path(weights).expanduser()
    if not wpath.is_file():
        raise CardError(f"weights file {wpath} does not exist")
    try:
        net = timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as e:
        raise CardError(f"timm has no model {name!r} ({e})") from None
    state = _torch_state(wpath)
    head = str(net.pretrained_cfg.get("classifier", "fc"))
    state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CardError(f"unknown layout: {wpath} does not fit timm model {name!r}: {len(missing)} missing keys "
                        f"(e.g. {missing[:4]}), {len(unexpected)} unexpected (e.g. {unexpected[:4]})")
    cfg = net.pretrained_cfg
    enc = Encoder(FeatureTrunk(net), mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
                  std=tuple(cfg.get("std", (0.229, 0.224, 0.225)))).eval()
    return enc, {"source": "timm", "path": str(wpath), "sha256": file_sha256(wpath), "arch": name,
                 "normalization": {"mean": list(cfg.get("mean", ())), "std": list(cfg.get("std", ()))}}


def load_card_encoder(encoder: str, method: str | None = None, *, arch: str | None = None,
                      weights: str | None = None, profile: str = "cpu",
                      suite_cache: str | Path | None = None) -> tuple[nn.Module, dict]:
    """(encoder in eval mode: [0, 1] images -> features, info for the card) from an `--encoder` value; see the
    module doc. Refuses with CardError: a missing file, an unknown layout, an unknown method or timm model."""
    if encoder.startswith("timm:"):
        enc, info = _timm_encoder(encoder[len("timm:"):], weights)
        return enc, {**info, "method": method or encoder[len("timm:"):]}
    if encoder.startswith("suite:"):
        method = method or encoder[len("suite:"):]
        path, source = suite_encoder_path(encoder[len("suite:"):], profile, suite_cache), "suite"
    else:
        path, source = Path(encoder).expanduser(), "file"
    if not path.exists():
        raise CardError(f"encoder file {path} does not exist: pass a checkpoint file or folder, a .safetensors "
                        f"file, suite:METHOD or timm:NAME --weights FILE")
    if path.is_file() and path.name.endswith(".safetensors"):
        state, checked = _read_safetensors(path)
        small = _small_resnet(state)
        if small is not None:
            enc, small_arch = small
            return enc, {"source": source, "path": str(path), "sha256": file_sha256(path),
                         "method": method or _sidecar(path).get("method") or path.stem.split("-")[0],
                         "arch": small_arch, "layout": "suite small ResNet (utils.models)", "checked": checked,
                         "normalization": {"mean": enc.normalize.mean.flatten().tolist(),
                                           "std": enc.normalize.std.flatten().tolist()}}
    if not method:
        raise CardError(f"pass --method for {path}: the official layouts and input normalizations depend on it")
    try:
        enc = load_backbone(method, path, arch or "resnet50")
    except CheckpointError as e:
        raise CardError(f"unknown layout: {e}") from None
    except ValueError as e:  # an unknown method or arch
        raise CardError(str(e)) from None
    info = enc.checkpoint_info
    return enc, {"source": "official checkpoint", "path": info["path"], "sha256": file_sha256(info["path"]),
                 "method": info["method"], "arch": arch or "resnet50", "layout": info["layout"],
                 "checked": info["sha256_checked"] or "not checked (no expected sha256)",
                 "normalization": info["normalization"]}


def adapt(encoder: nn.Module, in_chans: int, image_size: int, resize: int | None = None) -> tuple[nn.Module, dict]:
    """`encoder` taking images of `in_chans` channels (an `InputAdapter` in front when it takes another count, or
    when `resize` asks for another size); returns (module, what was adapted)."""
    want = _in_chans(encoder)
    if want == in_chans and not resize:
        return encoder, {}
    if want not in (1, 3) or in_chans not in (1, 3):
        raise CardError(f"the encoder takes {want}-channel images, the data has {in_chans}: no adapter for that")
    ad = InputAdapter(in_chans, want, resize)
    return nn.Sequential(ad, encoder).eval(), {"input_adapter": ad.extra_repr(), "data_size": image_size}


# --------------------------------------------------------------------------------------------------------- data

def load_card_data(spec: str, *, n_train: int, n_test: int, seed: int = 0, image_size: int | None = None,
                   data_root: str = "data") -> dict:
    """{"task", "spec", "x_train", "y_train", "x_test", "y_test", "n_classes"} of a `--data` spec (see DATA_SPECS),
    read by the suite's own task loaders (`utils.data.classification_task`): `cifar10:ROOT` is the task cifar10 with
    `transfer_root=ROOT` (default size 32), `imagefolder:ROOT` the task imagenet with `imagenet_root=ROOT` (default
    size 224); `n_train`/`n_test` points chosen by `seed`. CardError on an unknown spec or missing data."""
    kind, _, root = spec.partition(":")
    tasks = {"cifar10": ("cifar10", "transfer_root", 32), "imagefolder": ("imagenet", "imagenet_root", 224)}
    try:
        if kind in SUITE_TASKS and not root:
            out = data.classification_task(kind, data_root=data_root, n_train=n_train, n_test=n_test, seed=seed)
        elif kind in tasks and root:
            task, key, size = tasks[kind]
            out = data.classification_task(task, n_train=n_train, n_test=n_test, seed=seed,
                                           **{key: root, "image_size": image_size or size})
            out["task"] = kind
        else:
            raise CardError(f"unknown data spec {spec!r}: use one of {DATA_SPECS}")
    except (data.DataMissingError, data.DataCorruptError) as e:
        raise CardError(str(e)) from None
    # the test points are attacked as a whole (n_test of them); the train images are only walked by the probe
    return {**out, "x_test": materialize(out["x_test"]), "spec": spec}


def resolve_baseline(baseline: str, task: str, profile: str, suite_cache=None) -> tuple[Path | None, str]:
    """(the baseline encoder's file or None, a sentence saying which baseline or why none): `baseline` is "auto"
    (the suite's supervised encoder of `profile`, for the suite's tasks), "none" or a file."""
    if baseline == "none":
        return None, "no baseline (--baseline none)"
    if baseline != "auto":
        path = Path(baseline).expanduser()
        if not path.exists():
            raise CardError(f"baseline file {path} does not exist")
        return path, f"the supervised encoder {path.name} (--baseline)"
    if task not in SUITE_TASKS:
        return None, f"the suite has no supervised baseline for {task} data (pass --baseline FILE for one)"
    try:
        path = suite_encoder_path(SUPERVISED, profile, suite_cache)
    except CardError as e:
        return None, f"no baseline: {e}"
    return path, f"the suite's supervised encoder ({profile} profile, {path.name})"
