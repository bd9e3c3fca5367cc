"""The profiles as data (`smoke`, `cpu`, `paper`), the names every layer shares, and what each knob means.

Base layer: imports nothing from `utils`. One code path for every profile: a profile only changes parameters.

`PROFILES[name]["common"]` holds knobs shared by several notebooks (`NOTEBOOK_COMMON_KEYS` says which of them each
notebook takes); `PROFILES[name]["NN"]` the knobs of notebook `NN`. `notebook_parameters(profile, "03")` is what the
chain runner injects into a notebook's `parameters` cell; the defaults written in each notebook's `parameters` cell
are the `cpu` values, so a notebook opened in JupyterLab runs as-is in the default profile. `KEY_DOCS[key]` gives
every knob's unit and meaning; `parameters_source("03")` is the `parameters` cell itself (cpu values, one comment
per knob from KEY_DOCS), written into the notebooks by `python -m utils.pipeline --write-parameters`.
"""
from __future__ import annotations

import ast
import copy
import json
import operator
import os
from pathlib import Path

METHODS = ["supervised", "simclr", "mocov2", "byol", "swav", "dino", "barlowtwins", "vicreg"]
SSL_METHODS = [m for m in METHODS if m != "supervised"]
AUGMENTATIONS = ["crop", "flip", "intensity", "blur", "noise"]
SUPERVISED = "supervised"

# How a classifier is adapted from a frozen encoder (notebooks 02-04), and the one regime of the dense tasks (05).
REGIMES = ["linear", "finetuned", "adv-finetuned"]
FINETUNE_REGIMES = REGIMES[1:]
# Notebook 02's row of an official checkpoint's own ImageNet classifier (`fc`), scored beside its published top-1.
OWN_FC_REGIME = "own_fc"
DENSE_REGIME = "frozen_encoder"
# What the `metric` column of the dense tasks' tidy table names (the value sits in `accuracy`).
METRIC_MAP = "map50"
METRIC_MIOU = "miou"
METRIC_PIXEL_ACC = "pixel_acc"

_COMMON = {
    "seed": 0,
    "device": "auto",
    "task": "fashion_mnist",
    "image_size": None,
    "data_root": "data",
    "imagenet_root": None,
    "transfer_root": None,
    "voc_root": None,
    "checkpoint_root": "checkpoints",  # where the official ResNet-50 files lie (used when 01 trains nothing)
    "verify_sha256": True,
}
# The path parameters: each names a folder a user points at their own copy with `--set KEY=PATH`.
PATH_KEYS = ("data_root", "imagenet_root", "transfer_root", "voc_root", "checkpoint_root")
_CLASSIFICATION = ("seed", "device", "methods", "task", "image_size", "data_root", "imagenet_root", "transfer_root")

# Which common knobs each notebook takes (only those it uses; a notebook not listed takes them all).
NOTEBOOK_COMMON_KEYS: dict[str, tuple[str, ...]] = {
    "01": ("seed", "device", "methods", "task", "image_size", "data_root", "imagenet_root", "checkpoint_root",
           "verify_sha256"),  # 01 alone loads the official checkpoints
    "02": _CLASSIFICATION,
    "03": _CLASSIFICATION,
    "04": _CLASSIFICATION,
    "05": ("seed", "device", "methods", "task", "data_root", "voc_root"),
}

PROFILES: dict[str, dict[str, dict]] = {
    "smoke": {
        "common": {**_COMMON, "methods": METHODS},
        "01": {"arch": "resnet_micro", "n_pretrain": 512, "epochs": 1, "batch_size": 128, "lr": 1e-3,
               "augmentations": AUGMENTATIONS, "n_probe_train": 512, "n_probe_test": 256, "seeds": 2,
               "seed_methods": ["supervised", "simclr"]},
        "02": {"n_probe_train": 512, "n_test": 128, "probe_epochs": 20, "transfer_tasks": ["digits"],
               "published_tolerance": 2.0},
        "03": {"n_attack": 128, "transfer_tasks": ["digits"], "eps_linf": [0, 2 / 255, 8 / 255, 64 / 255],
               "eps_l2": [0, 0.5, 2.0], "linf_attacks": ["fgsm", "pgd", "cw", "apgd-ce", "apgd-dlr", "autoattack"],
               "l2_attacks": ["pgd"], "steps": 3, "restarts": 1, "square_queries": 20, "n_targets": 3,
               "n_ensemble": 64, "attack_batch": 256, "attack_batch_multiple": 1,
               "ref_eps": 2 / 255, "convergence_n": 32, "convergence_schedule": [[3, 1], [6, 1], [6, 2]],
               "n_show": 2, "n_teach": 100, "teach_eps": 8 / 255, "teach_steps": 10},
        "04": {"transfer_tasks": ["digits"], "n_finetune": 256, "finetune_epochs": 1, "finetune_lr": 3e-4,
               "adv_epochs": 1, "adv_eps": 4 / 255, "adv_steps": 2, "n_attack": 128,
               "eps_linf": [0, 2 / 255, 8 / 255], "ref_eps": 2 / 255, "steps": 3,
               "attack_batch": 256, "attack_batch_multiple": 1, "ablation_methods": ["simclr"], "n_ablation": 256,
               "ablation_epochs": 1,
               "ablation_lr": 1e-3, "ablation_batch_size": 128,
               "archs": ["resnet_micro", "resnet_tiny"], "epoch_checkpoints": [1, 2], "batch_sizes": [32, 64, 128]},
        "05": {"dataset": "fashion_scenes", "canvas": 64, "max_items": 4, "n_train_scenes": 64,
               "n_test_scenes": 16, "det_epochs": 1, "seg_epochs": 1, "head_lr": 2e-3, "eps_linf": [0, 8 / 255],
               "steps": 2, "batch_size": 16},
    },
    "cpu": {
        "common": {**_COMMON, "methods": METHODS},
        "01": {"arch": "resnet_tiny", "n_pretrain": 30000, "epochs": 2, "batch_size": 64, "lr": 5e-3,
               "augmentations": AUGMENTATIONS, "n_probe_train": 5000, "n_probe_test": 2000, "seeds": 3,
               "seed_methods": ["supervised", "simclr", "barlowtwins"]},
        "02": {"n_probe_train": 10000, "n_test": 1000, "probe_epochs": 100, "transfer_tasks": ["digits"],
               "published_tolerance": 2.0},
        "03": {"n_attack": 1000, "transfer_tasks": ["digits"],
               "eps_linf": [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255], "eps_l2": [0, 0.25, 0.5, 1.0, 2.0],
               "linf_attacks": ["fgsm", "pgd", "cw", "apgd-ce", "apgd-dlr", "autoattack"], "l2_attacks": ["pgd"],
               "steps": 10, "restarts": 1, "square_queries": 500, "n_targets": 3, "n_ensemble": 100,
               "attack_batch": 256, "attack_batch_multiple": 1,
               "ref_eps": 4 / 255,
               "convergence_n": 100, "convergence_schedule": [[10, 1], [50, 1], [100, 1], [100, 5]], "n_show": 2,
               "n_teach": 100, "teach_eps": 8 / 255, "teach_steps": 10},
        "04": {"transfer_tasks": ["digits"], "n_finetune": 5000, "finetune_epochs": 2, "finetune_lr": 3e-4,
               "adv_epochs": 2, "adv_eps": 4 / 255, "adv_steps": 3, "n_attack": 1000, "attack_batch": 256,
               "attack_batch_multiple": 1,
               "eps_linf": [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255], "ref_eps": 2 / 255, "steps": 10,
               "ablation_methods": ["simclr", "barlowtwins"], "n_ablation": 5000, "ablation_epochs": 2,
               "ablation_lr": 5e-3, "ablation_batch_size": 64,
               "archs": ["resnet_tiny", "resnet_small"], "epoch_checkpoints": [1, 2, 4], "batch_sizes": [64, 128, 256]},
        "05": {"dataset": "fashion_scenes", "canvas": 64, "max_items": 4, "n_train_scenes": 1000,
               "n_test_scenes": 128, "det_epochs": 4, "seg_epochs": 6, "head_lr": 2e-3,
               "eps_linf": [0, 2 / 255, 4 / 255, 8 / 255], "steps": 5, "batch_size": 32},
    },
    "paper": {
        "common": {**_COMMON, "methods": METHODS, "task": "imagenet", "image_size": 224,
                   "imagenet_root": "/datasets/imagenet", "transfer_root": "/datasets/cifar", "voc_root": "/datasets/voc",
                   "checkpoint_root": "/checkpoints"},
        "01": {"arch": "resnet50", "n_pretrain": 0, "epochs": 0, "batch_size": 256, "lr": 0.0,
               "augmentations": AUGMENTATIONS, "n_probe_train": 50000, "n_probe_test": 10000, "seeds": 1,
               "seed_methods": []},
        "02": {"n_probe_train": 100000, "n_test": 50000, "probe_epochs": 100, "transfer_tasks": ["cifar10", "cifar100"],
               "published_tolerance": 2.0},
        "03": {"n_attack": 5000, "transfer_tasks": ["cifar10", "cifar100"],
               "eps_linf": [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255], "eps_l2": [0, 0.25, 0.5, 1.0, 2.0],
               "linf_attacks": ["fgsm", "pgd", "cw", "apgd-ce", "apgd-dlr", "autoattack"],
               "l2_attacks": ["pgd", "apgd-ce"], "steps": 100, "restarts": 5, "square_queries": 5000, "n_targets": 9,
               "n_ensemble": 5000, "attack_batch": 256, "attack_batch_multiple": 16,
               "ref_eps": 4 / 255, "convergence_n": 1000, "convergence_schedule": [[10, 1], [50, 1], [100, 1], [100, 5]],
               "n_show": 2, "n_teach": 100, "teach_eps": 4 / 255, "teach_steps": 10},
        "04": {"transfer_tasks": ["cifar10", "cifar100"], "n_finetune": 100000, "finetune_epochs": 20, "finetune_lr": 1e-4,
               "adv_epochs": 10, "adv_eps": 4 / 255, "adv_steps": 10, "n_attack": 2000, "attack_batch": 256,
               "attack_batch_multiple": 16,
               "eps_linf": [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255], "ref_eps": 2 / 255, "steps": 50,
               "ablation_methods": ["mocov2", "dino"], "n_ablation": 50000, "ablation_epochs": 20,
               "ablation_lr": 2e-3, "ablation_batch_size": 256,
               "archs": ["resnet18", "resnet50"], "epoch_checkpoints": [5, 10, 20], "batch_sizes": [256, 512, 1024]},
        "05": {"dataset": "voc", "canvas": 512, "max_items": 4, "n_train_scenes": 0,
               "n_test_scenes": 0, "det_epochs": 20, "seg_epochs": 20, "head_lr": 1e-3,
               "eps_linf": [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255], "steps": 20, "batch_size": 8},
    },
}

# `paper-mini`: the `paper` code path (official checkpoints in their layouts, an ImageNet-style folder, CIFAR's files,
# Pascal VOC) on a miniature of those inputs that `python -m utils.miniature` generates under data/paper-mini/, at
# sizes that run on a 2-core CPU in minutes. Only numbers and folders differ from `paper`; tests run its whole chain.
MINIATURE_ROOT = "data/paper-mini"
PROFILES["paper-mini"] = {
    "common": {**PROFILES["paper"]["common"], "image_size": 32, "verify_sha256": False,
               "imagenet_root": f"{MINIATURE_ROOT}/imagenet", "transfer_root": f"{MINIATURE_ROOT}/cifar",
               "voc_root": f"{MINIATURE_ROOT}/voc", "checkpoint_root": f"{MINIATURE_ROOT}/checkpoints"},
    "01": {**PROFILES["paper"]["01"], "batch_size": 16, "n_probe_train": 64, "n_probe_test": 32},
    "02": {"n_probe_train": 96, "n_test": 16, "probe_epochs": 20, "transfer_tasks": ["cifar10", "cifar100"],
           "published_tolerance": 2.0},
    "03": {"n_attack": 16, "transfer_tasks": ["cifar10", "cifar100"], "eps_linf": [0, 2 / 255, 8 / 255], "eps_l2": [0, 0.5],
           "linf_attacks": ["fgsm", "pgd", "cw", "apgd-ce", "apgd-dlr", "autoattack"], "l2_attacks": ["pgd", "apgd-ce"],
           "steps": 2, "restarts": 1, "square_queries": 10, "n_targets": 2, "n_ensemble": 8, "attack_batch": 8,
           "attack_batch_multiple": 2,
           "ref_eps": 2 / 255,
           "convergence_n": 8, "convergence_schedule": [[2, 1], [4, 1], [4, 2]], "n_show": 2, "n_teach": 16,
           "teach_eps": 8 / 255, "teach_steps": 3},
    "04": {"transfer_tasks": ["cifar10", "cifar100"], "n_finetune": 48, "finetune_epochs": 1, "finetune_lr": 1e-4, "adv_epochs": 1,
           "adv_eps": 4 / 255, "adv_steps": 1, "n_attack": 16, "attack_batch": 8, "attack_batch_multiple": 2,
           "eps_linf": [0, 2 / 255, 8 / 255],
           "ref_eps": 2 / 255, "steps": 2, "ablation_methods": ["simclr"], "n_ablation": 64, "ablation_epochs": 2,
           "ablation_lr": 1e-3,
           "ablation_batch_size": 32, "archs": ["resnet_micro", "resnet18"], "epoch_checkpoints": [1, 2],
           "batch_sizes": [16, 32]},
    "05": {"dataset": "voc", "canvas": 64, "max_items": 4, "n_train_scenes": 0, "n_test_scenes": 0, "det_epochs": 1,
           "seg_epochs": 1, "head_lr": 1e-3, "eps_linf": [0, 8 / 255], "steps": 2, "batch_size": 8},
}

DEFAULT_PROFILE = "cpu"


# `python -m utils.pipeline --set KEY=VALUE`: the runner puts the overrides here (JSON) for itself and the notebook
# kernels it starts, so the runner's fingerprints, the injected parameters and `notebook_setup` agree on them.
SET_ENV = "SSL_ADV_SET"


def profile_keys(profile: str) -> list[str]:
    """Every knob some notebook of `profile` takes, sorted."""
    p = PROFILES[profile]
    keys = {k for nb, ks in NOTEBOOK_COMMON_KEYS.items() for k in ks} | {k for nb in p if nb != "common" for k in p[nb]}
    return sorted(keys)


def check_overrides(profile: str, overrides: dict) -> None:
    """ValueError naming every key of `overrides` that no notebook of `profile` takes, with the keys there are."""
    unknown = sorted(set(overrides) - set(profile_keys(profile)))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for profile {profile!r}; the parameters are: "
                         f"{', '.join(profile_keys(profile))}")


def overrides_from_env() -> dict:
    """The `--set` overrides of the chain run this process belongs to ({} outside one)."""
    raw = os.environ.get(SET_ENV)
    return json.loads(raw) if raw else {}


_SAFE_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
             ast.USub: operator.neg, ast.UAdd: operator.pos}


def _literal(node):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.BinOp) and type(node.op) in _SAFE_OPS:
        return _SAFE_OPS[type(node.op)](_literal(node.left), _literal(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _SAFE_OPS:
        return _SAFE_OPS[type(node.op)](_literal(node.operand))
    raise ValueError("not a literal")


def parse_set(items: list[str]) -> dict:
    """`["KEY=VALUE", ...]` as {key: value}: VALUE read as a Python literal where it is one (numbers, `8 / 255`,
    lists, None, True), else kept as a string (a path)."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: write KEY=VALUE, e.g. --set imagenet_root=/data/imagenet")
        try:
            out[key.strip()] = _literal(ast.parse(text.strip(), mode="eval").body)
        except (SyntaxError, ValueError):
            out[key.strip()] = text.strip()
    return out


def notebook_parameters(profile: str, notebook: str, overrides: dict | None = None) -> dict:
    """Parameters to inject into notebook `notebook` ("01".."05") for `profile`, with `overrides` (default: the
    chain run's `--set` values, `overrides_from_env()`) applied to the knobs this notebook takes; includes
    `profile` itself."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    p = PROFILES[profile]
    common = NOTEBOOK_COMMON_KEYS.get(notebook, tuple(p["common"]))
    params = {"profile": profile, **{k: copy.deepcopy(p["common"][k]) for k in common},
              **copy.deepcopy(p.get(notebook, {}))}
    overrides = overrides_from_env() if overrides is None else overrides
    params.update({k: copy.deepcopy(v) for k, v in overrides.items() if k in params and k != "profile"})
    return params


def format_value(value) -> str:
    """A knob's value as Python source, as a person writes it: radii in grey levels as `8 / 255`, strings in double
    quotes, lists element by element."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float) and 0 < value < 1 and abs(value * 255 - round(value * 255)) < 1e-9:
        return f"{round(value * 255)} / 255"
    return repr(value)


def parameters_source(notebook: str, profile: str = DEFAULT_PROFILE) -> str:
    """The source of notebook `notebook`'s `parameters` cell: `profile`, `progress` and every knob of the notebook
    with its `profile` value, each under a comment line with its unit and meaning from `KEY_DOCS`."""
    values = {"profile": profile, "progress": True, **notebook_parameters(profile, notebook)}
    lines = []
    for key, value in values.items():
        lines += [f"# {KEY_DOCS[key]}", f"{key} = {format_value(value)}"]
    return "\n".join(lines)


# The repository (the package is installed editable, so its folder lies inside it). Relative paths in parameters
# (`data_root`, `checkpoint_root`) and the output folders are resolved against it, never against the current
# directory, so a command started from another folder reads and writes the same files as the notebooks.
REPO_ROOT = Path(__file__).resolve().parents[1]
# Where results/, cache/, runs/ and figures/ go when set (default: the repository), e.g. a scratch copy of the chain.
OUTPUT_ROOT_ENV = "SSL_ADV_OUTPUT_ROOT"


def repo_path(path: str | os.PathLike) -> Path:
    """`path` made absolute: a relative path is taken relative to the repository, not the current directory."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def output_root() -> Path:
    """The folder holding results/, cache/, runs/ and figures/: $SSL_ADV_OUTPUT_ROOT if set, else the repository."""
    env = os.environ.get(OUTPUT_ROOT_ENV)
    return repo_path(env) if env else REPO_ROOT


def output_dirs(profile: str, root: str | os.PathLike | None = None) -> dict[str, Path]:
    """Where a profile's results, figures, caches and executed notebooks go: absolute paths under `root` (default
    `output_root()`)."""
    base = Path(root) if root is not None else output_root()
    return {
        "results_dir": base / "results" / profile,
        "cache_dir": base / "cache" / profile,
        "figures_dir": base / "figures" if profile == DEFAULT_PROFILE else base / "figures" / profile,
        "runs_dir": base / "runs" / profile,
    }


# Every knob of every profile: its unit and meaning (one line each; shown by `describe` and in the notebooks).
KEY_DOCS: dict[str, str] = {
    "profile": "parameter set: smoke (tests), cpu (a laptop), paper (ImageNet, GPUs), paper-mini (paper's code, tiny)",
    "progress": "show progress bars (bool)",
    "seed": "master random seed (int); every job derives its own seed from it",
    "data_root": "folder holding FashionMNIST/raw/ (made by `make setup`)",
    "imagenet_root": "folder holding the ImageNet-style train/ and val/ class folders (task imagenet); None if unused",
    "transfer_root": "folder holding cifar-10-batches-py/ and cifar-100-python/ (tasks cifar10, cifar100)",
    "voc_root": "folder holding VOCdevkit/VOC2012 (dataset voc); None if unused",
    "checkpoint_root": "folder holding the official ResNet-50 checkpoint files (used when 01 trains nothing)",
    "verify_sha256": "check each official checkpoint's sha256 against the registry before reading it (bool)",
    "task": "in-domain classification task: fashion_mnist (smoke, cpu) or imagenet (paper)",
    "image_size": "side in pixels ImageNet images are centre-cropped and CIFAR resized to; None = native size",
    "device": "where models run: auto (cuda when present), cpu, cuda or cuda:N",
    "methods": "encoders compared: the supervised baseline and the seven SSL methods",
    "arch": "encoder architecture (resnet_micro/tiny/small trained here, resnet50 loaded)",
    "n_pretrain": "images used for pretraining (count; 0 = none, official checkpoints)",
    "epochs": "pretraining epochs (passes over n_pretrain images)",
    "batch_size": "images per optimizer step (pretraining) or per evaluation batch (05)",
    "lr": "peak learning rate of pretraining (AdamW, warm-up then cosine)",
    "augmentations": "augmentation families the SSL views use (crop, flip, intensity, blur, noise)",
    "n_probe_train": "training images of the linear probe (count)",
    "n_probe_test": "test images of notebook 01's quick probe (count)",
    "seeds": "training seeds of each method in seed_methods (count: seed, seed+1, ...; 1 with official checkpoints)",
    "seed_methods": "methods trained with every one of `seeds` seeds (the supervised one among them; [] = none)",
    "n_test": "test images scored for clean accuracy (count)",
    "probe_epochs": "L-BFGS iterations of the logistic-regression probe",
    "published_tolerance": "points below an official encoder's published linear top-1 that flag its row (02's guard)",
    "transfer_tasks": "transfer classification tasks (digits in cpu; cifar10 and cifar100 in paper)",
    "n_attack": "test points attacked per task (count; a prefix of notebook 02's test points)",
    "eps_linf": "L-inf radii, image units in [0, 1] (8/255 = eight grey levels per pixel)",
    "eps_l2": "L2 radii, image units (Euclidean norm of the whole perturbation)",
    "linf_attacks": "attacks run in the L-inf ball (autoattack: APGD-CE, APGD-T, FAB-T, Square in turn)",
    "l2_attacks": "white-box attacks run in the L2 ball",
    "steps": "gradient steps per attack restart",
    "restarts": "random restarts per attack (a point counts as fooled if any restart fools it)",
    "square_queries": "model queries the ensemble's black-box Square may spend per point (AutoAttack: 5000)",
    "n_targets": "target classes of the ensemble's APGD-T and FAB-T (AutoAttack: 9)",
    "n_ensemble": "points of each task the full AutoAttack ensemble attacks (count; the first ones)",
    "attack_batch": "points per attack batch at most: each draws its own random starts, and torchrun ranks share "
                    "batches",
    "attack_batch_multiple": "attack batches come as a multiple of this many near-equal ones (torchrun on a "
                             "divisor: equal loads)",
    "convergence_n": "points of each task the convergence check attacks (count)",
    "convergence_schedule": "[steps, restarts] budgets of the convergence check, increasing",
    "n_show": "adversarial examples drawn per model",
    "n_teach": "test points of the teaching section (count): the hand-written PGD is checked against the kernel on them",
    "teach_eps": "L-inf radius of the teaching section and the example figure, image units (8/255 = 8 grey levels)",
    "teach_steps": "PGD steps of the teaching section and the example figure",
    "n_finetune": "training images per task for (adversarial) fine-tuning (count)",
    "finetune_epochs": "epochs of full fine-tuning",
    "finetune_lr": "peak learning rate of (adversarial) fine-tuning (AdamW, cosine)",
    "adv_epochs": "epochs of adversarial fine-tuning",
    "adv_eps": "L-inf radius of the PGD examples used in adversarial fine-tuning, image units",
    "adv_steps": "PGD steps per batch in adversarial fine-tuning",
    "ref_eps": "L-inf radius at which regimes, factors, the convergence check and examples are shown, image units",
    "ablation_methods": "methods retrained for the four-factor ablation",
    "n_ablation": "pretraining (and probe) images of each ablation run (count)",
    "ablation_epochs": "pretraining epochs of the ablation's base run",
    "ablation_lr": "peak learning rate of the ablation's pretraining runs (AdamW, warm-up then cosine)",
    "ablation_batch_size": "batch size of the ablation's base run (the batch-size factor varies it)",
    "archs": "architecture levels of the ablation (first = base)",
    "epoch_checkpoints": "training-length levels: snapshots after these epochs of one run",
    "batch_sizes": "batch-size levels of the ablation",
    "dataset": "dense-task data: fashion_scenes (generated) or voc (Pascal VOC)",
    "canvas": "side of a dense-task image in pixels",
    "max_items": "most Fashion-MNIST items per generated scene",
    "n_train_scenes": "scenes the dense heads are trained on (count; 0 = all)",
    "n_test_scenes": "scenes the dense heads are attacked on (count; 0 = all)",
    "det_epochs": "training epochs of the detection head",
    "seg_epochs": "training epochs of the segmentation head",
    "head_lr": "peak learning rate of the dense heads (AdamW, warm-up then cosine)",
}
