"""The heavy evaluation as a command, sharded across torch.distributed ranks (torchrun), with the same numbers as
one process.

    # one process (what the notebooks call):
    python -m utils.evaluate --profile cpu --notebook 03
    # 8 GPUs on one node:
    torchrun --nproc_per_node 8 -m utils.evaluate --profile paper --notebook 03
    # 2 nodes x 8 GPUs (run on each node; NODE_RANK 0 and 1, MASTER = host name of node 0):
    torchrun --nnodes 2 --node_rank $NODE_RANK --nproc_per_node 8 --rdzv_backend c10d \
             --rdzv_endpoint $MASTER:29500 -m utils.evaluate --profile paper --notebook 03

How points are shared: the N points are cut into batches of `batch_size` in input order; rank r attacks batches
r, r + W, r + 2W, ... (W = world size), each with its own random-start seed derived from (seed, batch index). So
every point is attacked exactly once (no padding duplicates), and by the same computation whatever W is: the
per-point verdicts are all-reduced (summed; the shards are disjoint) and equal those of a single process.

The command writes its results into the same cache the notebook reads (`cache/<profile>/attacks/*.json`, rank 0
writes): run it first, then the notebook (`python -m utils.pipeline --only 03`) finds every sweep done and draws the
figures from it.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist


def batch_seed(seed: int, batch_index: int) -> int:
    """Random-start seed of one batch: a function of (seed, batch index) only, so sharding does not change it."""
    return (int(seed) * 1_000_003 + int(batch_index) * 7_919 + 1) % (2 ** 62)


def world() -> tuple[int, int]:
    """(rank, world size) of the initialized process group, or (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sharded_robust_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps_list, attack: str = "pgd",
                            norm: str = "linf", steps: int = 10, restarts: int = 1, batch_size: int = 256,
                            seed: int = 0, **attack_kwargs):
    """`utils.attacks.robust_accuracy` over (x [N,C,H,W] in [0,1], y [N]) split into batches shared across ranks.

    Returns a `RobustAccuracy` holding the verdicts of ALL N points on every rank (identical to a single process).
    """
    from utils.attacks import RobustAccuracy, robust_accuracy

    rank, size = world()
    n = len(y)
    device = next(model.parameters()).device
    eps_grid = sorted({float(e) for e in ([eps_list] if isinstance(eps_list, (int, float)) else eps_list)})
    mask = torch.zeros(len(eps_grid), n, dtype=torch.int32)
    flags: set[str] = set()
    n_batches = (n + batch_size - 1) // batch_size
    for b in range(rank, n_batches, size):
        sl = slice(b * batch_size, min(n, (b + 1) * batch_size))
        res = robust_accuracy(model, x[sl].to(device), y[sl].to(device), eps_list=eps_grid, attack=attack,
                              norm=norm, steps=steps, restarts=restarts, batch_size=batch_size,
                              seed=batch_seed(seed, b), **attack_kwargs)
        mask[:, sl] = res.robust_mask.to(torch.int32)
        flags.update(f for f in res.flags if not f.startswith("accuracy_rises"))
    if size > 1:
        # gloo reduces CPU tensors; nccl needs them on the GPU
        backend = dist.get_backend()
        m = mask.to(device) if backend == "nccl" else mask
        dist.all_reduce(m, op=dist.ReduceOp.SUM)
        mask = m.cpu()
        gathered = [None] * size
        dist.all_gather_object(gathered, sorted(flags))
        flags = set().union(*map(set, gathered))
    if int(mask.max()) > 1:
        raise RuntimeError("a point was attacked by two ranks: the shards overlap (this is a bug)")
    robust = mask.bool()
    accs = {eps: float(robust[j].float().mean()) for j, eps in enumerate(eps_grid)}
    from utils.attacks import _monotonicity_flags

    steps_rec, restarts_rec = (1, 1) if attack == "fgsm" else (int(steps), int(restarts))
    return RobustAccuracy(accs, flags=sorted(flags) + _monotonicity_flags(accs), n=n, attack=attack, norm=norm,
                          steps=steps_rec, restarts=restarts_rec, robust_mask=robust)


# ------------------------------------------------------------------------------------ local worker processes
# On a CPU, small models use cores better as one single-threaded process per core than as one process with one
# thread per core (measured on the 2-core machine: PGD sweep 9.7 s with 2 threads, 2 sweeps in 16 s as 2 processes
# of 1 thread, i.e. 18 % faster). Independent jobs (one attack sweep, one transfer source, one Square check) are
# therefore spread over a pool of worker processes; every job computes exactly what it computes in one process
# (its random starts are seeded by the job, not by the worker).

_POOL: tuple[int, object] | None = None


def local_workers(device: str = "cpu", n_jobs: int | None = None) -> int:
    """How many worker processes to use for independent jobs: the environment variable SSL_ADV_WORKERS if set;
    else 1 on a GPU or inside a torchrun rank (ranks already share the work), one per CPU core otherwise."""
    env = os.environ.get("SSL_ADV_WORKERS")
    if env:
        w = int(env)
    elif str(device).startswith("cuda") or world()[1] > 1:
        w = 1
    else:
        w = _cores()
    if n_jobs is not None:
        w = min(w, n_jobs)
    return max(1, w)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _init_worker(threads: int) -> None:
    import signal

    # Ctrl-C / a kernel shutdown reaches the whole process group: the parent handles it (cancels what has not
    # started); idle workers would only print a KeyboardInterrupt traceback each.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)


def _pool(workers: int):
    """A process pool of `workers` spawned workers (kept for the next call; shut down at exit)."""
    global _POOL
    import atexit
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    if _POOL is not None and _POOL[0] == workers:
        return _POOL[1]
    if _POOL is not None:
        _POOL[1].shutdown()
    threads = max(1, _cores() // workers)
    ex = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(threads,))
    if _POOL is None:
        atexit.register(lambda: _POOL is not None and _POOL[1].shutdown(cancel_futures=True))
    _POOL = (workers, ex)
    return ex


def map_jobs(fn, jobs: list[dict], *, workers: int = 1, desc: str = "jobs", progress: bool = False) -> list:
    """[fn(**job) for job in jobs], run in `workers` processes when workers > 1; results in job order.
    `fn` must be importable (a module-level function of this package); an exception in a job is raised here."""
    from tqdm.auto import tqdm

    if workers <= 1 or len(jobs) <= 1:
        return [fn(**j) for j in tqdm(jobs, desc=desc, disable=not progress)]
    from concurrent.futures import as_completed

    ex = _pool(workers)
    futures = {ex.submit(fn, **j): i for i, j in enumerate(jobs)}
    out: list = [None] * len(jobs)
    try:
        for f in tqdm(as_completed(futures), total=len(jobs), desc=f"{desc} ({workers} processes)",
                      disable=not progress):
            out[futures[f]] = f.result()
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    return out


def init_distributed() -> tuple[int, int]:
    """Initialize torch.distributed from torchrun's environment (nccl on GPUs, gloo on CPUs); no-op otherwise."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return world()


def main(argv: list[str] | None = None) -> int:
    from utils.profiles import PROFILES, notebook_parameters, output_dirs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    ap.add_argument("--notebook", default="03", choices=["03"], help="whose attack grid to run (03: linear regime)")
    args = ap.parse_args(argv)
    rank, size = init_distributed()
    from utils import evaluation

    params = notebook_parameters(args.profile, args.notebook)
    cache_dir = output_dirs(args.profile)["cache_dir"]
    device = params["device"]
    if device == "cuda" and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.current_device()}"
    classifiers, points, settings = evaluation.attack_inputs(params, cache_dir)
    table, _ = evaluation.run_attack_grid(classifiers, points, settings, steps=params["steps"],
                                          restarts=params["restarts"], seed=params["seed"], cache_dir=cache_dir,
                                          device=device, progress=rank == 0)
    if rank == 0:
        print(f"{len(table)} rows over {len(classifiers)} classifiers on {size} rank(s); cached under "
              f"{cache_dir}/attacks/")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
