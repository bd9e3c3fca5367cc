"""What a card computes, in order: a measured timing probe and the estimate, the linear probe, the clean accuracy,
the AutoAttack ensemble over the eps grid with the masking check, the convergence check, the baseline (cached);
`build_card` runs them and writes the files (`utils.card.report`)."""
from __future__ import annotations

import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from utils import attacks
from utils.card.inputs import (CARD_VERSION, ESTIMATE_METHOD, ESTIMATE_POINTS, ESTIMATE_STEPS, FAB_PASSES,
                               SIZES, SQUARE_PASSES,
                               UNRELIABLE_FLAGS, CardError, CardSettings, adapt, load_card_data, load_card_encoder,
                               resolve_baseline)
from utils.card.report import write_card
from utils.config import SUPERVISED, output_dirs
from utils.models import Classifier
from utils.probe import accuracy, extract_features, fit_logistic_regression, linear_probe
from utils.robustness import BLACKBOX_TOLERANCE, KERNEL_VERSION, convergence_run
from utils.store import cached_json, cached_result, points_digest, weights_digest

CONVERGENCE_TOLERANCE = 0.01  # accuracy the strongest APGD-CE budget may lose before NOT_CONVERGED (convergence_run)


def probe_classifier(encoder: nn.Module, d: dict, s: CardSettings) -> Classifier:
    """The suite's linear probe of `encoder` on the card's training points."""
    return linear_probe(encoder, d["x_train"], d["y_train"], d["n_classes"], iters=s.probe_iters, seed=s.seed)


def autoattack(clf: nn.Module, x: torch.Tensor, y: torch.Tensor, s: CardSettings, **budget) -> attacks.RobustAccuracy:
    """The AutoAttack ensemble over the card's grid (eps 0 included), as the card runs it; `budget` overrides
    steps / n_targets / n_queries (the timing probe)."""
    opts = {"steps": s.steps, "restarts": s.restarts, "n_targets": s.n_targets, "n_queries": s.n_queries, **budget}
    return attacks.robust_accuracy(clf, x, y, eps_list=s.grid(), attack="autoattack", batch_size=s.batch_size,
                                   seed=s.seed, **opts)


def attack_rows(res: attacks.RobustAccuracy) -> list[dict]:
    """One row per eps of an ensemble's result: the worst-case accuracy, the accuracy left after each member
    (cumulative, as AutoAttack logs it; a point fooled at a smaller eps is credited to the member that fooled it
    there), the points each member fooled first, and the fraction only Square fooled (the masking check)."""
    sq = res.members.index("square") if "square" in res.members else None
    rows = []
    for j, eps in enumerate(res.eps):
        by = res.fooled_by[j]
        square_only = float((by == sq).float().mean()) if sq is not None else 0.0
        rows.append({"eps": eps, "eps_255": round(eps * 255, 4), "accuracy": res[eps],
                     "accuracy_after": {m: float(((by == attacks.NOT_FOOLED) | (by > k)).float().mean())
                                        for k, m in enumerate(res.members)},
                     "fooled_by": {m: int((by == k).sum()) for k, m in enumerate(res.members)},
                     "wrong_clean": int((by == attacks.WRONG_CLEAN).sum()), "square_only": square_only})
    return rows


def masking_flags(rows: list[dict]) -> list[str]:
    """AutoAttack's gradient-masking check (`utils.robustness.BLACKBOX_TOLERANCE`): Square alone fooled more than
    that fraction of the points at some eps."""
    return [attacks.flag(attacks.BLACKBOX_BEATS_WHITEBOX, f"at eps {r['eps_255']:g}/255 Square alone fooled "
                                                          f"{100 * r['square_only']:.1f} % of the points every "
                                                          f"white-box attack missed")
            for r in rows if r["square_only"] > BLACKBOX_TOLERANCE]


def convergence_check(clf: nn.Module, x: torch.Tensor, y: torch.Tensor, res: attacks.RobustAccuracy,
                      s: CardSettings, *, model: str, task: str) -> dict:
    """`utils.robustness.convergence_run` (APGD-CE over the schedule) on the first `convergence_n` points at the
    convergence eps, against the ensemble's worst case on the same points."""
    eps, n = s.conv_eps(), min(s.convergence_n, len(y))
    hits = [j for j, e in enumerate(res.eps) if abs(e - eps) < 1e-9]
    if not hits:
        raise CardError(f"convergence eps {eps * 255:g}/255 is not on the eps grid {[e * 255 for e in res.eps]}")
    reference = float(res.robust_mask[hits[0], :n].float().mean())
    rows = convergence_run(clf, x[:n], y[:n], model=model, task=task, eps=eps,
                           schedule=[tuple(b) for b in s.schedule], reference=reference, seed=s.seed,
                           tolerance=CONVERGENCE_TOLERANCE)
    flags = sorted({f for r in rows for f in r["flags"].split(";") if f})
    return {"attack": "apgd-ce", "norm": "linf", "eps": eps, "eps_255": round(eps * 255, 4), "n": n,
            "reference": reference, "strongest_minus_reference": rows[-1]["accuracy"] - reference,
            "tolerance": CONVERGENCE_TOLERANCE, "flags": flags,
            "converged": not any(attacks.flag_name(f) == attacks.NOT_CONVERGED for f in flags),
            "rows": [{"steps": r["steps"], "restarts": r["restarts"], "accuracy": r["accuracy"]} for r in rows]}


def evaluate(encoder: nn.Module, d: dict, s: CardSettings, timer: "Stages | None" = None) -> tuple:
    """(classifier, clean accuracy, ensemble result) of `encoder` on the card's data, each stage timed by `timer`."""
    timer = timer if timer is not None else Stages()
    with timer("linear probe"):
        clf = probe_classifier(encoder, d, s)
    with timer("clean accuracy"):
        clean = accuracy(clf, d["x_test"], d["y_test"])
    with timer("autoattack"):
        res = autoattack(clf, d["x_test"], d["y_test"], s)
    return clf, clean, res


def numbers(clean: float, res: attacks.RobustAccuracy, seconds: float) -> dict:
    """What the card keeps of an encoder it compares with: clean and worst-case robust accuracy per eps, flags."""
    rows = attack_rows(res)
    return {"clean_acc": clean, "robust_acc": [{"eps": r["eps"], "accuracy": r["accuracy"]} for r in rows],
            "flags": res.flags + masking_flags(rows), "seconds": round(seconds, 2)}


def baseline_numbers(encoder: nn.Module, d: dict, s: CardSettings, cache_dir: str | Path | None,
                     known: dict | None = None) -> dict:
    """The baseline's `numbers` (same probe, points, ensemble and seed as the card), cached in `cache_dir` by the
    baseline's weights, the points and the settings: cards of many encoders probe it once. `known`: numbers already
    computed (the card of the baseline itself), stored as they are."""
    def compute():
        if known is not None:
            return known
        t0 = time.perf_counter()
        _, clean, res = evaluate(encoder, d, s)
        return numbers(clean, res, time.perf_counter() - t0)

    if cache_dir is None:
        return {**compute(), "from_cache": False}
    key, name = _baseline_key(encoder, d, s), f"baseline-{d['task']}"
    hit = None if known is not None else cached_result(Path(cache_dir), name, key)
    if hit is not None:
        return {**hit, "from_cache": True}
    return {**cached_json(Path(cache_dir), name, key, compute, force=True), "from_cache": False}


class Stages:
    """Times the card's stages (`with stages("autoattack"): ...`) and moves a progress bar measured in estimated
    seconds: each finished stage adds its estimate, so the bar's ETA is the measured estimate."""

    def __init__(self, estimate: dict[str, float] | None = None, progress: bool = False):
        self.estimate, self.seconds, self._stage = dict(estimate or {}), {}, None
        total = max(1, round(sum(self.estimate.values())))
        self.bar = tqdm(total=total, unit="s", desc="card", disable=not progress, leave=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} estimated s "
                                   "[{elapsed}<{remaining}{postfix}]")

    def __call__(self, stage: str) -> "Stages":
        self._stage = stage
        return self

    def __enter__(self) -> "Stages":
        self.bar.set_postfix_str(self._stage)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> bool:
        stage = self._stage
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - self._t0, 2)
        self.bar.update(min(round(self.estimate.get(stage, 0.0)), self.bar.total - self.bar.n))
        return False

    def close(self) -> None:
        self.bar.update(self.bar.total - self.bar.n)
        self.bar.close()


def attack_passes(s: CardSettings, survive: list[float], members: bool = True, steps: int | None = None) -> float:
    """Forward + backward passes per test point an attack over the grid needs, when a fraction `survive[j]` of the
    points is still robust at eps j (j = 0: clean). APGD-CE (`steps`, default the card's) runs once on what the
    smaller ball left (`utils.attacks.api._attack_chunk`); with `members` APGD-T, FAB-T
    (FAB_PASSES a step) and Square (SQUARE_PASSES a query) follow on what APGD-CE left."""
    total, budget = 0.0, (steps or s.steps) * s.restarts
    for j in range(1, len(survive)):
        total += survive[j - 1] * budget
        if members:
            total += survive[j] * (s.n_targets * budget + s.n_targets * s.steps * FAB_PASSES
                                   + s.n_queries * SQUARE_PASSES)
    return total


def estimate_seconds(encoder: nn.Module, d: dict, s: CardSettings, *, baseline: bool) -> dict[str, float]:
    """Seconds each stage should take, from a short measured probe (`ESTIMATE_METHOD`). `baseline`: the baseline
    still has to be computed (not cached); it is assumed to cost what this encoder costs."""
    m = min(256, len(d["y_train"]))
    t0 = time.perf_counter()
    feats = extract_features(encoder, d["x_train"][:m])
    per_image = (time.perf_counter() - t0) / m
    t0 = time.perf_counter()
    head = fit_logistic_regression(feats, d["y_train"][:m], d["n_classes"], iters=s.probe_iters, seed=s.seed)
    fit = time.perf_counter() - t0  # L-BFGS's fixed iterations: about as long on all training points
    clf = Classifier(encoder, head).eval()
    n_test = len(d["y_test"])
    x, y = d["x_test"][:ESTIMATE_POINTS], d["y_test"][:ESTIMATE_POINTS]
    with warnings.catch_warnings():  # flags of a quick probe's classifier mean nothing
        warnings.simplefilter("ignore")
        for _ in range(2):  # the first run pays one-time costs (kernels made for each new batch shape): time the second
            t0 = time.perf_counter()
            quick = attacks.robust_accuracy(clf, x, y, eps_list=s.grid(), attack="apgd-ce", steps=ESTIMATE_STEPS,
                                            seed=s.seed)
            seconds = time.perf_counter() - t0
    survive = [quick[e] for e in s.grid()]
    per_pass = seconds / max(1.0, len(y) * attack_passes(s, survive, members=False, steps=ESTIMATE_STEPS))
    conv = survive[s.grid().index(s.conv_eps())] * sum(st * r for st, r in s.schedule)
    out = {"linear probe": per_image * len(d["y_train"]) + fit, "clean accuracy": per_image * n_test,
           "autoattack": attack_passes(s, survive) * n_test * per_pass,
           "convergence": conv * min(s.convergence_n, n_test) * per_pass}
    if baseline:
        out["baseline"] = out["linear probe"] + out["clean accuracy"] + out["autoattack"]
    return {k: round(v, 1) for k, v in out.items()}


def build_card(encoder: str, *, method: str | None = None, data_spec: str = "fashion_mnist",
               settings: CardSettings = SIZES["cpu"], out: str | Path | None = None, name: str | None = None,
               arch: str | None = None, weights: str | None = None, resize: int | None = None,
               profile: str = "cpu", suite_cache: str | Path | None = None, baseline: str = "auto",
               cache_dir: str | Path | None = None, data_root: str = "data", progress: bool = True,
               estimate_only: bool = False, command: str | None = None, log=None) -> tuple[dict, dict[str, Path]]:
    """Run everything a card needs and write `card.md`, `card.json`, `card.png` into `out` (default
    `results/cards/<name>-<task>`). Returns (the card as written to card.json, {"md", "json", "png": path}); with
    `estimate_only` the card holds only what was loaded and the estimate, and nothing is written.
    `cache_dir`: where the baseline's numbers are cached (default `cache/<profile>/cards`). `log(text)`: where the
    estimate and the summary go (default stderr). Refuses with CardError before any long computation."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    s, t_start = settings, time.perf_counter()
    if not s.eps or min(s.eps) <= 0:
        raise CardError(f"eps must be positive radii, got {list(s.eps)}")
    enc, enc_info = load_card_encoder(encoder, method, arch=arch, weights=weights, profile=profile,
                                      suite_cache=suite_cache)
    d = load_card_data(data_spec, n_train=s.n_train, n_test=s.n_test, seed=s.seed, image_size=s.image_size,
                       data_root=data_root)
    in_chans, size = int(d["x_test"].shape[1]), int(d["x_test"].shape[-1])
    enc, adapted = adapt(enc, in_chans, size, resize)
    name = name or enc_info["method"]
    base_path, base_note = resolve_baseline(baseline, d["task"], profile, suite_cache)
    base_enc, is_baseline = None, False
    if base_path is not None:
        base_enc, base_info = load_card_encoder(str(base_path), SUPERVISED, profile=profile)
        base_enc, _ = adapt(base_enc, in_chans, size, resize)
        if weights_digest(base_enc) == weights_digest(enc):
            base_enc, is_baseline, base_note = None, True, f"this encoder is the baseline ({base_note})"
    cache_dir = Path(cache_dir) if cache_dir is not None else output_dirs(profile)["cache_dir"] / "cards"
    if s.conv_eps() not in s.grid():
        raise CardError(f"--convergence-eps {s.conv_eps() * 255:g}/255 is not one of the eps {list(s.eps)}")

    t0 = time.perf_counter()
    cached = base_enc is not None and _baseline_cached(base_enc, d, s, cache_dir)
    est = estimate_seconds(enc, d, s, baseline=base_enc is not None and not cached)
    t_probe = round(time.perf_counter() - t0, 2)
    total = sum(est.values())
    log(f"robustness card of {name} on {data_spec}: {len(d['y_train'])} training / {len(d['y_test'])} test points, "
        f"AutoAttack L-inf eps {', '.join(f'{e * 255:g}/255' for e in s.eps)}, {s.steps} steps.\n"
        f"estimated time: about {_duration(total)} ({', '.join(f'{k} {v:.0f} s' for k, v in est.items())}); "
        f"{ESTIMATE_METHOD}, which took {t_probe:.1f} s.")
    if estimate_only:
        return {"name": name, "encoder": enc_info, "estimate_s": round(total, 1), "estimate_stages_s": est}, {}

    stages = Stages(est, progress)
    stages.seconds["timing probe"] = t_probe
    clf, clean, res = evaluate(enc, d, s, timer=stages)
    with stages("convergence"):
        conv = convergence_check(clf, d["x_test"], d["y_test"], res, s, model=name, task=d["task"])
    base = None
    if is_baseline:  # its numbers are the baseline's: cached for the cards of other encoders
        baseline_numbers(enc, d, s, cache_dir, known=numbers(clean, res, sum(stages.seconds[k] for k in (
            "linear probe", "clean accuracy", "autoattack"))))
    if base_enc is not None:
        with stages("baseline"):
            base = {"name": SUPERVISED, "note": base_note, "path": base_info["path"], "sha256": base_info["sha256"],
                    "arch": base_info["arch"], **baseline_numbers(base_enc, d, s, cache_dir)}
            base["gap"] = [{"eps": e, "gap": res[e] - b["accuracy"]} for e, b in zip(res.eps, base["robust_acc"])]
    card = assemble_card(name, enc, {**enc_info, **adapted}, d, s, clean, res, conv, base, base_note)
    out = Path(out) if out is not None else output_dirs(profile)["results_dir"].parent / "cards" / \
        f"{name}-{d['task']}"
    stages.close()
    paths = write_card(card, out, settings=s, est=est, stages=stages.seconds, t_start=t_start, profile=profile,
                       command=command)
    log(f"card written to {paths['md']}: clean {clean:.3f}, robust {_pairs(card['robust_acc'])}"
        f"{' -- UNRELIABLE: ' + ', '.join(card['unreliable_because']) if card['unreliable'] else ''}")
    return card, paths


def assemble_card(name: str, enc: nn.Module, enc_info: dict, d: dict, s: CardSettings, clean: float,
                  res: attacks.RobustAccuracy, conv: dict, base: dict | None, base_note: str) -> dict:
    """The card's fields (card.json without timing and provenance, which `write_card` adds)."""
    rows = attack_rows(res)
    flags = list(dict.fromkeys(res.flags + masking_flags(rows) + conv["flags"]))
    names = sorted({attacks.flag_name(f) for f in flags})
    card = {
        "card_version": CARD_VERSION, "name": name,
        "encoder": {**enc_info, "weights_digest": weights_digest(enc)},
        "data": {"spec": d["spec"], "task": d["task"], "n_train": len(d["y_train"]), "n_test": len(d["y_test"]),
                 "n_classes": d["n_classes"], "image_shape": list(d["x_test"].shape[1:]), "seed": s.seed,
                 "train_points_sha256": points_digest(d["x_train"], d["y_train"]),
                 "test_points_sha256": points_digest(d["x_test"], d["y_test"])},
        "evaluation": {"regime": "linear", "probe": "frozen encoder (eval mode, float32) + multinomial logistic "
                                                    "regression on standardized features, full-batch L-BFGS",
                       "probe_iters": s.probe_iters, "seed": s.seed},
        "threat_model": "Linf", "norm": res.norm,
        "eps_units": "image units: pixels in [0, 1], L-inf; eps_255 = eps x 255 (grey levels)",
        "clean_acc": clean,
        "attack": {"name": res.attack, "members": res.members, "norm": res.norm, "steps": res.steps,
                   "restarts": res.restarts, "n_targets": s.n_targets, "n_queries": s.n_queries, "n": res.n,
                   "batch_size": s.batch_size, "seed": s.seed},
        "robust_acc": rows,
        "convergence": conv,
        "baseline": base, "baseline_note": base_note,
        "flags": flags, "flag_names": names,
        "unreliable": any(n in UNRELIABLE_FLAGS for n in names),
        "unreliable_because": [n for n in names if n in UNRELIABLE_FLAGS],
    }
    return card


def _baseline_key(encoder: nn.Module, d: dict, s: CardSettings) -> dict:
    """What the baseline's numbers depend on: its weights, the points, the probe and attack settings."""
    settings = {k: v for k, v in asdict(s).items() if k not in ("convergence_n", "convergence_eps", "schedule")}
    return {"card": CARD_VERSION, "kernel": KERNEL_VERSION, "weights": weights_digest(encoder),
            "train": points_digest(d["x_train"], d["y_train"]), "test": points_digest(d["x_test"], d["y_test"]),
            "settings": settings}


def _baseline_cached(encoder: nn.Module, d: dict, s: CardSettings, cache_dir: Path) -> bool:
    return cached_result(cache_dir, f"baseline-{d['task']}", _baseline_key(encoder, d, s)) is not None


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _pairs(rows: list[dict]) -> str:
    return ", ".join(f"{r['accuracy']:.3f} at {r['eps_255']:g}/255" for r in rows if r["eps"] > 0)
