"""Benchmark: peak host memory of walking an ImageNet-style folder, streamed (`ImageSet`) against held as one float32
tensor, as the number of images grows.

    .venv/bin/python bench/memory.py                         # 500 and 2,000 JPEGs at 224 px, resnet18 features
    .venv/bin/python bench/memory.py --n 1000,4000 --arch resnet50

A synthetic ImageFolder (JPEGs of 300-500 px, smooth colour fields with noise, as photos compress) is written once to
`--root` (default cache/bench/imagefolder). Each measurement runs in a fresh process, which loads the train split with
`utils.data.load_classification` (resize 256, centre crop 224) and extracts `--arch` features of every image with
`utils.probe.extract_features` (batch `--batch-size`), either from the ImageSet (decoded batch by batch by DataLoader workers) or after
decoding the whole set into one tensor (`--mode tensor`, what the suite did before). Printed: peak resident memory
of the process (ru_maxrss) and of its largest worker, and the seconds. Streamed, the peak should not grow with the
number of images beyond the features (n x 512 or n x 2048 floats); held, it grows by 0.6 MB per image at 224 px.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_folder(root: Path, n: int, classes: int = 10, seed: int = 0) -> None:
    """n JPEGs in `classes` class folders under root/train (val/ gets one image per class, as ImageFolder needs)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    have = len(list((root / "train").glob("*/*.JPEG"))) if (root / "train").is_dir() else 0
    for i in range(have, n):
        h, w = rng.integers(300, 500, 2)
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        img = (rng.uniform(0, 255, 3) * (0.5 + 0.5 * np.sin(6 * xx[..., None] + rng.uniform(0, 6, 3)))
               * (0.5 + 0.5 * np.cos(5 * yy[..., None])) + rng.normal(0, 8, (h, w, 3)))
        d = root / "train" / f"n{i % classes:08d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i:07d}.JPEG", quality=90)
    for c in range(classes):
        d = root / "val" / f"n{c:08d}"
        if not d.is_dir():
            d.mkdir(parents=True)
            Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(d / "0.JPEG")


MEASURE = """
import json, resource, sys, time, torch
sys.path.insert(0, sys.argv[1])
from utils.data import load_classification
from utils.imageset import materialize
from utils.models import build_encoder
from utils.probe import extract_features
root, n, size, arch, mode = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
enc = build_encoder(arch, in_chans=3, normalize=False)
t0 = time.perf_counter()
x, y = load_classification("imagenet", "train", imagenet_root=root, image_size=size, n=n)
if mode == "tensor":
    x = materialize(x)
f = extract_features(enc, x, batch_size=int(sys.argv[7]))
sec = time.perf_counter() - t0
print(json.dumps({"n": len(y), "features": list(f.shape), "seconds": round(sec, 1),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="500,2000", help="comma-separated image counts")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--arch", default="resnet18", help="resnet18, resnet50, or a small arch (resnet_micro)")
    ap.add_argument("--modes", default="stream,tensor")
    ap.add_argument("--batch-size", type=int, default=32,
                    help="feature batch (on a CPU the model's activations of one batch are host memory too)")
    ap.add_argument("--root", default=str(ROOT / "cache" / "bench" / "imagefolder"))
    args = ap.parse_args(argv)
    ns = [int(v) for v in args.n.split(",")]
    root = Path(args.root)
    t0 = time.perf_counter()
    write_folder(root, max(ns))
    print(f"folder: {root} ({max(ns)} JPEGs; written/checked in {time.perf_counter() - t0:.0f} s); {args.arch} "
          f"features at {args.size} px, batch {args.batch_size}")
    print(f"{'mode':>7s} {'images':>7s} {'seconds':>8s} {'peak MB':>8s} {'worker peak MB':>15s}")
    for mode in args.modes.split(","):
        for n in ns:
            out = subprocess.run([sys.executable, "-c", MEASURE, str(ROOT), str(root), str(n), str(args.size),
                                  args.arch, mode, str(args.batch_size)], capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-2000:])
                return 1
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{mode:>7s} {r['n']:7d} {r['seconds']:8.1f} {r['peak_mb']:8.0f} {r['worker_peak_mb']:15.0f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
