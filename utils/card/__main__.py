"""`python -m utils.card --encoder PATH_OR_NAME --method M --data SPEC [--eps ...] [--out DIR]`: see
`utils.card` and `python -m utils.card --help`."""
from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from fractions import Fraction

from utils.card.inputs import DATA_SPECS, SIZES, CardError
from utils.card.run import build_card


def parse_eps(text: str) -> tuple[float, ...]:
    """"1/255,4/255" or "0.0039,0.0157" -> radii in image units."""
    try:
        return tuple(float(Fraction(t.strip())) for t in text.split(",") if t.strip())
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"eps must be a comma list such as 1/255,4/255 or 0.004,0.016, "
                                         f"got {text!r}") from None


def parse_schedule(text: str) -> tuple[tuple[int, int], ...]:
    """"10x1,50x1,100x5" -> ((10, 1), (50, 1), (100, 5)): (steps, restarts) budgets, increasing."""
    try:
        return tuple((int(a), int(b)) for a, b in (t.split("x") for t in text.split(",") if t.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"schedule must look like 10x1,50x1,100x5, got {text!r}") from None


# option -> field of CardSettings
SETTINGS_OPTIONS = {"n_train": int, "n_test": int, "steps": int, "restarts": int, "n_targets": int,
                    "n_queries": int, "probe_iters": int, "convergence_n": int, "batch_size": int, "seed": int,
                    "image_size": int}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m utils.card", description="A robustness card of a frozen encoder: linear probe, clean "
        "accuracy, AutoAttack (L-inf) over an eps grid, masking and convergence checks, the suite's supervised "
        "baseline where there is one. Writes card.md, card.json and card.png.")
    ap.add_argument("--encoder", required=True, help="a checkpoint file or folder (official layouts), a "
                    ".safetensors file, suite:METHOD (the suite's trained encoder of --profile) or timm:NAME with "
                    "--weights")
    ap.add_argument("--method", help="the encoder's method (a key of utils.checkpoints.REGISTRY for official "
                    "files: picks layout and normalization); for other encoders a label (default: from the file)")
    ap.add_argument("--data", required=True, help=DATA_SPECS)
    ap.add_argument("--eps", type=parse_eps, help="L-inf radii, e.g. 1/255,2/255,4/255,8/255 (default)")
    ap.add_argument("--out", help="output folder (default results/cards/<name>-<task>)")
    ap.add_argument("--size", choices=sorted(SIZES), default="cpu", help="preset sizes and budgets (default cpu: "
                    "fits 3 minutes for a resnet_tiny encoder on 2 cores); the options below override them")
    for opt, kind in SETTINGS_OPTIONS.items():
        ap.add_argument("--" + opt.replace("_", "-"), type=kind, help=f"default: the --size preset's {opt}")
    ap.add_argument("--convergence-eps", type=lambda t: parse_eps(t)[0], help="eps of the convergence check "
                    "(default: the middle eps)")
    ap.add_argument("--schedule", type=parse_schedule, help="convergence budgets (default 10x1,50x1,100x1,100x5)")
    ap.add_argument("--arch", help="torchvision ResNet of an official checkpoint (default resnet50)")
    ap.add_argument("--weights", help="local weights of a timm:NAME encoder")
    ap.add_argument("--resize", type=int, help="resize images inside the model to this size for the encoder")
    ap.add_argument("--name", help="the card's name (default: the method)")
    ap.add_argument("--profile", default="cpu", help="the suite profile whose encoders suite:M and the baseline "
                    "are (default cpu)")
    ap.add_argument("--suite-cache", help="the suite's cache folder holding encoders/ (default cache/<profile>)")
    ap.add_argument("--baseline", default="auto", help="auto (the suite's supervised encoder, fashion_mnist and "
                    "digits), none, or a supervised encoder file")
    ap.add_argument("--cache", help="where the baseline's numbers are cached (default cache/<profile>/cards)")
    ap.add_argument("--data-root", default="data", help="folder holding FashionMNIST/raw (default data)")
    ap.add_argument("--estimate-only", action="store_true", help="print the measured time estimate and stop")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    overrides = {k: getattr(args, k) for k in [*SETTINGS_OPTIONS, "eps", "convergence_eps", "schedule"]
                 if getattr(args, k) is not None}
    settings = replace(SIZES[args.size], **overrides)
    try:
        build_card(args.encoder, method=args.method, data_spec=args.data, settings=settings, out=args.out,
                   name=args.name, arch=args.arch, weights=args.weights, resize=args.resize, profile=args.profile,
                   suite_cache=args.suite_cache, baseline=args.baseline, cache_dir=args.cache,
                   data_root=args.data_root, progress=not args.no_progress, estimate_only=args.estimate_only,
                   command=shlex.join(["python", "-m", "utils.card", *argv]))
    except CardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
