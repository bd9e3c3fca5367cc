"""Where work runs: a pool of local worker processes for independent jobs, and torch.distributed set-up (torchrun).

Base layer: imports only `utils.store` (cached jobs).

On a CPU, small models use cores better as one single-threaded process per core than as one process with one
thread per core (measured on the 2-core machine: PGD sweep 9.7 s with 2 threads, 2 sweeps in 16 s as 2 processes of
1 thread, i.e. 18 % faster). Independent jobs (one attack sweep, one transfer source, one Square check, one
fine-tuning run, one encoder's dense tasks) are therefore spread over a pool of worker processes.

Determinism: a job computes the same bits whatever the worker count, the machine's load and what ran before it,
because `map_jobs` runs every job, in a worker or in this process, (1) with the same intra-op thread count,
`job_threads(device)`, a function of the machine only: the thread count decides how a kernel splits its float sums,
so 1 and 2 threads give different bits in float32 and bfloat16 alike (measured: one resnet_tiny forward + backward);
and (2) with the global RNGs (torch, numpy, random) reset to one fixed seed and restored afterwards, so a draw a job
does not seed itself is the same in any process. A job's own random numbers are seeded from the master seed and its
parameters (`utils.runtime.derive_seed`), never from the worker.
"""
from __future__ import annotations

import atexit
import ctypes
import multiprocessing as mp
import os
import random
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from utils.store import cached_json, cached_result

WORKERS_ENV = "SSL_ADV_WORKERS"
JOB_THREADS_ENV = "SSL_ADV_JOB_THREADS"
# The global RNGs' seed at the start of every job (a job's own draws are seeded by the job; see the module docstring).
JOB_RNG_SEED = 0
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


def job_threads(device: str = "cpu") -> int:
    """Intra-op threads of every job `map_jobs` runs, whichever process runs it: $SSL_ADV_JOB_THREADS if set; else
    1 with a CPU device (jobs run one per core, see the module docstring) and every core with a GPU device (jobs
    run one at a time; the CPU threads only prepare the GPU's work). Never a function of the worker count or the
    load: a job's numbers depend on it."""
    env = os.environ.get(JOB_THREADS_ENV)
    if env:
        return max(1, int(env))
    return cores() if str(device).startswith("cuda") else 1


def _run_job(fn: Callable, threads: int, kwargs: dict) -> Any:
    """fn(**kwargs) with `threads` intra-op threads and the global RNGs seeded to JOB_RNG_SEED; this process's thread
    count and RNG states are restored afterwards (a job run in the notebook's own process leaves no trace)."""
    before, py_state, np_state = torch.get_num_threads(), random.getstate(), np.random.get_state()
    gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []  # never initialize CUDA here
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=gpus):
            torch.manual_seed(JOB_RNG_SEED)
            random.seed(JOB_RNG_SEED)
            np.random.seed(JOB_RNG_SEED)
            return fn(**kwargs)
    finally:
        torch.set_num_threads(before)
        random.setstate(py_state)
        np.random.set_state(np_state)


# What the parent tells an interrupted notebook (the worker processes print nothing, see `_init_worker`).
INTERRUPTED = "interrupted; finished work is cached, rerun to resume"


def _init_worker(parent: int) -> None:
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
    _POOL = (workers, ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                          initargs=(os.getpid(),)))
    return _POOL[1]


def map_jobs(fn: Callable, jobs: list[dict], *, workers: int = 1, threads: int | None = None, desc: str = "jobs",
             progress: bool = False) -> list:
    """[fn(**job) for job in jobs], run in `workers` processes when workers > 1; results in job order.
    Each job runs with `threads` intra-op threads (default `job_threads()`) and freshly seeded global RNGs, in a
    worker as in this process (`_run_job`), so the results do not depend on `workers`.
    `fn` must be importable (a module-level function of this package); an exception in a job is raised here."""
    threads = job_threads() if threads is None else int(threads)
    if workers <= 1 or len(jobs) <= 1:
        return [_run_job(fn, threads, j) for j in tqdm(jobs, desc=desc, disable=not progress)]
    ex = _pool(workers)
    futures = {ex.submit(_run_job, fn, threads, j): i for i, j in enumerate(jobs)}
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
    for i, o in zip(todo, map_jobs(_cached_job, jobs, workers=local_workers(device, len(jobs)),
                                   threads=job_threads(device), desc=desc, progress=progress)):
        outs[i] = o
    return outs
