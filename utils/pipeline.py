"""The chain runner: executes `notebooks/NN_*.ipynb` in order with papermill, headless.

    python -m utils.pipeline [--profile cpu] [--only 03] [--from 02] [--force]

Executed copies go to `runs/<profile>/`, tidy results to `results/<profile>/`, figures to `figures/` (cpu) or
`figures/<profile>/`. A notebook is skipped when its fingerprint (its source, its parameters, the `utils` sources and
the fingerprints of the notebooks before it) matches its last successful run, unless `--force`.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from utils.config import DEFAULT_PROFILE, PROFILES, notebook_parameters, output_dirs
from utils.store import atomic_write_json, text_digest

KERNEL_NAME = "ssl-adv"


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The folder holding pyproject.toml and notebooks/, found upward from `start` (default: this package)."""
    here = Path(start or Path(__file__).resolve().parent).resolve()
    for p in (here, *here.parents):
        if (p / "pyproject.toml").is_file() and (p / "notebooks").is_dir():
            return p
    raise FileNotFoundError(f"no repository root (pyproject.toml + notebooks/) above {here}")


@dataclass
class NotebookContext:
    """What a notebook needs after its `parameters` cell: its profile, parameters and output folders."""

    profile: str
    notebook: str
    params: dict
    root: Path
    results_dir: Path
    figures_dir: Path
    cache_dir: Path
    extra: dict = field(default_factory=dict)

    def figure(self, name: str) -> Path:
        return self.figures_dir / name

    def result(self, name: str) -> Path:
        return self.results_dir / name


def notebook_setup(profile: str, notebook: str, namespace: dict) -> NotebookContext:
    """Call right after the `parameters` cell: `ctx = notebook_setup(profile, "03", globals())`.

    Moves to the repository root (so relative paths work both in JupyterLab and under papermill), checks that every
    knob of the profile is defined in the notebook, seeds the RNGs, sets the plotting theme, and creates the output
    folders. Values set in the notebook win over the profile's (a researcher may change a knob by hand).
    """
    root = repo_root()  # the package is installed editable, so its folder is inside the repository
    os.chdir(root)
    expected = notebook_parameters(profile, notebook)
    missing = [k for k in expected if k not in namespace]
    if missing:
        raise NameError(f"notebook {notebook}'s parameters cell lacks {missing}: add them (the profile "
                        f"{profile!r} defines them in utils/config.py)")
    params = {k: namespace[k] for k in expected}
    seed = int(params.get("seed", 0))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    dirs = {k: root / v for k, v in output_dirs(profile).items()}
    for k in ("results_dir", "figures_dir", "cache_dir"):
        dirs[k].mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib
        import seaborn as sns

        sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
        matplotlib.rcParams["figure.dpi"] = 110
        matplotlib.rcParams["savefig.dpi"] = 120
        matplotlib.rcParams["savefig.bbox"] = "tight"
    except ImportError:
        pass
    return NotebookContext(profile, notebook, params, root, dirs["results_dir"], dirs["figures_dir"],
                           dirs["cache_dir"])


def list_notebooks(root: Path) -> list[Path]:
    return sorted(p for p in (root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _source_digest(nb_path: Path) -> str:
    """Hash of a notebook's cell sources only (outputs and metadata do not matter)."""
    nb = json.loads(nb_path.read_text())
    src = [(c["cell_type"], "".join(c["source"]) if isinstance(c["source"], list) else c["source"])
           for c in nb["cells"]]
    return text_digest(json.dumps(src))


def _utils_digest(root: Path) -> str:
    """Hash of every source file of the package, subpackages included."""
    files = sorted((root / "utils").rglob("*.py"))
    return text_digest(*(part for p in files for part in (str(p.relative_to(root)), p.read_bytes())))


def fingerprint(nb_path: Path, params: dict, upstream: str, utils_digest: str) -> str:
    blob = json.dumps({"nb": _source_digest(nb_path), "params": params, "upstream": upstream,
                       "utils": utils_digest}, sort_keys=True, default=str)
    return text_digest(blob)[:16]


class NotebookFailed(RuntimeError):
    pass


def _failing_cell(executed: Path) -> str:
    """'cell N: <first line>' of the failing cell, N counted in the committed notebook (1-based, all cells)."""
    try:
        cells = json.loads(executed.read_text())["cells"]
    except Exception:
        return "an unknown cell"
    n = 0
    for c in cells:
        tags = c.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags or "papermill-error-cell-tag" in tags:
            continue  # cells papermill added, not in the committed notebook
        n += 1
        if any(o.get("output_type") == "error" for o in c.get("outputs", [])):
            src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            first = next((line for line in src.splitlines() if line.strip()), "")
            return f"cell {n}: `{first[:80]}`"
    return "an unknown cell"


def _execute(nb_path: Path, out_path: Path, params: dict, root: Path) -> None:
    import papermill as pm

    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(str(nb_path), str(out_path), parameters=params, kernel_name=KERNEL_NAME,
                            cwd=str(root), progress_bar=False, log_output=False)
    except pm.PapermillExecutionError as e:
        where = _failing_cell(out_path)
        raise NotebookFailed(
            f"{nb_path.name} failed in {where} ({e.ename}: {e.evalue}).\n"
            f"The executed copy with the traceback is {out_path}") from None
    except Exception as e:
        if type(e).__name__ == "NoSuchKernel":
            raise NotebookFailed(f"kernel {KERNEL_NAME!r} is not registered: run `make setup` (it runs "
                                 f"`python -m ipykernel install --sys-prefix --name {KERNEL_NAME}`)") from None
        raise


def run_chain(profile: str = DEFAULT_PROFILE, only: list[str] | None = None, start: str | None = None,
              force: bool = False, root: Path | None = None, log=print) -> list[dict]:
    """Run the notebooks of a profile in order; return one record per notebook (name, status, seconds)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    root = root or repo_root()
    dirs = output_dirs(profile)
    runs_dir = root / dirs["runs_dir"]
    state_path = runs_dir / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    notebooks = list_notebooks(root)
    if not notebooks:
        raise FileNotFoundError(f"no notebooks/NN_*.ipynb under {root}")
    utils_digest = _utils_digest(root)
    records, upstream = [], ""
    for i, nb in enumerate(notebooks, 1):
        key = nb.name[:2]
        params = {**notebook_parameters(profile, key), "progress": False}
        fp = fingerprint(nb, params, upstream, utils_digest)
        upstream = fp
        out = runs_dir / nb.name
        selected = (only is None or key in only) and (start is None or key >= start)
        tag = f"[{i}/{len(notebooks)}] {nb.stem} ({profile})"
        if not selected:
            records.append({"notebook": nb.name, "status": "not selected", "seconds": 0.0})
            continue
        prev = state.get(nb.name, {})
        if not force and prev.get("fingerprint") == fp and out.is_file():
            log(f"{tag}: unchanged since {prev.get('finished')}, skipped")
            records.append({"notebook": nb.name, "status": "skipped", "seconds": 0.0})
            continue
        log(f"{tag}: running ...")
        t0 = time.perf_counter()
        _execute(nb, out, params, root)
        dt = time.perf_counter() - t0
        state[nb.name] = {"fingerprint": fp, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(dt, 1)}
        atomic_write_json(state_path, state)
        log(f"{tag}: done in {dt:.0f} s -> {out.relative_to(root)}")
        records.append({"notebook": nb.name, "status": "ran", "seconds": dt})
    return records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=DEFAULT_PROFILE, choices=sorted(PROFILES))
    ap.add_argument("--only", action="append", help="run only notebook NN (repeatable), e.g. --only 03")
    ap.add_argument("--from", dest="start", help="run from notebook NN onward, e.g. --from 02")
    ap.add_argument("--force", action="store_true", help="rerun even when nothing changed")
    args = ap.parse_args(argv)
    only = [o.zfill(2) for o in args.only] if args.only else None
    t0 = time.perf_counter()
    try:
        run_chain(args.profile, only=only, start=args.start.zfill(2) if args.start else None, force=args.force)
    except NotebookFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"chain ({args.profile}) finished in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
