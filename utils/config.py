"""The profiles as data (`smoke`, `cpu`, `paper`), the names every layer shares, and what each knob means.

Base layer: imports nothing from `utils`. One code path for every profile: a profile only changes parameters.

`PROFILES[name]["common"]` holds knobs every notebook reads; `PROFILES[name]["NN"]` the knobs of notebook `NN`.
`notebook_parameters(profile, "03")` is what the chain runner injects into a notebook's `parameters` cell; the
defaults written in each notebook's `parameters` cell are the `cpu` values, so a notebook opened in JupyterLab runs
as-is in the default profile. `KEY_DOCS[key]` gives every knob's unit and meaning.
"""
from __future__ import annotations

import copy

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

PROFILES: dict[str, dict[str, dict]] = {
    "smoke": {
        "common": {**_COMMON, "methods": METHODS},
        "01": {"arch": "resnet_micro", "n_pretrain": 512, "epochs": 1, "batch_size": 128, "lr": 1e-3,
               "augmentations": AUGMENTATIONS, "n_probe_train": 512, "n_probe_test": 256},
        "02": {"n_probe_train": 512, "n_test": 128, "probe_epochs": 20, "transfer_task": "digits"},
        "03": {"n_attack": 128, "transfer_task": "digits", "eps_linf": [0, 2 / 255, 8 / 255, 64 / 255],
               "eps_l2": [0, 0.5, 2.0], "linf_attacks": ["fgsm", "pgd", "cw", "apgd-ce", "apgd-dlr"],
               "l2_attacks": ["pgd"], "steps": 3, "restarts": 1, "n_square": 32, "square_eps": 8 / 255,
               "square_queries": 20, "n_show": 2},
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
               "linf_attacks": ["fgsm", "pgd", "cw", "apgd-ce", "apgd-dlr"], "l2_attacks": ["pgd"], "steps": 10,
               "restarts": 1, "n_square": 200, "square_eps": 8 / 255, "square_queries": 200, "n_show": 2},
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
               "linf_attacks": ["fgsm", "pgd", "cw", "apgd-ce", "apgd-dlr"], "l2_attacks": ["pgd", "apgd-ce"],
               "steps": 100, "restarts": 5, "n_square": 1000, "square_eps": 4 / 255, "square_queries": 5000,
               "n_show": 2},
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
    params = {"profile": profile, **copy.deepcopy(p["common"]), **copy.deepcopy(p.get(notebook, {}))}
    return params


def output_dirs(profile: str) -> dict[str, str]:
    """Where a profile's results, figures, caches and executed notebooks go (relative to the repository root)."""
    return {
        "results_dir": f"results/{profile}",
        "cache_dir": f"cache/{profile}",
        "figures_dir": "figures" if profile == DEFAULT_PROFILE else f"figures/{profile}",
        "runs_dir": f"runs/{profile}",
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
    "linf_attacks": "white-box attacks run in the L-inf ball",
    "l2_attacks": "white-box attacks run in the L2 ball",
    "steps": "gradient steps per attack restart",
    "restarts": "random restarts per attack (a point counts as fooled if any restart fools it)",
    "n_square": "points attacked by the black-box Square check (count)",
    "square_eps": "L-inf radius of the Square check, image units",
    "square_queries": "model queries Square may spend per point",
    "n_show": "adversarial examples drawn per model",
    "n_finetune": "training images per task for (adversarial) fine-tuning (count)",
    "finetune_epochs": "epochs of full fine-tuning",
    "finetune_lr": "peak learning rate of (adversarial) fine-tuning (AdamW, cosine)",
    "adv_epochs": "epochs of adversarial fine-tuning",
    "adv_eps": "L-inf radius of the PGD examples used in adversarial fine-tuning, image units",
    "adv_steps": "PGD steps per batch in adversarial fine-tuning",
    "ref_eps": "L-inf radius at which regimes and factors are compared, image units",
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
