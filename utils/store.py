"""Results that survive: atomic files, keyed caches, digests, provenance and tidy tables.

Base layer: imports nothing from `utils`; the only module that hashes (parameters, weights, points, files, sources).
Every expensive step is keyed by the hash of the parameters it depends on; its output is written to a temporary file
and renamed into place, so a killed process never leaves a half-written result and a rerun picks up what finished.

Integrity: every cache entry carries the sha256 of what it holds (a JSON entry of its result, a safetensors file of
its tensors, in its own header). An entry that cannot be read, holds the wrong type or fails its digest is reported
with its path, moved aside to `<name>.corrupt-<time>` (kept, never deleted) and recomputed (`quarantine`).
Files are created with the user's umask (not the 0600 of a temporary file).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

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
    """Over the tensors' bytes; an object with `identity()` (a `utils.imageset.ImageSet`: images decoded on demand)
    is named by the bytes it returns (its files and order), not by its pixels."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.identity() if hasattr(t, "identity") else t.detach().cpu().contiguous().numpy().tobytes())
    return h


def points_digest(x, y) -> str:
    """sha256 (16 hex) of a set of points: images x [N, ...] and labels y [N] (identifies what was attacked)."""
    return _sha256_of_tensors(x, y).hexdigest()[:16]


def tensors_digest(*tensors) -> str:
    """sha256 (16 hex) over the bytes of the given tensors, in order (e.g. training data (x, y) as float32)."""
    return _sha256_of_tensors(*tensors).hexdigest()[:16]


def state_digest(state: dict) -> str:
    """Hex sha256 over a state dict {name: tensor}: names and raw bytes, in name order."""
    h = hashlib.sha256()
    for k, v in sorted(state.items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def weights_digest(module) -> str:
    """sha256 (16 hex) over a module's state dict: identifies the exact weights a downstream result depends on."""
    return state_digest(module.state_dict())[:16]


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


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_save(save_fn: Callable[[str], None], path: str | os.PathLike) -> Path:
    """Run `save_fn(tmp_path)` (e.g. safetensors' save_file, fig.savefig) then rename onto `path`; the file gets
    the permissions of any new file (0666 minus the umask), not the 0600 of a temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        save_fn(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


# ------------------------------------------------------------------------------------------------------- integrity

class CorruptCacheWarning(UserWarning):
    """A stored result failed its check; it was moved aside (kept) and is recomputed."""


class CorruptFileError(ValueError):
    """A stored file is unreadable, of the wrong kind or fails its digest; the message names the file."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


def quarantine(path: str | os.PathLike, reason: str) -> Path | None:
    """Move a damaged file aside to `<name>.corrupt-<time>` (kept for inspection, never deleted) and warn, naming
    both; returns where it went (None when there was no file). The caller then recomputes what it held."""
    path = Path(path)
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = path.with_name(f"{path.name}.corrupt-{stamp}"), 1
    while dest.exists():
        dest, n = path.with_name(f"{path.name}.corrupt-{stamp}-{n}"), n + 1
    try:
        os.replace(path, dest)
    except FileNotFoundError:  # another process moved it aside first
        return None
    warnings.warn(f"{path}: {reason}; moved aside to {dest.name}, recomputing it", CorruptCacheWarning, stacklevel=2)
    return dest


def read_json_checked(path: str | os.PathLike, kind: type = dict) -> Any:
    """The JSON value of `path`, which must be a `kind`; CorruptFileError naming the path when it is not valid
    UTF-8 JSON or holds another type (a damaged or foreign file)."""
    try:
        value = json.loads(Path(path).read_bytes().decode("utf-8"))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CorruptFileError(path, f"not valid JSON ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(value, kind):
        raise CorruptFileError(path, f"holds a JSON {type(value).__name__}, not a {kind.__name__}")
    return value


_HEADER_KEY = "ssl_adv"  # the safetensors metadata entry `save_tensors` writes


def save_tensors(path: str | os.PathLike, tensors: dict, meta: dict | None = None) -> Path:
    """Tensors as one safetensors file, written atomically, whose header holds `meta` (JSON) and the sha256 of the
    tensors: the file checks itself on load (`load_tensors`), and weights and metadata cannot come from two writes."""
    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    # one metadata entry: safetensors writes several in no fixed order, and the same tensors must give the same bytes
    header = json.dumps({"meta": _canonical(meta or {}), "tensors_sha256": state_digest(state)}, sort_keys=True,
                        default=str)
    return atomic_save(lambda tmp: save_file(state, tmp, metadata={_HEADER_KEY: header}), path)


def load_tensors(path: str | os.PathLike) -> tuple[dict, dict]:
    """(tensors, meta) of a file written by `save_tensors`. CorruptFileError naming the path when it is not a
    readable safetensors file (truncated, empty, foreign), has no digest, or its tensors differ from its digest."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
        state = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError, OSError, ...
        raise CorruptFileError(path, f"not a readable safetensors file ({type(e).__name__}: {str(e)[:120]})") from None
    if _HEADER_KEY not in header:
        raise CorruptFileError(path, "no sha256 in its header (written by an older version, cannot be checked)")
    try:
        header = json.loads(header[_HEADER_KEY])
        want, meta = header["tensors_sha256"], header["meta"]
    except (ValueError, KeyError, TypeError):
        raise CorruptFileError(path, "its header's metadata is not what save_tensors writes") from None
    if state_digest(state) != want:
        raise CorruptFileError(path, "its tensors differ from the sha256 recorded in its header (damaged)")
    return state, meta


# What a chain writes into tracked files itself (the cpu figures and the tables the README quotes): a change there is
# the run's output, not uncommitted code, so it does not mark a commit "-dirty".
RUN_OUTPUTS = ("figures", "README.md")


def git_commit(cwd: str | os.PathLike | None = None) -> str:
    """HEAD's short hash, with "-dirty" when a tracked file other than the run's own outputs differs from it."""
    where = cwd or Path(__file__).parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=where,
                             capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() or "unknown"
        # pathspecs from the repository's top, whatever `where` is inside it
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/"]
                               + [f":(top,exclude){p}" for p in RUN_OUTPUTS], cwd=where,
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


def _result_digest(result: Any) -> str:
    return text_digest(json.dumps(result, sort_keys=True, default=str))


def cached_result(cache_dir: str | os.PathLike, name: str, params: dict) -> Any | None:
    """What `cached_json(cache_dir, name, params, ...)` would return without computing, or None when not cached.

    An entry that is not valid JSON, is not an entry of these parameters or fails its sha256 is reported with its
    path and moved aside (`quarantine`), and counts as not cached."""
    path = _cache_path(cache_dir, name, params)
    if not path.is_file():
        return None
    try:
        entry = read_json_checked(path, dict)
        if "result" not in entry:
            raise CorruptFileError(path, f"no `result` in it (keys {sorted(entry)[:5]})")
        if "params" in entry and entry["params"] != json.loads(json.dumps(_canonical(params), default=str)):
            raise CorruptFileError(path, "it was written for other parameters")
        if "sha256" in entry and entry["sha256"] != _result_digest(entry["result"]):
            raise CorruptFileError(path, "its result differs from the sha256 recorded with it (damaged)")
    except CorruptFileError as e:
        quarantine(path, e.reason)
        return None
    return entry["result"]


def cached_json(cache_dir: str | os.PathLike, name: str, params: dict, compute: Callable[[], Any],
                force: bool = False) -> Any:
    """Return the JSON result of `compute()` stored under `<cache_dir>/<name>-<param_hash>.json`, computing it once.

    The stored file carries its parameters; a changed parameter gives a new hash, so only what depends on it reruns.
    """
    path = _cache_path(cache_dir, name, params)
    if not force:
        hit = cached_result(cache_dir, name, params)  # a damaged entry is moved aside and recomputed
        if hit is not None:
            return hit
    result = compute()
    stored = json.loads(json.dumps(result, default=str))  # what a reader gets back, digested as such
    atomic_write_json(path, {"name": name, "params": _canonical(params), "result": stored,
                             "sha256": _result_digest(stored)})
    return result
