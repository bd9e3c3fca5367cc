"""Evaluation regimes on top of an encoder: linear probe (frozen), full fine-tuning, adversarial fine-tuning.

Linear-probe recipe (identical for all eight encoders): features of the frozen encoder in eval mode (float32),
standardized with the train features' mean/std, then multinomial logistic regression trained full-batch with L-BFGS
(`probe_epochs` iterations, L2 weight decay `wd`). The standardization is folded into the linear layer afterwards, so the
saved classifier is one module, encoder + head, taking [0, 1] images.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from utils.models import Classifier, build_encoder, weights_digest
from utils.results import atomic_save, atomic_write_json, param_hash
from utils.ssl import TrainingDivergedError  # one error type for every training loop


def amp_context(device: str | torch.device = "cpu", enabled: bool = True):
    """bfloat16 autocast where it pays (CPUs with bf16 matrix units, CUDA); a no-op context otherwise."""
    dev = torch.device(device).type
    return torch.autocast(dev, dtype=torch.bfloat16, enabled=enabled and dev in ("cpu", "cuda"))


def batches(n: int, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = False):
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


@torch.no_grad()
def extract_features(encoder: nn.Module, x, batch_size: int = 512, device: str = "cpu") -> torch.Tensor:
    """Features [N, D] float32 of images x [N,C,H,W] in [0,1] (or a DataLoader of (x, y)), encoder in eval mode."""
    was_training = encoder.training
    encoder.eval().to(device)
    out = []
    if isinstance(x, torch.Tensor):
        for idx in batches(len(x), batch_size):
            out.append(encoder(x[idx].to(device)).float().cpu())
    else:
        for xb, _ in x:
            out.append(encoder(xb.to(device)).float().cpu())
    encoder.train(was_training)
    return torch.cat(out)


def fit_logistic_regression(f_train: torch.Tensor, y_train: torch.Tensor, n_classes: int, *, iters: int = 100,
                            wd: float = 1e-4, seed: int = 0) -> nn.Linear:
    """Multinomial logistic regression on standardized features [N, D] -> an nn.Linear(D, K) acting on RAW features
    (the standardization is folded into its weight and bias)."""
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
    """Top-1 accuracy in [0,1] of a classifier on images in [0,1] (float32 forward, eval mode)."""
    was_training = model.training
    model.eval().to(device)
    correct = total = 0
    it = ((x[i], y[i]) for i in batches(len(x), batch_size)) if isinstance(x, torch.Tensor) else x
    for xb, yb in it:
        correct += (model(xb.to(device)).argmax(1).cpu() == yb).sum().item()
        total += len(yb)
    model.train(was_training)
    return correct / max(total, 1)


def linear_probe(encoder: nn.Module, x_train, y_train, n_classes: int, *, iters: int = 100, wd: float = 1e-4,
                 seed: int = 0, device: str = "cpu", feature_cache: str | os.PathLike | None = None) -> Classifier:
    """Frozen `encoder` + a logistic-regression head fitted on its features -> Classifier ([0,1] images -> logits).

    `feature_cache`: a .safetensors path where the train features are stored and reused (keyed by the caller).
    """
    from safetensors.torch import load_file, save_file

    if feature_cache is not None and Path(feature_cache).is_file():
        f_train = load_file(str(feature_cache))["features"]
    else:
        f_train = extract_features(encoder, x_train, device=device)
        if feature_cache is not None:
            atomic_save(lambda tmp: save_file({"features": f_train.contiguous()}, tmp), feature_cache)
    if len(f_train) != len(y_train):
        raise ValueError(f"{len(f_train)} cached features for {len(y_train)} labels: delete {feature_cache}")
    head = fit_logistic_regression(f_train, y_train, n_classes, iters=iters, wd=wd, seed=seed)
    clf = Classifier(encoder, head).eval()
    for p in clf.encoder.parameters():
        p.requires_grad_(False)
    return clf


def save_classifier(clf: Classifier, path: str | os.PathLike, meta: dict) -> Path:
    """Classifier weights as safetensors + a JSON sidecar (`meta` must say how to rebuild it: arch, n_classes)."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in clf.state_dict().items()}
    path = atomic_save(lambda tmp: save_file(state, tmp), path)
    atomic_write_json(Path(path).with_suffix(".json"), meta)
    return path


def load_classifier(path: str | os.PathLike) -> Classifier:
    """Rebuild a classifier saved by `save_classifier` (small-ResNet encoders; eval mode, float32)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier {path} is missing: run notebook 02 first "
                                f"(`python -m utils.pipeline --only 02`).")
    meta = json.loads(path.with_suffix(".json").read_text())
    encoder = build_encoder(meta["arch"])
    clf = Classifier(encoder, nn.Linear(encoder.feat_dim, meta["n_classes"]))
    clf.load_state_dict(load_file(str(path)), strict=True)
    return clf.eval()


def finetune(clf: Classifier, x, y, *, epochs: int, lr: float = 1e-3, batch_size: int = 128, wd: float = 5e-4,
             seed: int = 0, adversarial: dict | None = None, device: str = "cpu", amp: bool = True,
             freeze_bn: bool = True, progress: bool = False, name: str = "model") -> tuple[Classifier, list[float]]:
    """Full fine-tuning of encoder + head (AdamW, cosine schedule, bf16 autocast); returns (model, loss per epoch).

    `freeze_bn` (default) keeps every BatchNorm in eval mode: its statistics stay those the linear head was fitted
    on, so fine-tuning starts from exactly the linear classifier. (With batch statistics, a transfer task such as the
    digits, 1,258 images = 20 steps, starts from shifted features and ended worse than the linear probe: clean
    accuracy 0.974 -> 0.840 in the cpu profile.)

    `adversarial={"eps": 4/255, "steps": 3}` turns it into PGD adversarial training (Madry et al.): each batch is
    replaced by L-inf PGD adversarials (random start, step 2.5*eps/steps) crafted against the current model in eval
    mode. The model is modified in place and returned in eval mode.
    """
    from tqdm.auto import tqdm

    clf.to(device)
    for p in clf.parameters():
        p.requires_grad_(True)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=wd)
    steps_total = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps_total, 1))
    history = []
    for epoch in range(epochs):
        total, seen = 0.0, 0
        it = list(batches(len(x), batch_size, g, shuffle=True))
        for idx in tqdm(it, desc=f"{name} epoch {epoch + 1}/{epochs}", disable=not progress, leave=False):
            xb, yb = x[idx].to(device), y[idx].to(device)
            if adversarial:
                xb = pgd_train_batch(clf, xb, yb, eps=adversarial["eps"], steps=adversarial["steps"], generator=g,
                                     amp=amp, device=device)
            clf.train()
            if freeze_bn:
                for m in clf.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
            with amp_context(device, amp):
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


def pgd_train_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int,
                    generator: torch.Generator | None = None, amp: bool = True, device: str = "cpu") -> torch.Tensor:
    """L-inf PGD examples for adversarial training (last iterate; training needs hard examples, not verdicts)."""
    model.eval()
    step = 2.5 * eps / max(steps, 1)
    noise = torch.rand(x.shape, generator=generator).to(x.device) * 2 - 1
    delta = (noise * eps).requires_grad_(True)
    for _ in range(steps):
        with amp_context(device, amp):
            loss = F.cross_entropy(model((x + delta).clamp(0, 1)).float(), y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta += step * grad.sign()
            delta.clamp_(-eps, eps)
            delta.copy_((x + delta).clamp(0, 1) - x)
    return (x + delta).detach().clamp(0, 1)


def run_linear_eval(encoders: dict, tasks: list[dict], *, cache_dir: str | os.PathLike, iters: int = 100,
                    seed: int = 0, device: str = "cpu", progress: bool = False):
    """Linear evaluation of every encoder on every task; returns a tidy DataFrame (one row per model x task).

    Each classifier is saved as `<cache_dir>/classifiers/<method>-<task>.safetensors` (+ JSON with its parameters);
    a classifier whose sidecar matches the current parameters is reused, so a rerun after an interruption continues.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    rows = []
    jobs = [(m, t) for m in encoders for t in tasks]
    for method, task in tqdm(jobs, desc="linear probes", disable=not progress):
        encoder, info = encoders[method]
        key = {"method": method, "task": task["task"], "encoder": weights_digest(encoder),
               "n_train": len(task["y_train"]), "iters": iters, "seed": seed}
        path = classifier_path(cache_dir, method, task["task"])
        meta_path = path.with_suffix(".json")
        t0 = time.perf_counter()
        if path.is_file() and meta_path.is_file() and json.loads(meta_path.read_text()).get("key_hash") == \
                param_hash(key):
            clf = load_classifier(path)
        else:
            clf = linear_probe(encoder, task["x_train"], task["y_train"], task["n_classes"], iters=iters, seed=seed,
                               device=device, feature_cache=Path(cache_dir) / "features" /
                               f"{method}-{task['task']}-{param_hash(key)}.safetensors")
            arch = getattr(encoder, "arch", None)
            save_classifier(clf, path, {"arch": arch, "n_classes": task["n_classes"], "method": method,
                                        "task": task["task"], "key": key, "key_hash": param_hash(key)})
        acc = accuracy(clf, task["x_test"], task["y_test"], device=device)
        rows.append({"model": method, "regime": "linear", "task": task["task"], "accuracy": acc,
                     "n": len(task["y_test"]), "n_train": len(task["y_train"]),
                     "seconds": round(time.perf_counter() - t0, 2)})
    return pd.DataFrame(rows)


def classifier_path(cache_dir: str | os.PathLike, method: str, task: str, regime: str = "linear") -> Path:
    return Path(cache_dir) / "classifiers" / f"{method}-{task}-{regime}.safetensors"


# --------------------------------------------------------------------------------------------------------------
# Attack evaluation of classifiers (notebook 03 and 04): sweeps over an eps grid, cached per classifier and setting.

def attack_sweep(clf: nn.Module, x: torch.Tensor, y: torch.Tensor, *, model: str, task: str, attack: str, norm: str,
                 eps_list: list[float], steps: int, restarts: int = 1, regime: str = "linear", seed: int = 0,
                 cache_dir: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = 256) -> dict:
    """Robust accuracy of `clf` over `eps_list` for one attack, as {"rows": tidy rows, "mask": [[0/1]*n]*len(eps)}.

    Cached as JSON under `<cache_dir>/attacks/` keyed by the classifier's weights, the points and the attack settings,
    so an interrupted sweep over many models resumes at the first unfinished one.
    """
    from utils.evaluate import sharded_robust_accuracy
    from utils.results import cached_json

    def compute():
        # sharded across torch.distributed ranks when launched by torchrun; the same numbers in one process
        res = sharded_robust_accuracy(clf.to(device), x, y, eps_list=eps_list, attack=attack, norm=norm,
                                      steps=steps, restarts=restarts, batch_size=batch_size, seed=seed)
        rows = res.to_rows(model=model, regime=regime, task=task)
        return {"rows": rows, "mask": res.robust_mask.to(torch.uint8).tolist()}

    if cache_dir is None:
        return compute()
    return cached_json(*_sweep_cache(clf, x, y, model=model, task=task, attack=attack, norm=norm, eps_list=eps_list,
                                     steps=steps, restarts=restarts, seed=seed, regime=regime, cache_dir=cache_dir),
                       compute)


def _sweep_cache(clf, x, y, *, model, task, attack, norm, eps_list, steps, restarts, seed, regime, cache_dir):
    """(folder, name, key) of one sweep's cache entry (see `attack_sweep`)."""
    key = {"weights": weights_digest(clf), "points": _points_digest(x, y), "attack": attack, "norm": norm,
           "eps": list(eps_list), "steps": steps, "restarts": restarts, "seed": seed, "model": model, "task": task,
           "regime": regime}
    return Path(cache_dir) / "attacks", f"{model}-{task}-{regime}-{attack}-{norm}", key


def _points_digest(x: torch.Tensor, y: torch.Tensor) -> str:
    import hashlib

    h = hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes())
    h.update(y.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def transfer_sweep(source: nn.Module, targets: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *,
                   source_name: str, task: str, eps_list: list[float], steps: int, seed: int = 0,
                   regime: str = "linear", device: str = "cpu") -> list[dict]:
    """Transfer attack: L-inf PGD adversarials crafted on `source`, scored (float32 verdict) on each target.

    A target point counts as robust when the target classifies the transferred adversarial correctly.
    """
    from utils import attacks

    rows = []
    for eps in eps_list:
        torch.manual_seed(seed)
        x_adv = x if eps == 0 else attacks.pgd(source, x, y, eps=eps, norm="linf", steps=steps)
        for name, target in targets.items():
            acc = accuracy(target, x_adv, y, device=device)
            rows.append({"model": name, "regime": regime, "task": task, "attack": f"transfer-pgd<{source_name}",
                         "norm": "linf", "eps": eps, "steps": steps, "restarts": 1, "accuracy": acc, "n": len(y),
                         "flags": ""})
    return rows


def square_check(clf: nn.Module, x: torch.Tensor, y: torch.Tensor, *, model: str, task: str, eps: float,
                 n_queries: int, whitebox_accuracy: float, seed: int = 0, tolerance: float = 0.01) -> dict:
    """Black-box Square attack (torchattacks, L-inf, margin loss, 1 restart) as a gradient-masking check.

    Returns one tidy row; its flags contain "blackbox-beats-whitebox" when Square's robust accuracy is lower than the
    white-box attack's on the same points by more than `tolerance` (a sign that gradients are masked).
    """
    import torchattacks

    clf.eval()
    atk = torchattacks.Square(clf, norm="Linf", eps=eps, n_queries=n_queries, n_restarts=1, loss="margin", seed=seed)
    x_adv = atk(x, y)
    with torch.no_grad():
        robust = (clf(x_adv.float()).float().argmax(1) == y) & (clf(x).float().argmax(1) == y)
    acc = robust.float().mean().item()
    flags = "blackbox-beats-whitebox" if acc < whitebox_accuracy - tolerance else ""
    return {"model": model, "regime": "linear", "task": task, "attack": "square", "norm": "linf", "eps": eps,
            "steps": n_queries, "restarts": 1, "accuracy": acc, "n": len(y), "flags": flags}


def _cached_job(fn, cache_dir, name: str, key: dict, **kwargs):
    """fn(**kwargs), cached as JSON under `cache_dir` (no cache when None); a module-level function, so that worker
    processes can run it."""
    if cache_dir is None:
        return fn(**kwargs)
    from utils.results import cached_json

    return cached_json(cache_dir, name, key, lambda: fn(**kwargs))


def run_transfer(classifiers: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *, task: str,
                 eps_list: list[float], steps: int, supervised: str = "supervised", seed: int = 0,
                 cache_dir: str | os.PathLike | None = None, device: str = "cpu", progress: bool = False) -> list[dict]:
    """Transfer attacks in both directions: PGD L-inf crafted on the supervised classifier and scored on every SSL
    one, and crafted on each SSL classifier and scored on the supervised one. One job per source (in worker
    processes on a CPU), each cached under `<cache_dir>/transfer/`. Returns tidy rows."""
    from utils.evaluate import local_workers, map_jobs

    sup = classifiers[supervised]
    plan = [(supervised, {m: c for m, c in classifiers.items() if m != supervised})] + \
           [(m, {supervised: sup}) for m in classifiers if m != supervised]
    jobs = []
    for source, targets in plan:
        key = {"source": weights_digest(classifiers[source]), "targets": {t: weights_digest(c) for t, c in
                                                                           targets.items()},
               "points": _points_digest(x, y), "eps": list(eps_list), "steps": steps, "seed": seed, "task": task}
        jobs.append(dict(fn=transfer_sweep, cache_dir=None if cache_dir is None else Path(cache_dir) / "transfer",
                         name=f"{source}-{task}", key=key, source=classifiers[source], targets=targets, x=x, y=y,
                         source_name=source, task=task, eps_list=eps_list, steps=steps, seed=seed, device=device))
    out = map_jobs(_cached_job, jobs, workers=local_workers(device, len(jobs)), desc="transfer", progress=progress)
    return [r for rows in out for r in rows]


def grid_accuracy(masks: dict, key: tuple, eps_list: list[float], eps: float, n: int | None = None) -> float:
    """Robust accuracy at `eps` on the first `n` points, read from the masks of `run_attack_grid` (key = (model,
    task, attack, norm); `eps_list` = the sweep's eps grid)."""
    grid = sorted(float(e) for e in eps_list)
    hits = [i for i, e in enumerate(grid) if abs(e - eps) < 1e-9]
    if not hits:
        raise ValueError(f"eps={eps:.6g} is not on the attacked grid {grid}: add it to the eps list of the sweep")
    return float(masks[key][hits[0], :n].float().mean())


def run_square(classifiers: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *, task: str, eps: float,
               n_queries: int, whitebox_accuracy: dict[str, float], seed: int = 0,
               cache_dir: str | os.PathLike | None = None, device: str = "cpu", progress: bool = False) -> list[dict]:
    """`square_check` for every classifier (one job each, in worker processes on a CPU), cached under
    `<cache_dir>/square/`. `whitebox_accuracy[model]`: the white-box robust accuracy on the same points and eps."""
    from utils.evaluate import local_workers, map_jobs

    jobs = []
    for m, clf in classifiers.items():
        key = {"weights": weights_digest(clf), "points": _points_digest(x, y), "eps": eps, "queries": n_queries,
               "seed": seed, "task": task, "whitebox": whitebox_accuracy[m]}
        jobs.append(dict(fn=square_check, cache_dir=None if cache_dir is None else Path(cache_dir) / "square",
                         name=f"{m}-{task}", key=key, clf=clf, x=x, y=y, model=m, task=task, eps=eps,
                         n_queries=n_queries, whitebox_accuracy=whitebox_accuracy[m], seed=seed))
    return map_jobs(_cached_job, jobs, workers=local_workers(device, len(jobs)), desc="square", progress=progress)


def bootstrap_gap(mask_ssl: torch.Tensor, mask_sup: torch.Tensor, n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float, float]:
    """Paired bootstrap over test points of acc(SSL) - acc(supervised); masks are 0/1 [n] on the same points.

    Returns (gap, low, high) with a percentile interval at `level`.
    """
    a, b = mask_ssl.float(), mask_sup.float()
    if a.shape != b.shape:
        raise ValueError(f"masks must cover the same points, got {tuple(a.shape)} and {tuple(b.shape)}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(a), (n_boot, len(a)), generator=g)
    gaps = a[idx].mean(1) - b[idx].mean(1)
    lo, hi = torch.quantile(gaps, torch.tensor([(1 - level) / 2, (1 + level) / 2])).tolist()
    return (a.mean() - b.mean()).item(), lo, hi


def attack_inputs(params: dict, cache_dir: str | os.PathLike):
    """What notebook 03 attacks, built from its parameters: (classifiers {(model, task)}, points {task: (x, y)},
    settings). Shared by the notebook and the torchrun command (`utils.evaluate`), so both run the same grid."""
    from utils import data

    tasks = [params.get("task", "fashion_mnist"), params["transfer_task"]]
    points = {t: data.load_classification(t, "test", data_root=params["data_root"], n=params["n_attack"],
                                          seed=params["seed"]) for t in tasks}
    classifiers = {(m, t): load_classifier(classifier_path(cache_dir, m, t)) for m in params["methods"] for t in tasks}
    settings = [{"attack": a, "norm": "linf", "eps_list": params["eps_linf"]} for a in params["linf_attacks"]] + \
               [{"attack": a, "norm": "l2", "eps_list": params["eps_l2"]} for a in params["l2_attacks"]]
    return classifiers, points, settings


def run_attack_grid(classifiers: dict[tuple[str, str], nn.Module], points: dict[str, tuple], settings: list[dict],
                    *, steps: int, restarts: int, seed: int = 0, regime: str = "linear",
                    cache_dir: str | os.PathLike | None = None, device: str = "cpu", progress: bool = False):
    """Every classifier x every attack setting. `classifiers[(model, task)]`, `points[task] = (x, y)`,
    `settings = [{"attack": "pgd", "norm": "linf", "eps_list": [...]}, ...]` (FGSM always runs 1 step, 1 restart).

    Returns (tidy DataFrame, masks) with `masks[(model, task, attack, norm)]` a 0/1 tensor [len(eps), n].
    """
    import pandas as pd

    from utils.evaluate import local_workers, map_jobs
    from utils.results import cached_result

    jobs = []
    for model, task in classifiers:
        x, y = points[task]
        for s in settings:
            one_step = s["attack"] == "fgsm"
            jobs.append(dict(clf=classifiers[(model, task)], x=x, y=y, model=model, task=task, attack=s["attack"],
                             norm=s["norm"], eps_list=s["eps_list"], steps=1 if one_step else steps,
                             restarts=1 if one_step else restarts, regime=regime, seed=seed, cache_dir=cache_dir,
                             device=device))
    # what is cached is read here; the rest runs in worker processes (one per core on a CPU)
    outs = [None if cache_dir is None else
            cached_result(*_sweep_cache(**{k: v for k, v in j.items() if k != "device"})) for j in jobs]
    todo = [i for i, o in enumerate(outs) if o is None]
    if progress and len(todo) < len(jobs):
        print(f"attacks ({regime}): {len(jobs) - len(todo)} of {len(jobs)} sweeps read from the cache")
    done = map_jobs(attack_sweep, [jobs[i] for i in todo], workers=local_workers(device, len(todo)),
                    desc=f"attacks ({regime})", progress=progress)
    for i, o in zip(todo, done):
        outs[i] = o
    rows, masks = [], {}
    for j, out in zip(jobs, outs):
        rows.extend(out["rows"])
        masks[(j["model"], j["task"], j["attack"], j["norm"])] = torch.tensor(out["mask"], dtype=torch.uint8)
    return pd.DataFrame(rows), masks


def gap_table(masks: dict, eps_lists: dict[str, list[float]], *, attack: str = "pgd", supervised: str = "supervised",
              n_boot: int = 1000, seed: int = 0):
    """SSL-minus-supervised gap with paired bootstrap CIs for one attack: rows model, task, norm, eps, gap, lo, hi."""
    import pandas as pd

    rows = []
    for (model, task, atk, norm), m in masks.items():
        if atk != attack or model == supervised:
            continue
        sup = masks[(supervised, task, atk, norm)]
        for j, eps in enumerate(eps_lists[norm]):
            gap, lo, hi = bootstrap_gap(m[j], sup[j], n_boot=n_boot, seed=seed)
            rows.append({"model": model, "task": task, "attack": atk, "norm": norm, "eps": eps, "gap": gap,
                         "lo": lo, "hi": hi, "n": m.shape[1]})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------
# The three regimes of notebook 04: linear (frozen), fine-tuned, adversarially fine-tuned.

def adapted_classifier(linear_path: str | os.PathLike, x, y, *, regime: str, cache_dir: str | os.PathLike,
                       method: str, task: str, epochs: int, lr: float, batch_size: int = 128, seed: int = 0,
                       adv_eps: float = 4 / 255, adv_steps: int = 3, device: str = "cpu",
                       progress: bool = False) -> tuple[Classifier, dict]:
    """Start from the linear-probe classifier of notebook 02 and fine-tune all of it (`regime="finetuned"`) or
    adversarially fine-tune it (`regime="adv-finetuned"`: PGD L-inf `adv_eps`, `adv_steps` steps per batch).

    One recipe and budget for every encoder. Cached as safetensors keyed by the starting weights, the data and the
    recipe; returns (classifier in eval mode, info with loss history, seconds and whether it came from the cache).
    """
    if regime not in ("finetuned", "adv-finetuned"):
        raise ValueError(f"regime must be 'finetuned' or 'adv-finetuned', got {regime!r}")
    start = load_classifier(linear_path)
    key = {"start": weights_digest(start), "points": _points_digest(x, y), "regime": regime, "epochs": epochs,
           "lr": lr, "batch_size": batch_size, "seed": seed, "freeze_bn": True}
    if regime == "adv-finetuned":
        key.update(adv_eps=adv_eps, adv_steps=adv_steps)
    path = classifier_path(cache_dir, method, task, regime)
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key_hash") == param_hash(key):
            return load_classifier(path), {**meta, "from_cache": True}
    t0 = time.perf_counter()
    adversarial = {"eps": adv_eps, "steps": adv_steps} if regime == "adv-finetuned" else None
    clf, history = finetune(start, x, y, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                            adversarial=adversarial, device=device, progress=progress, name=f"{method}/{task}/{regime}")
    meta = {"arch": getattr(clf.encoder, "arch", None), "n_classes": clf.head.out_features, "method": method,
            "task": task, "regime": regime, "key": key, "key_hash": param_hash(key), "loss_history": history,
            "seconds": round(time.perf_counter() - t0, 1)}
    save_classifier(clf, path, meta)
    return clf, {**meta, "from_cache": False}


REGIMES = ["linear", "finetuned", "adv-finetuned"]
