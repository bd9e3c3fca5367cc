"""Benchmark: torchattacks against `utils.attacks.robust_accuracy` on the same model, images and eps grid.

    .venv/bin/python bench/attacks.py                                   # CPU: PGD, small ResNet on Fashion-MNIST
    .venv/bin/python bench/attacks.py --attack autoattack --n 500       # CPU: AutoAttack (standard) vs our ensemble
    .venv/bin/python bench/attacks.py --archs resnet_micro,resnet_tiny,resnet_small --seeds 0,1,2   # PGD strength
    .venv/bin/python bench/attacks.py --device cuda --arch resnet50 --size 224   # GPU: float32 and bfloat16
    .venv/bin/python bench/attacks.py --background 2                    # CPU, beside a 2-thread training job
    .venv/bin/python bench/attacks.py --table --n 10000                 # cost table: points x steps, ours only

`--attack autoattack`: torchattacks' `AutoAttack(version="standard")` (APGD-CE, APGD-T, FAB-T, Square 5,000 queries;
torchattacks' default 10 steps each, 9 target classes) run once per eps, against `robust_accuracy(attack="autoattack")`
with the same steps, targets and queries walking the grid once (each member on the survivors of the previous ones,
the eps cascade, float32 verdicts). Done when >= 5x faster and at most +0.5 points weaker at every eps.

Both sides run linf PGD with the same steps, step alpha = rel_step * eps (rel_step = 2.5 / steps) and a random start.
torchattacks runs once per eps on every point (it accepts only eps > 0, so eps = 0 is the clean accuracy) and returns
the last iterate; `robust_accuracy` walks the grid once, attacks only the points still robust, keeps any fooling
iterate, and uses bf16 autocast where the hardware supports it. The time of each side includes its accuracy forward.
The sides run interleaved, chunk by chunk (`--batch-size` points), taking turns to go first, so that a machine shared
with other jobs slows them alike: the speed ratio of one run is what counts, not the absolute seconds. Both sides run
on one CPU thread by default (`--threads`): with torch's two OpenMP threads on a 2-core machine that other jobs share,
the same run measured anywhere from 1.3x to 3.1x; with one thread, 3.6x to 4x.

Models:
- CPU (`--arch resnet_tiny`, default): utils.models.build_encoder("resnet_tiny") + linear head in a Classifier,
  trained 2 epochs on Fashion-MNIST train (Adam); the weights are cached in cache/bench/ as safetensors, so a rerun
  skips training. Images: `--n` points of a seeded subset of the test split.
- GPU (`--arch resnet50`): torchvision resnet50 with an ImageNet Normalize layer inside, BRIEFLY TRAINED from random
  init: `--train-steps` (default 200) Adam steps of 128 Fashion-MNIST train images upsampled to `--size` and repeated
  to 3 channels (bf16 autocast where supported), not cached. Attacked images: test images prepared the same way.
  A random-init resnet50 predicts almost the same class everywhere and is nearly impossible to fool, which would time
  an unrealistic case; with `--train-steps 0` it is used anyway, labelled with its own clean predictions.
  These numbers time the kernel; they say nothing about the robustness of an ImageNet resnet50.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.attacks import robust_accuracy  # noqa: E402
from utils.data import load_fashion_mnist  # noqa: E402
from utils.models import IMAGENET_MEAN, IMAGENET_STD, Classifier, Normalize, build_encoder  # noqa: E402
from utils.store import atomic_save  # noqa: E402

CACHE = ROOT / "cache" / "bench"


def train_small(arch: str, epochs: int, data_root: Path, seed: int = 0, batch_size: int = 256,
                progress: bool = True) -> nn.Module:
    """`arch` encoder + linear head trained `epochs` epochs on Fashion-MNIST train, cached as safetensors."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(seed)
    enc = build_encoder(arch)
    model = Classifier(enc, nn.Linear(enc.feat_dim, 10))
    path = CACHE / f"{arch}_fashion_{epochs}ep_seed{seed}.safetensors"
    if path.is_file():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    x, y = load_fashion_mnist(data_root, "train")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    steps = epochs * (len(x) // batch_size)
    from tqdm.auto import tqdm
    bar = tqdm(total=steps, desc=f"train {arch}", disable=not progress)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(len(x) // batch_size):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x[idx]).float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    atomic_save(lambda tmp: save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp), path)
    return model


def resnet50_imagenet() -> nn.Module:
    """torchvision resnet50, random init, with the ImageNet normalization as its first layer ([0, 1] inputs)."""
    from torchvision.models import resnet50

    torch.manual_seed(0)
    return nn.Sequential(Normalize(IMAGENET_MEAN, IMAGENET_STD), resnet50(weights=None, num_classes=10))


def to_rgb(x: torch.Tensor, size: int) -> torch.Tensor:
    """Fashion-MNIST [N,1,28,28] -> [N,3,size,size] in [0, 1] (bilinear upsampling, gray repeated to 3 channels)."""
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return x.repeat(1, 3, 1, 1)


def train_resnet50(size: int, steps: int, data_root: Path, device: str, batch_size: int = 128,
                   progress: bool = True) -> nn.Module:
    """resnet50 trained `steps` Adam steps on upsampled Fashion-MNIST (a brief training; not cached)."""
    from tqdm.auto import tqdm

    model = resnet50_imagenet().to(device).to(memory_format=torch.channels_last)
    if steps == 0:
        return model.eval()
    x, y = load_fashion_mnist(data_root, "train", n=steps * batch_size, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    use_bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    model.train()
    for i in tqdm(range(steps), desc="train resnet50", disable=not progress):
        xb = to_rgb(x[i * batch_size:(i + 1) * batch_size].to(device), size)
        with torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16, enabled=use_bf16):
            loss = F.cross_entropy(model(xb.contiguous(memory_format=torch.channels_last)).float(),
                                   y[i * batch_size:(i + 1) * batch_size].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


# Another job on the machine, for `--background`: a small ResNet trained on random images in a loop, with its own
# torch thread count (a notebook worker, or someone else's training run), until the benchmark ends.
BACKGROUND_JOB = """
import sys, torch
from torch import nn
torch.set_num_threads(int(sys.argv[1]))
sys.path.insert(0, sys.argv[2])
from utils.models import Classifier, build_encoder
enc = build_encoder("resnet_tiny")
net = Classifier(enc, nn.Linear(enc.feat_dim, 10))
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
x, y = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))
while True:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(net(x).float(), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
"""


def start_background(threads: int):
    """Start `BACKGROUND_JOB` with `threads` torch threads (0: none started) and let it warm up; returns the process."""
    import subprocess

    if threads <= 0:
        return None
    proc = subprocess.Popen([sys.executable, "-c", BACKGROUND_JOB, str(threads), str(ROOT)])
    time.sleep(5)
    if proc.poll() is not None:
        raise SystemExit(f"the background job exited with code {proc.returncode}")
    return proc


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def correct(model, x, y) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


def torchattacks_chunk(model, x, y, eps_grid, steps, rel_step) -> torch.Tensor:
    """torchattacks.PGD once per eps > 0 (it accepts only eps > 0; eps = 0 is the clean accuracy), then the accuracy
    forward on its last iterate. -> robust bool [len(eps_grid), len(x)]."""
    import torchattacks

    rows = []
    for eps in eps_grid:
        if eps == 0:
            rows.append(correct(model, x, y))
            continue
        atk = torchattacks.PGD(model, eps=eps, alpha=rel_step * eps, steps=steps, random_start=True)
        rows.append(correct(model, atk(x, y), y))
    return torch.stack(rows).cpu()


def torchattacks_autoattack_chunk(model, x, y, eps_grid, steps, seed) -> torch.Tensor:
    """torchattacks.AutoAttack (standard) once per eps > 0, then the accuracy forward. -> robust [E, n]."""
    import torchattacks

    rows = []
    for eps in eps_grid:
        if eps == 0:
            rows.append(correct(model, x, y))
            continue
        atk = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=seed)
        rows.append(correct(model, atk(x, y), y))
    return torch.stack(rows).cpu()


def ours_chunk(model, x, y, eps_grid, steps, rel_step, seed, flags: set, attack: str = "pgd",
               work: dict | None = None, **kwargs) -> torch.Tensor:
    step_kw = {"rel_step": rel_step} if attack == "pgd" else {"n_queries": 5000, "n_targets": 9}
    res = robust_accuracy(model, x, y, eps_list=eps_grid, attack=attack, norm="linf", steps=steps,
                          batch_size=len(x), seed=seed, **step_kw, **kwargs)
    flags.update(res.flags)
    if work is not None:  # per-point input gradients computed (image-steps)
        work["grads"] = work.get("grads", 0) + res.work.get("grads", 0)
    return res.robust_mask


# ResNet-50 at 224 px costs about 8.2 GFLOP per image-step (forward plus input gradient); an H200 in bf16 reaches
# roughly 90-100k image-steps/s at best, the limit a GPU run is compared with.
RESNET50_224_LIMIT = 95_000


def compare(sides: dict, x, y, batch_size: int, device: str) -> tuple[dict, dict]:
    """Run every side on each chunk of `batch_size` points, one after the other, rotating who goes first, so that
    all sides see the same (noisy, shared) machine. -> ({side: robust [E, n]}, {side: seconds})."""
    masks = {name: [] for name in sides}
    seconds = dict.fromkeys(sides, 0.0)
    names = list(sides)
    for k, i in enumerate(range(0, len(x), batch_size)):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        for name in names[k % len(names):] + names[:k % len(names)]:
            sync(device)
            t0 = time.perf_counter()
            masks[name].append(sides[name](xb, yb, k))
            sync(device)
            seconds[name] += time.perf_counter() - t0
    return {name: torch.cat(m, dim=1) for name, m in masks.items()}, seconds


def report(title, eps_grid, ta, ta_time, ours, ours_time, flags, tolerance: float = 0.01) -> bool:
    print(f"\n{title}")
    print(f"{'eps*255':>8} {'torchattacks':>13} {'ours':>8} {'ours-ta':>8}")
    ok = True
    for j, eps in enumerate(eps_grid):
        a, b = float(ta[j].float().mean()), float(ours[j].float().mean())
        ok &= b - a <= tolerance + 1e-9
        print(f"{eps * 255:8.3g} {a:13.4f} {b:8.4f} {b - a:+8.4f}")
    ratio = ta_time / ours_time
    print(f"time: torchattacks {ta_time:.2f} s, ours {ours_time:.2f} s  ->  speed-up {ratio:.2f}x")
    print(f"flags: {sorted(flags) or 'none'}")
    print(f"check: ours <= torchattacks + {100 * tolerance:g} point(s) at every eps: {'PASS' if ok else 'FAIL'}")
    return ok


def strength_table(args, eps_grid, rel_step) -> int:
    """PGD strength only (no timing): ours (the eps cascade) against torchattacks' independent PGD per eps, for
    several models and seeds; ours may be at most +0.5 points weaker at any eps."""
    rows, worst = [], -1.0
    x0, y0 = load_fashion_mnist(args.data_root, "test", n=args.n, seed=0)
    for arch in args.archs.split(","):
        model = train_small(arch, args.epochs, Path(args.data_root))
        for seed in [int(s) for s in args.seeds.split(",")]:
            torch.manual_seed(seed)
            ta = torchattacks_chunk(model, x0, y0, eps_grid, args.steps, rel_step)
            ours = ours_chunk(model, x0, y0, eps_grid, args.steps, rel_step, seed=seed, flags=set())
            diff = [float(ours[j].float().mean() - ta[j].float().mean()) for j in range(len(eps_grid))]
            worst = max(worst, max(diff))
            rows.append((arch, seed, diff))
            print(f"{arch:14s} seed {seed}: ours - torchattacks per eps*255 "
                  + " ".join(f"{e * 255:g}:{100 * d:+.1f}" for e, d in zip(eps_grid, diff)) + " points")
    ok = worst <= 0.005 + 1e-9
    print(f"largest ours - torchattacks over {len(rows)} model x seed runs: {100 * worst:+.2f} points -> "
          f"{'PASS' if ok else 'FAIL'} (<= +0.5)")
    return 0 if ok else 1


def cost_table(args, model, x_all, y_all, device: str) -> int:
    """How the kernel's cost grows with points and steps: `robust_accuracy` (PGD, linf, the default options) on the
    first n points for each n of --table-n and each step count of --table-steps, at the grid {0, --table-eps}; prints
    seconds, per-point gradients computed, image-steps per second and the points that cycle detection retired."""
    eps = float(args.table_eps) / 255
    ns = [int(v) for v in args.table_n.split(",")]
    if max(ns) > len(x_all):
        raise SystemExit(f"--table-n asks for {max(ns)} points; pass --n {max(ns)} (the test split has 10,000)")
    print(f"\ncost table: PGD linf eps={args.table_eps}/255 (grid {{0, eps}}), step 2.5/steps*eps, random start, "
          f"first-fooling, amp='auto', batch {args.batch_size}")
    print(f"{'n':>6s} {'steps':>5s} {'seconds':>8s} {'grads':>9s} {'img-steps/s':>12s} {'cycle exits':>11s} {'acc':>6s}")
    for n in ns:
        for steps in [int(v) for v in args.table_steps.split(",")]:
            sync(device)
            t0 = time.perf_counter()
            r = robust_accuracy(model, x_all[:n], y_all[:n], eps_list=[0.0, eps], steps=steps,
                                batch_size=args.batch_size, seed=0)
            sync(device)
            sec = time.perf_counter() - t0
            print(f"{n:6d} {steps:5d} {sec:8.2f} {r.work['grads']:9d} {r.work['grads'] / sec:12.0f} "
                  f"{r.work['cycle_exits']:11d} {r[eps]:6.3f}", flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="points to attack")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eps", default="0,1,2,4,8,16", help="comma-separated linf radii, in units of 1/255")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default="resnet_tiny", help="a small arch of utils.models.ARCHS, or resnet50")
    ap.add_argument("--size", type=int, default=28, help="image side (resnet50: Fashion-MNIST upsampled)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2, help="training epochs of the small CPU model")
    ap.add_argument("--train-steps", type=int, default=200, help="resnet50: brief training steps (0: random init)")
    ap.add_argument("--levers", action="store_true",
                    help="also time ours without channels_last and (CPU) without bf16, interleaved with the rest")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads for both sides (0: torch's default). 1 by default: on a 2-core CPU shared "
                         "with other jobs, 2 OpenMP threads spin against them and the timings become a lottery")
    ap.add_argument("--table", action="store_true",
                    help="print the cost table (points x steps, ours only) instead of the comparison")
    ap.add_argument("--table-n", default="1000,5000,10000")
    ap.add_argument("--table-steps", default="10,50,100")
    ap.add_argument("--table-eps", default="2", help="the table's radius, in units of 1/255")
    ap.add_argument("--background", type=int, default=0, metavar="THREADS",
                    help="time both sides beside another job: a small ResNet training in a loop with THREADS torch "
                         "threads (0: none; idle machine)")
    ap.add_argument("--data-root", default=str(ROOT / "data"))
    ap.add_argument("--attack", default="pgd", choices=["pgd", "autoattack"])
    ap.add_argument("--archs", default="", help="comma-separated small archs: PGD strength table over models x seeds")
    ap.add_argument("--seeds", default="0,1,2", help="with --archs: the seeds")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    eps_grid = [float(e) / 255 for e in args.eps.split(",")]
    rel_step = 2.5 / args.steps
    device = args.device
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else ""))

    if args.archs:
        return strength_table(args, eps_grid, rel_step)
    x, y = load_fashion_mnist(args.data_root, "test", n=args.n, seed=0)
    if args.arch == "resnet50":
        model = train_resnet50(args.size, args.train_steps, Path(args.data_root), device)
        x = to_rgb(x, args.size).to(device)
        if args.train_steps == 0:
            with torch.no_grad():  # labels = the random model's own clean predictions (else nothing to attack)
                y = torch.cat([model(x[i:i + args.batch_size]).argmax(1) for i in range(0, len(x), args.batch_size)])
        y = y.to(device)
        model_desc = (f"torchvision resnet50 (ImageNet Normalize inside), trained {args.train_steps} steps on "
                      f"Fashion-MNIST at {args.size}px")
        if args.train_steps == 0:
            model_desc += " (random init, labelled with its own predictions)"
    else:
        if args.size != 28:
            x = F.interpolate(x, size=(args.size, args.size), mode="bilinear", align_corners=False).clamp(0, 1)
        model = train_small(args.arch, args.epochs, Path(args.data_root)).to(device)
        x, y = x.to(device), y.to(device)
        model_desc = f"{args.arch} + linear head, trained {args.epochs} epochs on Fashion-MNIST"
    if args.table:
        return cost_table(args, model, x, y, device)
    what = ("AutoAttack standard (APGD-CE, APGD-T 9 targets, FAB-T 9 targets, Square 5000 queries)"
            if args.attack == "autoattack" else f"linf PGD alpha={rel_step:.3g}*eps, random start")
    print(f"model: {model_desc}; n={len(x)}, {what}, steps={args.steps}, eps*255={args.eps}")

    # GPU: float32 and bfloat16 (channels_last weights, the default, in both); CPU: the defaults (amp="auto")
    configs = [{"amp": "off"}, {"amp": "bf16"}] if device.startswith("cuda") else [{"amp": "auto"}]
    if args.levers:
        amps = ("off", "bf16") if device.startswith("cuda") else ("off", "auto")
        configs += [{"amp": a, "channels_last": False} for a in amps]
        if not device.startswith("cuda"):
            configs.append({"amp": "off"})
    flags = {str(kw): set() for kw in configs}
    work = {str(kw): {} for kw in configs}
    if args.attack == "autoattack":
        sides = {"torchattacks": lambda xb, yb, k: torchattacks_autoattack_chunk(model, xb, yb, eps_grid, args.steps,
                                                                                 seed=k)}
    else:
        sides = {"torchattacks": lambda xb, yb, k: torchattacks_chunk(model, xb, yb, eps_grid, args.steps, rel_step)}
    for kw in configs:
        sides[str(kw)] = (lambda kw: lambda xb, yb, k: ours_chunk(model, xb, yb, eps_grid, args.steps, rel_step,
                                                                  seed=k, flags=flags[str(kw)], attack=args.attack,
                                                                  work=work[str(kw)], **kw))(kw)
    if device.startswith("cuda"):  # warm up kernels and cuDNN's choices on a few points, untimed
        compare(sides, x[:32], y[:32], 32, device)
        for w in work.values():
            w.clear()
    torch.manual_seed(0)
    background = start_background(args.background)
    if background is not None:
        print(f"beside another job: a resnet_tiny training loop with {args.background} torch thread(s)")
    try:
        masks, seconds = compare(sides, x, y, args.batch_size, device)
    finally:
        if background is not None:
            background.kill()
            background.wait()
    ta, ta_time = masks.pop("torchattacks"), seconds.pop("torchattacks")
    print(f"(sides interleaved chunk by chunk, {args.batch_size} points per chunk, so that all see the same load)")
    results = []
    # the pass marks of issues 15 and 18: at most +0.5 points weaker at every eps; the AutoAttack ensemble >= 5x,
    # PGD >= 5x on a CPU and >= 10x on a GPU
    tolerance = 0.005
    goal = 10.0 if args.attack == "pgd" and device.startswith("cuda") else 5.0
    for name in masks:
        ok = report(f"torchattacks (float32) vs robust_accuracy ({name})", eps_grid, ta, ta_time, masks[name],
                    seconds[name], flags[name], tolerance)
        results.append((ok, ta_time / seconds[name]))
        grads = work[name].get("grads", 0)
        line = f"ours: {grads} image-steps (per-point input gradients), {grads / seconds[name]:.0f} image-steps/s"
        if args.attack == "pgd":
            ta_grads = sum(1 for e in eps_grid if e > 0) * len(x) * args.steps
            line += f"; torchattacks: {ta_grads} image-steps, {ta_grads / ta_time:.0f} image-steps/s"
        if args.arch == "resnet50" and args.size == 224 and device.startswith("cuda"):
            line += f"; {grads / seconds[name] / RESNET50_224_LIMIT:.1%} of the ~{RESNET50_224_LIMIT} limit"
        print(line)
    main_results = results[:2] if device.startswith("cuda") else results[:1]
    passed = all(ok and ratio >= goal for ok, ratio in main_results)
    print(f"\noverall (speed-up >= {goal:g}x and ours <= torchattacks + {100 * tolerance:g} point(s)): "
          f"{'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
