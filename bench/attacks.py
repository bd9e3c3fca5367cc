"""Benchmark: torchattacks' PGD against `utils.attacks.robust_accuracy` on the same model, images and eps grid.

    .venv/bin/python bench/attacks.py                                   # CPU: small ResNet on Fashion-MNIST
    .venv/bin/python bench/attacks.py --device cuda --arch resnet50 --size 224   # GPU: float32 and bfloat16

Both sides run linf PGD with the same steps, step alpha = rel_step * eps (rel_step = 2.5 / steps) and a random start.
torchattacks runs once per eps on every point (it accepts only eps > 0, so eps = 0 is the clean accuracy) and returns
the last iterate; `robust_accuracy` walks the grid once, attacks only the points still robust, keeps any fooling
iterate, and uses bf16 autocast where the hardware supports it. The time of each side includes its accuracy forward.

Models:
- CPU (`--arch resnet_tiny`, default): utils.models.build_encoder("resnet_tiny") + linear head in a Classifier,
  trained 2 epochs on Fashion-MNIST train (Adam); the weights are cached in cache/bench/ as safetensors, so a rerun
  skips training. Images: the first `--n` of a seeded subset of the test split.
- GPU (`--arch resnet50`): torchvision resnet50 with an ImageNet Normalize layer inside, RANDOM INIT (no training, no
  download). Images: Fashion-MNIST test images upsampled to `--size` and repeated to 3 channels; labels are the model's
  own clean predictions, so clean accuracy is 100 % and every point is attacked (a random net would otherwise be right
  on ~10 % of true labels and leave almost nothing to attack). The numbers time the kernel; they say nothing about the
  robustness of a trained resnet50.
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
from utils.results import atomic_save  # noqa: E402

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
    return nn.Sequential(Normalize(IMAGENET_MEAN, IMAGENET_STD), resnet50(weights=None)).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def accuracy(model, x, y, batch_size) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]
                          for i in range(0, len(x), batch_size)])


def torchattacks_grid(model, x, y, eps_grid, steps, rel_step, batch_size, device) -> tuple[dict, float]:
    """torchattacks.PGD once per eps > 0 on every point; eps = 0 is the clean accuracy. -> ({eps: acc}, seconds)."""
    import torchattacks

    torch.manual_seed(0)
    sync(device)
    t0 = time.perf_counter()
    accs = {}
    for eps in eps_grid:
        if eps == 0:
            accs[eps] = float(accuracy(model, x, y, batch_size).float().mean())
            continue
        atk = torchattacks.PGD(model, eps=eps, alpha=rel_step * eps, steps=steps, random_start=True)
        correct = []
        for i in range(0, len(x), batch_size):
            adv = atk(x[i:i + batch_size], y[i:i + batch_size])
            correct.append(accuracy(model, adv, y[i:i + batch_size], batch_size))
        accs[eps] = float(torch.cat(correct).float().mean())
    sync(device)
    return accs, time.perf_counter() - t0


def ours_grid(model, x, y, eps_grid, steps, rel_step, batch_size, device, **kwargs):
    sync(device)
    t0 = time.perf_counter()
    res = robust_accuracy(model, x, y, eps_list=eps_grid, attack="pgd", norm="linf", steps=steps,
                          rel_step=rel_step, batch_size=batch_size, **kwargs)
    sync(device)
    return res, time.perf_counter() - t0


def report(title, eps_grid, ta, ta_time, ours, ours_time) -> bool:
    print(f"\n{title}")
    print(f"{'eps*255':>8} {'torchattacks':>13} {'ours':>8} {'ours-ta':>8}")
    ok = True
    for eps in eps_grid:
        diff = ours[eps] - ta[eps]
        ok &= diff <= 0.01 + 1e-9
        print(f"{eps * 255:8.3g} {ta[eps]:13.4f} {ours[eps]:8.4f} {diff:+8.4f}")
    ratio = ta_time / ours_time
    print(f"time: torchattacks {ta_time:.2f} s, ours {ours_time:.2f} s  ->  speed-up {ratio:.2f}x")
    print(f"flags: {ours.flags or 'none'}")
    print(f"check: ours <= torchattacks + 1 point at every eps: {'PASS' if ok else 'FAIL'}")
    return ok


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
    ap.add_argument("--levers", action="store_true", help="also time ours with amp off and with channels_last")
    ap.add_argument("--data-root", default=str(ROOT / "data"))
    args = ap.parse_args(argv)

    eps_grid = [float(e) / 255 for e in args.eps.split(",")]
    rel_step = 2.5 / args.steps
    device = args.device
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else ""))

    x, y = load_fashion_mnist(args.data_root, "test", n=args.n, seed=0)
    if args.arch == "resnet50":
        model = resnet50_imagenet().to(device)
        x = F.interpolate(x, size=(args.size, args.size), mode="bilinear", align_corners=False).clamp(0, 1)
        x = x.repeat(1, 3, 1, 1).to(device)
        y = torch.cat([model(x[i:i + args.batch_size]).argmax(1)
                       for i in range(0, len(x), args.batch_size)]).detach()  # labels = own clean predictions
        model_desc = f"torchvision resnet50 (random init, ImageNet Normalize inside), {args.size}px, own labels"
    else:
        if args.size != 28:
            x = F.interpolate(x, size=(args.size, args.size), mode="bilinear", align_corners=False).clamp(0, 1)
        model = train_small(args.arch, args.epochs, Path(args.data_root)).to(device)
        x, y = x.to(device), y.to(device)
        model_desc = f"{args.arch} + linear head, trained {args.epochs} epochs on Fashion-MNIST"
    print(f"model: {model_desc}; n={len(x)}, linf PGD steps={args.steps}, alpha={rel_step:.3g}*eps, random start, "
          f"eps*255={args.eps}")

    if device.startswith("cuda"):  # warm up kernels / cudnn autotuning for both sides
        torchattacks_grid(model, x[:64], y[:64], eps_grid[-1:], 2, rel_step, 64, device)
        for amp in ("off", "bf16"):
            ours_grid(model, x[:64], y[:64], eps_grid[-1:], 2, rel_step, 64, device, amp=amp)

    ta, ta_time = torchattacks_grid(model, x, y, eps_grid, args.steps, rel_step, args.batch_size, device)
    results = []
    amps = ["off", "bf16"] if device.startswith("cuda") else ["auto"]
    for amp in amps:
        ours, ours_time = ours_grid(model, x, y, eps_grid, args.steps, rel_step, args.batch_size, device, amp=amp)
        ok = report(f"torchattacks (float32) vs robust_accuracy (amp={amp})", eps_grid, ta, ta_time, ours,
                    ours_time)
        results.append((ok, ta_time / ours_time))
    if args.levers:
        print("\nlevers (ours only, same grid):")
        for kw in ({"amp": "off"}, {"amp": "auto"}, {"amp": "auto", "channels_last": True},
                   {"amp": "off", "channels_last": True}):
            res, t = ours_grid(model, x, y, eps_grid, args.steps, rel_step, args.batch_size, device, **kw)
            print(f"  {kw}: {t:.2f} s  accuracies {[round(v, 4) for v in res.values()]}")
    passed = all(ok and ratio >= 3 for ok, ratio in results)
    print(f"\noverall (speed-up >= 3x and ours <= torchattacks + 1 point): {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
