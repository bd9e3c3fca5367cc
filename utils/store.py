"""Results that survive: atomic files, keyed caches, digests, provenance and tidy tables.

Base layer: imports nothing from `utils`; the only module that hashes (parameters, weights, points, files, sources).
Every expensive step is keyed by the hash of the parameters it depends on; its output is written to a temporary file
and renamed into place, so a killed process never leaves a half-written result and a rerun picks up what finished.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

# Columns of the tidy robustness table: one row per model x task x attack x eps.
TIDY_COLUMNS = ["model", "regime", "task", "attack", "norm", "eps", "steps", "restarts", "accuracy", "n", "flags"]


def _canonical(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, bool):
        return obj
    if isinstance(obj, float):
        v = float(f"{obj:.12g}")  # 8/255 computed two ways hashes the same
        return int(v) if v.is_integer() else v  # and 0 == 0.0
    if isinstance(obj, Path):
        return str(obj)
    return obj


def param_hash(params: dict, length: int = 12) -> str:
    """Stable short hash of a JSON-able parameter dict (key order and float noise do not matter)."""
    blob = json.dumps(_canonical(params), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _sha256_of_tensors(*tensors) -> "hashlib._Hash":
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h


def points_digest(x, y) -> str:
    """sha256 (16 hex) of a set of points: images x [N, ...] and labels y [N] (identifies what was attacked)."""
    return _sha256_of_tensors(x, y).hexdigest()[:16]


def tensors_digest(*tensors) -> str:
    """sha256 (16 hex) over the bytes of the given tensors, in order (e.g. training data (x, y) as float32)."""
    return _sha256_of_tensors(*tensors).hexdigest()[:16]


def weights_digest(module) -> str:
    """sha256 (16 hex) over a module's state dict: identifies the exact weights a downstream result depends on."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints are ~100 MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def text_digest(*parts: str | bytes) -> str:
    """Hex sha256 of the given strings or bytes, in order (notebook sources, fingerprints)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (a temporary file beside it, flushed to disk, then renamed)."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return atomic_save(write, path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_bytes(path, json.dumps(obj, indent=2, default=str).encode())


def atomic_save(save_fn: Callable[[str], None], path: str | os.PathLike) -> Path:
    """Run `save_fn(tmp_path)` (e.g. safetensors' save_file, fig.savefig) then rename onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        save_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def git_commit(cwd: str | os.PathLike | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd or Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd or Path(__file__).parent,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("torch", "torchvision", "timm", "torchattacks", "torchmetrics", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            out[mod] = "absent"
    return out


def device_name(device: str = "cpu") -> str:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu:{platform.processor() or platform.machine()}x{os.cpu_count()}"


def provenance(profile: str, params: dict, seed: int, device: str = "cpu") -> dict:
    """What a reviewer needs to trust a number: profile, parameter hash, seed, commit, versions, device."""
    return {"profile": profile, "param_hash": param_hash(params), "seed": seed, "git_commit": git_commit(),
            "versions": versions(), "device": device_name(device), "params": _canonical(params)}


def write_table(df: pd.DataFrame, path: str | os.PathLike, prov: dict | None = None) -> Path:
    """Write a tidy table as CSV atomically; its provenance goes to `<path>.provenance.json` beside it."""
    path = Path(path)
    atomic_write_bytes(path, df.to_csv(index=False).encode())
    if prov is not None:
        atomic_write_json(path.with_suffix(path.suffix + ".provenance.json"), prov)
    return path


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"result table {path} is missing: run the notebook that writes it first "
                                f"(`python -m utils.pipeline --only NN`).")
    return pd.read_csv(path)


def _cache_path(cache_dir: str | os.PathLike, name: str, params: dict) -> Path:
    return Path(cache_dir) / f"{name}-{param_hash(params)}.json"


def cached_result(cache_dir: str | os.PathLike, name: str, params: dict) -> Any | None:
    """What `cached_json(cache_dir, name, params, ...)` would return without computing, or None when not cached."""
    path = _cache_path(cache_dir, name, params)
    try:
        return read_json(path)["result"] if path.is_file() else None
    except (json.JSONDecodeError, KeyError):
        return None


def cached_json(cache_dir: str | os.PathLike, name: str, params: dict, compute: Callable[[], Any],
                force: bool = False) -> Any:
    """Return the JSON result of `compute()` stored under `<cache_dir>/<name>-<param_hash>.json`, computing it once.

    The stored file carries its parameters; a changed parameter gives a new hash, so only what depends on it reruns.
    """
    path = _cache_path(cache_dir, name, params)
    if not force:
        hit = cached_result(cache_dir, name, params)  # an unreadable file counts as missing: recomputed, overwritten
        if hit is not None:
            return hit
    result = compute()
    atomic_write_json(path, {"name": name, "params": _canonical(params), "result": result})
    return result
