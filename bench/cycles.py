"""Benchmark: how many PGD gradients cycle detection saves, on the suite's own classifiers, and that it changes nothing.

    .venv/bin/python bench/cycles.py                                    # cpu cache: linear vs adv-finetuned
    .venv/bin/python bench/cycles.py --classifiers cache/cpu/classifiers --methods supervised,simclr --n 256

For each classifier (notebook 02's `linear` probes, standard models, and notebook 04's `adv-finetuned` ones, robust
models; files of `cache/<profile>/classifiers`, so run the cpu chain first) and each PGD setting below, robust accuracy
over the eps grid runs twice on the same points and seed, without and with cycle detection (`cycles=False/True`); the
script checks that the robust masks and the returned points are identical and prints the gradients each run computed,
the points retired on a repeated iterate and the wall time of each run (the two runs are interleaved per classifier,
so a shared machine slows them alike).

Settings: "pgd-10" (03's headline: 10 steps of 2.5/10 eps), "pgd-100" (the convergence check's 100 steps of
2.5/100 eps) and "pgd-100 fixed eps/4" (100 steps of eps/4, the fixed large step of Doldo et al., CVPR 2025, under
which iterates cycle). Cycles need the iterate to return exactly, all pixels at once: with a step of 2.5/steps eps a
point crosses its ball in about 10 steps, so within 10 steps almost nothing can repeat.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.attacks import robust_accuracy  # noqa: E402
from utils.data import load_classification  # noqa: E402
from utils.models import read_classifier  # noqa: E402

SETTINGS = {"pgd-10": (10, None), "pgd-100": (100, None), "pgd-100 fixed eps/4": (100, 0.25)}


def classifiers(folder: Path, methods: list[str], task: str, regimes: list[str]) -> list[tuple[str, str, Path]]:
    """[(method, regime, newest matching file)] of the classifier cache `folder`."""
    found = []
    for regime in regimes:
        for m in methods:
            hits = sorted(folder.glob(f"{m}-{task}-{regime}-*.safetensors"))
            if not hits:
                raise SystemExit(f"no {m}-{task}-{regime}-*.safetensors in {folder}: run the cpu chain first "
                                 f"(make reproduce), or pass --classifiers")
            found.append((m, regime, max(hits, key=lambda p: p.stat().st_mtime)))
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classifiers", default=str(ROOT / "cache" / "cpu" / "classifiers"))
    ap.add_argument("--methods", default="supervised,simclr,byol,dino")
    ap.add_argument("--task", default="fashion_mnist")
    ap.add_argument("--regimes", default="linear,adv-finetuned")
    ap.add_argument("--n", type=int, default=256, help="test points per classifier")
    ap.add_argument("--eps", default="0,2,8", help="comma-separated linf radii, in units of 1/255")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"a subset of {list(SETTINGS)}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-root", default=str(ROOT / "data"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    grid = [float(e) / 255 for e in args.eps.split(",")]
    settings = [s.strip() for s in args.settings.split(",")]
    x, y = load_classification(args.task, "test", data_root=args.data_root, n=args.n, seed=0)
    paths = classifiers(Path(args.classifiers), args.methods.split(","), args.task, args.regimes.split(","))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; {args.task}, n={len(x)}, "
          f"linf eps*255={args.eps}, random start, first-fooling, bf16 steps (amp='auto'), float32 verdicts")
    print(f"{'classifier':42s} {'setting':20s} {'grads off':>10s} {'grads on':>9s} {'saved':>6s} {'exits':>6s} "
          f"{'s off':>6s} {'s on':>6s} same")
    totals: dict[tuple[str, str], list[int]] = {}
    all_same = True
    for method, regime, path in paths:
        model, _ = read_classifier(path)
        name = f"{method}-{regime}"
        for setting in settings:
            steps, rel = SETTINGS[setting]
            runs, secs = {}, {}
            for cyc in (False, True):
                t0 = time.perf_counter()
                runs[cyc] = robust_accuracy(model, x, y, eps_list=grid, steps=steps, rel_step=rel, cycles=cyc,
                                            return_adv="all", seed=0)
                secs[cyc] = time.perf_counter() - t0
            off, on = runs[False], runs[True]
            same = torch.equal(off.robust_mask, on.robust_mask) and all(
                torch.equal(off.x_adv[e], on.x_adv[e]) for e in off.x_adv)
            all_same &= same
            g_off, g_on = off.work["grads"], on.work["grads"]
            t = totals.setdefault((regime, setting), [0, 0])
            t[0], t[1] = t[0] + g_off, t[1] + g_on
            print(f"{name:42s} {setting:20s} {g_off:10d} {g_on:9d} {1 - g_on / g_off:6.1%} "
                  f"{on.work['cycle_exits']:6d} {secs[False]:6.1f} {secs[True]:6.1f} {'yes' if same else 'NO'}",
                  flush=True)
    print("\ngradients saved by cycle detection, all classifiers of a regime together:")
    for (regime, setting), (g_off, g_on) in totals.items():
        print(f"  {regime:14s} {setting:20s} {g_off:9d} -> {g_on:9d}  ({1 - g_on / g_off:.1%} saved)")
    print(f"identical robust masks and adversarial points with and without: {'PASS' if all_same else 'FAIL'}")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
