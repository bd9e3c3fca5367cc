"""Where work runs: a pool of local worker processes for independent jobs, and torch.distributed set-up (torchrun).

Base layer: imports only `utils.store` (cached jobs).

On a CPU, small models use cores better as one single-threaded process per core than as one process with one
thread per core (measured on the 2-core machine: PGD sweep 9.7 s with 2 threads, 2 sweeps in 16 s as 2 processes of
1 thread, i.e. 18 % faster). Independent jobs (one attack sweep, one transfer source, one Square check, one
fine-tuning run, one encoder's dense tasks) are therefore spread over a pool of worker processes; every job computes
exactly what it computes in one process (its random numbers are seeded by the job, not by the worker).
"""
from __future__ import annotations

import atexit
import ctypes
import multiprocessing as mp
import os
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from utils.store import cached_json, cached_result

WORKERS_ENV = "SSL_ADV_WORKERS"
_POOL: tuple[int, ProcessPoolExecutor] | None = None


# ------------------------------------------------------------------------------------------------ torch.distributed

def world() -> tuple[int, int]:
    """(rank, world size) of the initialized process group, or (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Initialize torch.distributed from torchrun's environment (nccl on GPUs, gloo on CPUs); no-op otherwise."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return world()


def close_distributed() -> None:
    """Wait for every rank, then tear the process group down (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------- local worker processes

def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def local_workers(device: str = "cpu", n_jobs: int | None = None) -> int:
    """How many worker processes to use for independent jobs: $SSL_ADV_WORKERS if set; else 1 on a GPU or inside a
    torchrun rank (ranks already share the work), one per CPU core otherwise; never more than `n_jobs`."""
    env = os.environ.get(WORKERS_ENV)
    if env:
        w = int(env)
    elif str(device).startswith("cuda") or world()[1] > 1:
        w = 1
    else:
        w = cores()
    if n_jobs is not None:
        w = min(w, n_jobs)
    return max(1, w)


# What the parent tells an interrupted notebook (the worker processes print nothing, see `_init_worker`).
INTERRUPTED = "interrupted; finished work is cached, rerun to resume"


def _init_worker(threads: int, parent: int) -> None:
    # Ctrl-C / a kernel shutdown reaches the whole process group: the parent handles it (cancels what has not
    # started); idle workers would only print a KeyboardInterrupt traceback each.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # When the parent dies (a kernel shut down or killed after Ctrl-C), Linux kills the worker at once: an orphan
    # would finish its job for nobody, then print tracebacks about its broken pipes.
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: orphans end when their pipes break
        pass
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(0)
    torch.set_num_threads(threads)


def _shutdown_pool() -> None:
    if _POOL is not None:
        _POOL[1].shutdown(cancel_futures=True)


def _pool(workers: int) -> ProcessPoolExecutor:
    """A process pool of `workers` spawned workers (kept for the next call; shut down at exit)."""
    global _POOL
    if _POOL is not None and _POOL[0] == workers:
        return _POOL[1]
    if _POOL is not None:
        _POOL[1].shutdown()
    else:
        atexit.register(_shutdown_pool)
    threads = max(1, cores() // workers)
    _POOL = (workers, ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                          initargs=(threads, os.getpid())))
    return _POOL[1]


def map_jobs(fn: Callable, jobs: list[dict], *, workers: int = 1, desc: str = "jobs", progress: bool = False) -> list:
    """[fn(**job) for job in jobs], run in `workers` processes when workers > 1; results in job order.
    `fn` must be importable (a module-level function of this package); an exception in a job is raised here."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(**j) for j in tqdm(jobs, desc=desc, disable=not progress)]
    ex = _pool(workers)
    futures = {ex.submit(fn, **j): i for i, j in enumerate(jobs)}
    out: list = [None] * len(jobs)
    try:
        for f in tqdm(as_completed(futures), total=len(jobs), desc=f"{desc} ({workers} processes)",
                      disable=not progress):
            out[futures[f]] = f.result()
    except KeyboardInterrupt:
        for f in futures:
            f.cancel()
        raise KeyboardInterrupt(INTERRUPTED) from None  # jobs that finished wrote their caches
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    return out


def _cached_job(fn: Callable, cache_dir, name: str, key: dict, **kwargs) -> Any:
    """fn(**kwargs), cached as JSON under `cache_dir` (no cache when None); module level, so workers can run it."""
    if cache_dir is None:
        return fn(**kwargs)
    return cached_json(cache_dir, name, key, lambda: fn(**kwargs))


def run_cached(fn: Callable, entries: list[tuple], *, desc: str, device: str = "cpu", progress: bool = False) -> list:
    """[fn(**kwargs) for (folder, name, key, kwargs) in entries], each cached as JSON under `folder` (None: no
    cache). What is cached is read here; the rest runs in worker processes (`map_jobs`, one per core on a CPU),
    each writing its own cache file, so an interrupted run resumes. Results in entry order."""
    outs = [None if folder is None else cached_result(folder, name, key) for folder, name, key, _ in entries]
    todo = [i for i, o in enumerate(outs) if o is None]
    if progress and len(todo) < len(entries):
        print(f"{desc}: {len(entries) - len(todo)} of {len(entries)} jobs read from the cache")
    jobs = [dict(fn=fn, cache_dir=entries[i][0], name=entries[i][1], key=entries[i][2], **entries[i][3])
            for i in todo]
    for i, o in zip(todo, map_jobs(_cached_job, jobs, workers=local_workers(device, len(jobs)), desc=desc,
                                   progress=progress)):
        outs[i] = o
    return outs
