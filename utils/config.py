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

import copy
import os
from pathlib import Path

METHODS = ["supervised", "simclr", "mocov2", "byol", "swav", "dino", "barlowtwins", "vicreg"]
SSL_METHODS = [m for m in METHODS if m != "supervised"]
AUGMENTATIONS = ["crop", "flip", "intensity", "blur", "noise"]
SUPERVISED = "supervised"

# How a classifier is adapted from a frozen encoder (notebooks 02-04), and the one regime of the dense tasks (05).
REGIMES = ["linear", "finetuned", "adv-finetuned"]
FINETUNE_REGIMES = REGIMES[1:]
DENSE_REGIME = "frozen_encoder"
# What the `metric` column of the dense tasks' tidy table names (the value sits in `accuracy`).
METRIC_MAP = "map50"
METRIC_MIOU = "miou"
METRIC_PIXEL_ACC = "pixel_acc"

_COMMON = {
    "seed": 0,
    "data_root": "data",
    "checkpoint_root": "checkpoints",  # paper profile: where the official ResNet-50 files lie
    "device": "cpu",
}

# Which common knobs each notebook takes (only those it uses; a notebook not listed takes them all).
NOTEBOOK_COMMON_KEYS: dict[str, tuple[str, ...]] = {
    "01": ("seed", "data_root", "checkpoint_root", "device", "methods"),  # 01 alone loads the official checkpoints
    "02": ("seed", "data_root", "device", "methods"),
    "03": ("seed", "data_root", "device", "methods"),
    "04": ("seed", "data_root", "device", "methods"),
    "05": ("seed", "data_root", "device", "methods"),
}

PROFILES: dict[str, dict[str, dict]] = {
    "smoke": {
        "common": {**_COMMON, "methods": METHODS},
        "01": {"arch": "resnet_micro", "n_pretrain": 512, "epochs": 1, "batch_size": 128, "lr": 1e-3,
               "augmentations": AUGMENTATIONS, "n_probe_train": 512, "n_probe_test": 256},
        "02": {"n_probe_train": 512, "n_test": 128, "probe_epochs": 20, "transfer_task": "digits"},
        "03": {"n_attack": 128, "transfer_task": "digits", "eps_linf": [0, 2 / 255, 8 / 255, 64 / 255],
               "eps_l2": [0, 0.5, 2.0], "linf_attacks": ["fgsm", "pgd", "cw", "apgd-ce", "apgd-dlr", "autoattack"],
               "l2_attacks": ["pgd"], "steps": 3, "restarts": 1, "square_queries": 20, "n_targets": 3,
               "n_ensemble": 64,
               "ref_eps": 2 / 255, "convergence_n": 32, "convergence_schedule": [[3, 1], [6, 1], [6, 2]],
               "n_show": 2, "n_teach": 100, "teach_eps": 8 / 255, "teach_steps": 10},
        "04": {"transfer_task": "digits", "n_finetune": 256, "finetune_epochs": 1, "finetune_lr": 3e-4,
               "adv_epochs": 1, "adv_eps": 4 / 255, "adv_steps": 2, "n_attack": 128,
               "eps_linf": [0, 2 / 255, 8 / 255], "ref_eps": 2 / 255, "steps": 3,
               "ablation_methods": ["simclr"], "n_ablation": 256, "ablation_epochs": 1,
               "archs": ["resnet_micro", "resnet_tiny"], "epoch_checkpoints": [1, 2], "batch_sizes": [32, 64, 128]},
        "05": {"dataset": "fashion_scenes", "voc_root": None, "canvas": 64, "max_items": 4, "n_train_scenes": 64,
               "n_test_scenes": 16, "det_epochs": 1, "seg_epochs": 1, "head_lr": 2e-3, "eps_linf": [0, 8 / 255],
               "steps": 2, "batch_size": 16},
    },
    "cpu": {
        "common": {**_COMMON, "methods": METHODS},
        "01": {"arch": "resnet_tiny", "n_pretrain": 30000, "epochs": 2, "batch_size": 64, "lr": 5e-3,
               "augmentations": AUGMENTATIONS, "n_probe_train": 5000, "n_probe_test": 2000},
        "02": {"n_probe_train": 10000, "n_test": 1000, "probe_epochs": 100, "transfer_task": "digits"},
        "03": {"n_attack": 1000, "transfer_task": "digits",
               "eps_linf": [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255], "eps_l2": [0, 0.25, 0.5, 1.0, 2.0],
               "linf_attacks": ["fgsm", "pgd", "cw", "apgd-ce", "apgd-dlr", "autoattack"], "l2_attacks": ["pgd"],
               "steps": 10, "restarts": 1, "square_queries": 500, "n_targets": 3, "n_ensemble": 100,
               "ref_eps": 4 / 255,
               "convergence_n": 100, "convergence_schedule": [[10, 1], [50, 1], [100, 1], [100, 5]], "n_show": 2,
               "n_teach": 100, "teach_eps": 8 / 255, "teach_steps": 10},
        "04": {"transfer_task": "digits", "n_finetune": 5000, "finetune_epochs": 2, "finetune_lr": 3e-4,
               "adv_epochs": 2, "adv_eps": 4 / 255, "adv_steps": 3, "n_attack": 1000,
               "eps_linf": [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255], "ref_eps": 2 / 255, "steps": 10,
               "ablation_methods": ["simclr", "barlowtwins"], "n_ablation": 5000, "ablation_epochs": 2,
               "archs": ["resnet_tiny", "resnet_small"], "epoch_checkpoints": [1, 2, 4], "batch_sizes": [64, 128, 256]},
        "05": {"dataset": "fashion_scenes", "voc_root": None, "canvas": 64, "max_items": 4, "n_train_scenes": 1000,
               "n_test_scenes": 128, "det_epochs": 4, "seg_epochs": 6, "head_lr": 2e-3,
               "eps_linf": [0, 2 / 255, 4 / 255, 8 / 255], "steps": 5, "batch_size": 32},
    },
    "paper": {
        "common": {**_COMMON, "methods": METHODS, "device": "cuda", "data_root": "/datasets/imagenet",
                   "checkpoint_root": "/checkpoints"},
        "01": {"arch": "resnet50", "n_pretrain": 0, "epochs": 0, "batch_size": 256, "lr": 0.0,
               "augmentations": AUGMENTATIONS, "n_probe_train": 50000, "n_probe_test": 10000},
        "02": {"n_probe_train": 100000, "n_test": 50000, "probe_epochs": 100, "transfer_task": "cifar10"},
        "03": {"n_attack": 5000, "transfer_task": "cifar10",
               "eps_linf": [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255], "eps_l2": [0, 0.25, 0.5, 1.0, 2.0],
               "linf_attacks": ["fgsm", "pgd", "cw", "apgd-ce", "apgd-dlr", "autoattack"],
               "l2_attacks": ["pgd", "apgd-ce"], "steps": 100, "restarts": 5, "square_queries": 5000, "n_targets": 9,
               "n_ensemble": 5000,
               "ref_eps": 4 / 255, "convergence_n": 1000, "convergence_schedule": [[10, 1], [50, 1], [100, 1], [100, 5]],
               "n_show": 2, "n_teach": 100, "teach_eps": 4 / 255, "teach_steps": 10},
        "04": {"transfer_task": "cifar10", "n_finetune": 100000, "finetune_epochs": 20, "finetune_lr": 1e-4,
               "adv_epochs": 10, "adv_eps": 4 / 255, "adv_steps": 10, "n_attack": 2000,
               "eps_linf": [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255], "ref_eps": 2 / 255, "steps": 50,
               "ablation_methods": ["mocov2", "dino"], "n_ablation": 100000, "ablation_epochs": 100,
               "archs": ["resnet50", "vit_small_patch16_224"], "epoch_checkpoints": [100, 200, 800],
               "batch_sizes": [256, 1024, 4096]},
        "05": {"dataset": "voc", "voc_root": "/datasets/voc", "canvas": 512, "max_items": 4, "n_train_scenes": 0,
               "n_test_scenes": 0, "det_epochs": 20, "seg_epochs": 20, "head_lr": 1e-3,
               "eps_linf": [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255], "steps": 20, "batch_size": 8},
    },
}

DEFAULT_PROFILE = "cpu"


def notebook_parameters(profile: str, notebook: str) -> dict:
    """Parameters to inject into notebook `notebook` ("01".."05") for `profile`; includes `profile` itself."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    p = PROFILES[profile]
    common = NOTEBOOK_COMMON_KEYS.get(notebook, tuple(p["common"]))
    params = {"profile": profile, **{k: copy.deepcopy(p["common"][k]) for k in common},
              **copy.deepcopy(p.get(notebook, {}))}
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
    "profile": "which parameter set: smoke (tests), cpu (a laptop), paper (ImageNet, GPUs)",
    "progress": "show progress bars (bool)",
    "seed": "master random seed (int); every job derives its own seed from it",
    "data_root": "folder holding FashionMNIST/raw (smoke, cpu) or the ImageNet folder (paper)",
    "checkpoint_root": "folder holding the official ResNet-50 checkpoint files (paper)",
    "device": "where models run: cpu, cuda or cuda:N",
    "methods": "encoders compared: the supervised baseline and the seven SSL methods",
    "arch": "encoder architecture (resnet_micro/tiny/small trained here, resnet50 loaded)",
    "n_pretrain": "images used for pretraining (count; 0 = none, official checkpoints)",
    "epochs": "pretraining epochs (passes over n_pretrain images)",
    "batch_size": "images per optimizer step (pretraining) or per evaluation batch (05)",
    "lr": "peak learning rate of pretraining (AdamW, warm-up then cosine)",
    "augmentations": "augmentation families the SSL views use (crop, flip, intensity, blur, noise)",
    "n_probe_train": "training images of the linear probe (count)",
    "n_probe_test": "test images of notebook 01's quick probe (count)",
    "n_test": "test images scored for clean accuracy (count)",
    "probe_epochs": "L-BFGS iterations of the logistic-regression probe",
    "transfer_task": "transfer classification task (digits in cpu, cifar10 in paper)",
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
    "archs": "architecture levels of the ablation (first = base)",
    "epoch_checkpoints": "training-length levels: snapshots after these epochs of one run",
    "batch_sizes": "batch-size levels of the ablation",
    "dataset": "dense-task data: fashion_scenes (generated) or voc (Pascal VOC)",
    "voc_root": "folder holding VOCdevkit/ (paper); None elsewhere",
    "canvas": "side of a dense-task image in pixels",
    "max_items": "most Fashion-MNIST items per generated scene",
    "n_train_scenes": "scenes the dense heads are trained on (count; 0 = all)",
    "n_test_scenes": "scenes the dense heads are attacked on (count; 0 = all)",
    "det_epochs": "training epochs of the detection head",
    "seg_epochs": "training epochs of the segmentation head",
    "head_lr": "peak learning rate of the dense heads (AdamW, warm-up then cosine)",
}
