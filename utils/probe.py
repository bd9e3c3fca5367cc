"""Adapting a frozen encoder to a task: features, the linear probe, fine-tuning and adversarial fine-tuning.

Methods layer: imports models, checkpoints, attacks, runtime, store, parallel, config.

Linear-probe recipe (identical for all eight encoders): features of the frozen encoder in eval mode (float32),
standardized with the train features' mean/std, then multinomial logistic regression trained full-batch with L-BFGS
(`iters` iterations, L2 weight decay `wd`). The standardization is folded into the linear layer afterwards, so the
saved classifier is one module, encoder + head, taking [0, 1] images.

Fine-tuning recipe: all weights, AdamW with cosine decay (`runtime.warmup_cosine`, no warm-up), bf16 autocast where
the precision policy allows, BatchNorm statistics frozen; adversarial fine-tuning replaces each batch by L-inf PGD
examples from the attack kernel (`utils.attacks.pgd`, keep="last").
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Iterable

import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from utils import attacks
from utils.checkpoints import imagenet_fc_labels
from utils.config import FINETUNE_REGIMES, OWN_FC_REGIME
from utils.imageset import ImageSet, image_batches
from utils.models import Classifier, load_classifier, read_classifier, save_classifier
from utils.parallel import job_threads, local_workers, map_jobs
from utils.runtime import TrainingDivergedError, autocast, batches, warmup_cosine
from utils.store import (CorruptFileError, atomic_write_json, file_sha256, load_tensors, param_hash, points_digest,
                         quarantine, read_json_checked, save_tensors, weights_digest)


# ------------------------------------------------------------------------------------------------------ features

def _image_batches(images, batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(images, (torch.Tensor, ImageSet)):
        yield from image_batches(images, batch_size)
        return
    for batch in images:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def extract_features(encoder: nn.Module, images, *, batch_size: int = 512, device: str | torch.device = "cpu",
                     spatial: bool = False) -> torch.Tensor:
    """The one feature extractor: float32 features on the CPU of images in [0, 1] — a tensor [N, C, H, W], an
    `ImageSet` (decoded batch by batch by DataLoader workers: host memory holds the features, not the images) or an
    iterable of batches (tensors, or tuples whose first item is the images, e.g. a DataLoader of (x, y)).

    Pooled features [N, D] (`encoder(x)`), or with `spatial` the last feature map [N, D, h, w]
    (`encoder.feature_map(x)`, for dense heads). The encoder runs in eval mode in float32 and is returned in the
    mode it came in."""
    was_training = encoder.training
    encoder.eval().to(device)
    fn = encoder.feature_map if spatial else encoder
    try:
        out = [fn(xb.to(device).float()).float().cpu() for xb in _image_batches(images, batch_size)]
    finally:
        encoder.train(was_training)
    if not out:
        raise ValueError("no images to encode")
    return torch.cat(out)


# -------------------------------------------------------------------------------------------------- linear probe

def fit_logistic_regression(f_train: torch.Tensor, y_train: torch.Tensor, n_classes: int, *, iters: int = 100,
                            wd: float = 1e-4, seed: int = 0) -> nn.Linear:
    """Multinomial logistic regression on standardized features [N, D] -> an nn.Linear(D, K) acting on RAW features
    (the standardization is folded into its weight and bias). Full-batch L-BFGS, `iters` iterations, strong-Wolfe
    line search, penalty wd * ||W||^2; deterministic."""
    mean, std = f_train.mean(0), f_train.std(0).clamp_min(1e-6)
    z = (f_train - mean) / std
    torch.manual_seed(seed)
    lin = nn.Linear(z.shape[1], n_classes)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=iters, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(z), y_train) + wd * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        loss = opt.step(closure)
    if not torch.isfinite(torch.as_tensor(loss)):
        raise TrainingDivergedError(f"linear probe loss is {float(loss)}: the features contain NaN/inf or are "
                                    f"degenerate; check the encoder")
    head = nn.Linear(z.shape[1], n_classes)
    with torch.no_grad():
        head.weight.copy_(lin.weight / std)
        head.bias.copy_(lin.bias - (lin.weight / std) @ mean)
    return head


@torch.no_grad()
def accuracy(model: nn.Module, x, y=None, batch_size: int = 512, device: str = "cpu") -> float:
    """Top-1 accuracy in [0,1] of a classifier on images in [0,1] (float32 forward, eval mode); x a tensor or an
    `ImageSet` with labels y, or an iterable of (x, y) batches."""
    was_training = model.training
    model.eval().to(device)
    correct = total = 0
    if isinstance(x, (torch.Tensor, ImageSet)):
        it = zip(image_batches(x, batch_size), (y[i] for i in batches(len(x), batch_size)))
    else:
        it = x
    for xb, yb in it:
        correct += (model(xb.to(device)).argmax(1).cpu() == yb).sum().item()
        total += len(yb)
    model.train(was_training)
    return correct / max(total, 1)


def linear_probe(encoder: nn.Module, x_train, y_train, n_classes: int, *, iters: int = 100, wd: float = 1e-4,
                 seed: int = 0, device: str = "cpu", feature_cache: str | os.PathLike | None = None) -> Classifier:
    """Frozen `encoder` + a logistic-regression head fitted on its features -> Classifier ([0,1] images -> logits).

    `feature_cache`: a .safetensors path where the train features are stored and reused (keyed by the caller); a
    damaged file, or one holding features of another number of points, is moved aside and computed again.
    """
    f_train = None
    if feature_cache is not None and Path(feature_cache).is_file():
        try:
            f_train = load_tensors(feature_cache)[0].get("features")
            if f_train is None or len(f_train) != len(y_train):
                raise CorruptFileError(feature_cache, f"holds {0 if f_train is None else len(f_train)} features "
                                                      f"for {len(y_train)} labels")
        except CorruptFileError as e:
            quarantine(feature_cache, e.reason)
            f_train = None
    if f_train is None:
        f_train = extract_features(encoder, x_train, device=device)
        if feature_cache is not None:
            save_tensors(feature_cache, {"features": f_train})
    head = fit_logistic_regression(f_train, y_train, n_classes, iters=iters, wd=wd, seed=seed)
    clf = Classifier(encoder, head).eval()
    for p in clf.encoder.parameters():
        p.requires_grad_(False)
    return clf


# What notebook 02 fitted, recorded after its last classifier is written: {"method/task": file, sha256, key_hash}.
LINEAR_MANIFEST = "linear_manifest.json"


def classifier_path(cache_dir: str | os.PathLike, method: str, task: str, regime: str, key: dict) -> Path:
    """Where the classifier of one method, task and regime made with the parameters `key` is cached (the key's hash
    is in the name: classifiers of other parameters never overwrite it)."""
    return Path(cache_dir) / "classifiers" / f"{method}-{task}-{regime}-{param_hash(key)}.safetensors"


def _cached_classifier(path: Path, key: dict) -> tuple[Classifier, dict] | None:
    """The classifier at `path` with its metadata, when the file is intact and made with `key`; else None (a
    damaged file is moved aside)."""
    if not path.is_file():
        return None
    try:
        clf, meta = read_classifier(path)
        if meta.get("key_hash") != param_hash(key):
            raise CorruptFileError(path, "it was made with other parameters than its name says")
    except CorruptFileError as e:
        quarantine(path, e.reason)
        return None
    return clf, meta


def _linear_manifest(cache_dir: str | os.PathLike) -> tuple[Path, dict]:
    path = Path(cache_dir) / "classifiers" / LINEAR_MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no linear classifiers are recorded in {path}: run notebook 02 first "
                                f"(`python -m utils.pipeline --only 02`).")
    try:
        return path, read_json_checked(path, dict)["classifiers"]
    except (CorruptFileError, KeyError) as e:
        raise CorruptFileError(path, f"{getattr(e, 'reason', e)}: rerun notebook 02 "
                                     f"(`python -m utils.pipeline --only 02 --force`)") from None


def linear_classifier_paths(cache_dir: str | os.PathLike, methods, tasks) -> dict[tuple[str, str], Path]:
    """{(method, task): file} of the linear classifiers notebook 02 fitted last in `cache_dir` (its manifest), each
    checked against the sha256 recorded there. An error names the file or (method, task) and the fix."""
    manifest_path, entries = _linear_manifest(cache_dir)
    out = {}
    for m in methods:
        for t in tasks:
            entry = entries.get(f"{m}/{t}")
            if entry is None:
                raise LookupError(f"notebook 02 fitted no classifier for method {m!r} on task {t!r} (it fitted "
                               f"{sorted(entries)}; {manifest_path}): add them to 02's parameters and rerun 02")
            path = manifest_path.parent / entry["file"]
            if not path.is_file() or file_sha256(path) != entry["sha256"]:
                what = "is missing" if not path.is_file() else "differs from the sha256 notebook 02 recorded"
                quarantine(path, f"classifier {what}")
                raise CorruptFileError(path, f"{what}: rerun notebook 02 (`python -m utils.pipeline --only 02 "
                                             f"--force`), it fits the classifier again")
            out[(m, t)] = path
    return out


def linear_classifiers(cache_dir: str | os.PathLike, methods, tasks) -> dict[tuple[str, str], Classifier]:
    """{(method, task): classifier} of notebook 02 (see `linear_classifier_paths`), in eval mode."""
    return {k: load_classifier(p) for k, p in linear_classifier_paths(cache_dir, methods, tasks).items()}


def run_linear_eval(encoders: dict, tasks: list[dict], *, cache_dir: str | os.PathLike, iters: int = 100,
                    seed: int = 0, device: str = "cpu", progress: bool = False) -> pd.DataFrame:
    """Linear evaluation of every encoder on every task; returns a tidy DataFrame (one row per model x task).

    Each classifier is saved as one file `<cache_dir>/classifiers/<method>-<task>-linear-<key hash>.safetensors`
    (weights, metadata and their sha256); an intact one of the current parameters is reused, so a rerun after an
    interruption continues. Last, `classifiers/linear_manifest.json` records the files fitted here (with their
    sha256): what notebooks 03 and 04 read (`linear_classifiers`).
    """
    rows, fitted = [], {}
    jobs = [(m, t) for m in encoders for t in tasks]
    for method, task in tqdm(jobs, desc="linear probes", disable=not progress):
        encoder, _ = encoders[method]
        key = {"method": method, "task": task["task"], "encoder": weights_digest(encoder),
               "n_train": len(task["y_train"]), "iters": iters, "seed": seed}
        path = classifier_path(cache_dir, method, task["task"], "linear", key)
        t0 = time.perf_counter()
        hit = _cached_classifier(path, key)
        if hit is not None:
            clf = hit[0]
        else:
            clf = linear_probe(encoder, task["x_train"], task["y_train"], task["n_classes"], iters=iters, seed=seed,
                               device=device, feature_cache=Path(cache_dir) / "features" /
                               f"{method}-{task['task']}-{param_hash(key)}.safetensors")
            save_classifier(clf, path, {"arch": getattr(encoder, "arch", None), "n_classes": task["n_classes"],
                                        "method": method, "task": task["task"], "key": key,
                                        "key_hash": param_hash(key)})
        fitted[f"{method}/{task['task']}"] = {"file": path.name, "sha256": file_sha256(path),
                                               "key_hash": param_hash(key)}
        acc = accuracy(clf, task["x_test"], task["y_test"], device=device)
        rows.append({"model": method, "regime": "linear", "task": task["task"], "accuracy": acc,
                     "n": len(task["y_test"]), "n_train": len(task["y_train"]),
                     "seconds": round(time.perf_counter() - t0, 2)})
    atomic_write_json(Path(cache_dir) / "classifiers" / LINEAR_MANIFEST, {"classifiers": fitted})
    return pd.DataFrame(rows)


def quick_probe(encoders: dict[str, nn.Module], task: dict, *, seed: int = 0,
                device: str = "cpu") -> dict[str, float]:
    """{name: clean test accuracy} of a linear probe (`linear_probe`, `seed`) fitted on each encoder's features of
    the train images of `task` (a `utils.data.classification_task` dict), scored on its test images: notebook 01's
    quick check, before notebook 02's cached linear evaluation."""
    out = {}
    for name, enc in encoders.items():
        clf = linear_probe(enc.to(device), task["x_train"], task["y_train"], task["n_classes"], seed=seed,
                           device=device)
        out[name] = accuracy(clf, task["x_test"], task["y_test"], device=device)
    return out


# Flag of an own-classifier row that could not be scored: the task's class folders are no ILSVRC-2012 WordNet ids.
FC_UNSCORED = "fc_unscored"


def with_own_classifiers(table: pd.DataFrame, classifiers: dict[str, nn.Module], task: dict, *,
                         device: str = "cpu") -> pd.DataFrame:
    """`table` (notebook 02's, one row per model x task) plus one row per checkpoint's own ImageNet classifier
    (`classifiers[method]`: logits [N, 1000], `utils.encoders.official_classifiers`), regime `OWN_FC_REGIME`,
    scored on the same test points of the in-domain `task` (a `classification_task` dict) as the linear probes:
    each class folder's label is mapped to the classifier's output for its WordNet id (`imagenet_fc_labels`), so
    the accuracy is the usual 1000-way top-1 on those points. When the folder names are not WordNet ids the row's
    accuracy is NaN and its flag `fc_unscored`. No classifiers: `table` unchanged."""
    if not classifiers:
        return table
    labels = imagenet_fc_labels(task["classes"])
    rows = []
    for method, clf in classifiers.items():
        t0 = time.perf_counter()
        acc = float("nan") if labels is None else accuracy(clf, task["x_test"],
                                                           torch.tensor(labels)[task["y_test"]], device=device)
        rows.append({"model": method, "regime": OWN_FC_REGIME, "task": task["task"], "accuracy": acc,
                     "n": len(task["y_test"]), "n_train": None, "seconds": round(time.perf_counter() - t0, 2),
                     "flags": FC_UNSCORED if labels is None else ""})
    return pd.concat([table, pd.DataFrame(rows)], ignore_index=True)


# ----------------------------------------------------------------------------------------------------- fine-tuning

def finetune(clf: Classifier, x, y, *, epochs: int, lr: float = 1e-3, batch_size: int = 128, wd: float = 5e-4,
             seed: int = 0, adversarial: dict | None = None, device: str = "cpu", amp: bool = True,
             freeze_bn: bool = True, progress: bool = False, name: str = "model") -> tuple[Classifier, list[float]]:
    """Full fine-tuning of encoder + head (AdamW, cosine schedule, bf16 autocast where the precision policy allows);
    returns (model, mean loss per epoch).

    `freeze_bn` (default) keeps every BatchNorm in eval mode: its statistics stay those the linear head was fitted
    on, so fine-tuning starts from exactly the linear classifier. (With batch statistics, a transfer task such as the
    digits, 1,258 images = 20 steps, starts from shifted features and ended worse than the linear probe: clean
    accuracy 0.974 -> 0.840 in the cpu profile.)

    `adversarial={"eps": 4/255, "steps": 3}` turns it into PGD adversarial training (Madry et al.): each batch is
    replaced by L-inf PGD examples (random start, step 2.5*eps/steps, last iterate) crafted by the attack kernel
    against the current model in eval mode. The model is modified in place and returned in eval mode.
    """
    clf.to(device)
    for p in clf.parameters():
        p.requires_grad_(True)
    frozen_bn = [m for m in clf.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if freeze_bn else []
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=wd)
    sched = warmup_cosine(opt, max(epochs * math.ceil(len(x) / batch_size), 1), warmup=0.0, floor=0.0)
    history = []
    for epoch in range(epochs):
        total, seen = 0.0, 0
        groups = list(batches(len(x), batch_size, g, shuffle=True))
        images = image_batches(x, batch_size, order=torch.cat(groups))  # an ImageSet: decoded ahead by workers
        for idx, xb in tqdm(zip(groups, images), total=len(groups), desc=f"{name} epoch {epoch + 1}/{epochs}",
                            disable=not progress, leave=False):
            xb, yb = xb.to(device), y[idx].to(device)
            if adversarial:
                xb = attacks.pgd(clf, xb, yb, eps=adversarial["eps"], steps=adversarial["steps"], keep="last",
                                 amp="auto" if amp else "off", channels_last=False, fold_bn=False, generator=g)
            clf.train()
            for m in frozen_bn:
                m.eval()
            with autocast(device, amp):
                loss = F.cross_entropy(clf(xb).float(), yb)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(f"{name}: loss became {loss.item()} in fine-tuning epoch {epoch + 1}; "
                                            f"lower the learning rate (lr={lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        history.append(total / seen)
    clf.eval()
    for p in clf.parameters():
        p.requires_grad_(False)
    return clf, history


def adapted_classifier(linear_path: str | os.PathLike, x, y, *, regime: str, cache_dir: str | os.PathLike,
                       method: str, task: str, epochs: int, lr: float, batch_size: int = 128, seed: int = 0,
                       adv_eps: float = 4 / 255, adv_steps: int = 3, device: str = "cpu",
                       progress: bool = False) -> tuple[Classifier, dict]:
    """Start from the linear-probe classifier of notebook 02 and fine-tune all of it (`regime="finetuned"`) or
    adversarially fine-tune it (`regime="adv-finetuned"`: PGD L-inf `adv_eps`, `adv_steps` steps per batch).

    One recipe and budget for every encoder. Cached as safetensors keyed by the starting weights, the data and the
    recipe; returns (classifier in eval mode, info with loss history, seconds and whether it came from the cache).
    """
    if regime not in FINETUNE_REGIMES:
        raise ValueError(f"regime must be one of {FINETUNE_REGIMES}, got {regime!r}")
    start = load_classifier(linear_path)
    key = {"start": weights_digest(start), "points": points_digest(x, y), "regime": regime, "epochs": epochs,
           "lr": lr, "batch_size": batch_size, "seed": seed, "freeze_bn": True}
    if regime == "adv-finetuned":
        key.update(adv_eps=adv_eps, adv_steps=adv_steps)
    path = classifier_path(cache_dir, method, task, regime, key)
    hit = _cached_classifier(path, key)
    if hit is not None:
        return hit[0], {**hit[1], "from_cache": True}
    t0 = time.perf_counter()
    adversarial = {"eps": adv_eps, "steps": adv_steps} if regime == "adv-finetuned" else None
    clf, history = finetune(start, x, y, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                            adversarial=adversarial, device=device, progress=progress, name=f"{method}/{task}/{regime}")
    meta = {"arch": getattr(clf.encoder, "arch", None), "n_classes": clf.head.out_features, "method": method,
            "task": task, "regime": regime, "key": key, "key_hash": param_hash(key), "loss_history": history,
            "seconds": round(time.perf_counter() - t0, 1)}
    save_classifier(clf, path, meta)
    return clf, {**meta, "from_cache": False}


def adapt_all(methods: list[str], train: dict[str, tuple], *, cache_dir: str | os.PathLike, epochs: dict[str, int],
              lr: float, seed: int = 0, adv_eps: float = 4 / 255, adv_steps: int = 3, device: str = "cpu",
              progress: bool = False) -> tuple[dict, pd.DataFrame]:
    """Every method x task (`train[task] = (x, y)`) in the linear regime (notebook 02's classifier) and each regime
    of `epochs` ({"finetuned": e, "adv-finetuned": e}), one job per classifier and regime in worker processes on a
    CPU (longest first; each job seeds itself, so the worker count does not change the numbers).

    Returns (classifiers {(method, task, regime)}, a table with seconds, cache use and final loss per job)."""
    classifiers, jobs = {}, []
    linear_paths = linear_classifier_paths(cache_dir, methods, list(train))
    for m in methods:
        for t, (x, y) in train.items():
            linear_path = linear_paths[(m, t)]
            classifiers[(m, t, "linear")] = load_classifier(linear_path)
            for regime, n_epochs in epochs.items():
                jobs.append(dict(linear_path=linear_path, x=x, y=y, regime=regime, cache_dir=cache_dir, method=m,
                                 task=t, epochs=n_epochs, lr=lr, seed=seed, adv_eps=adv_eps, adv_steps=adv_steps,
                                 device=device))
    jobs.sort(key=lambda j: (j["regime"] != "adv-finetuned", -len(j["y"])))  # longest jobs first
    rows = []
    for j, (clf, info) in zip(jobs, map_jobs(adapted_classifier, jobs, workers=local_workers(device, len(jobs)),
                                             threads=job_threads(device), desc="fine-tuning", progress=progress)):
        classifiers[(j["method"], j["task"], j["regime"])] = clf
        rows.append({"model": j["method"], "task": j["task"], "regime": j["regime"], "seconds": info["seconds"],
                     "from_cache": info["from_cache"], "final_loss": info["loss_history"][-1]})
    return classifiers, pd.DataFrame(rows)
