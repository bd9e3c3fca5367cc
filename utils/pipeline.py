"""The chain runner: executes `notebooks/NN_*.ipynb` in order with papermill, headless.

    python -m utils.pipeline [--profile cpu] [--only 03] [--from 02] [--force]
    python -m utils.pipeline --write-parameters   # rewrite every notebook's parameters cell from utils.config

Executed copies go to `runs/<profile>/`, tidy results to `results/<profile>/`, figures to `figures/` (cpu) or
`figures/<profile>/`. A notebook is skipped when its fingerprint (its source, its parameters, the `utils` sources and
the fingerprints of the notebooks before it) matches its last successful run, unless `--force`.

While a notebook runs, the runner logs each code cell as it starts (cell n of m, elapsed time, and the time left as
estimated from the previous run's durations: per cell from the previous executed copy, per notebook from
`runs/<profile>/state.json`), and a line a minute while one cell runs long, so a headless log never goes quiet for
minutes and stays short (no progress-bar line per update).
"""
from __future__ import annotations

import argparse
import copy
import fcntl
import json
import logging
import os
import random
import signal
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import numpy as np
import torch

from utils import preflight
from utils.config import (DEFAULT_PROFILE, PROFILES, SET_ENV, check_overrides, notebook_parameters, output_dirs,
                          output_root, parameters_source, parse_set)
from utils.encoders import seed_replicates, uses_official_checkpoints
from utils.nbprogress import (ENGINE, NotebookProgress, cell_durations, clock, logged_kernel_manager,
                              register_progress_engine)
from utils.parallel import INTERRUPTED
from utils.runtime import resolve_device
from utils.store import (CorruptFileError, atomic_write_json, file_sha256, param_hash, quarantine, read_json_checked,
                         text_digest)

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

    The notebook's parameters are the truth: `ctx.params` (what provenance and cache keys are made of) holds exactly
    the values the notebook's code uses. When `profile` is not the default, a knob still at its default (the `cpu`
    value written in the parameters cell) takes the profile's value, written back into `namespace` so the
    notebook's code sees it; a knob set to anything else is kept. Both lists are printed.
    """
    root = repo_root()  # the package is installed editable, so its folder is inside the repository
    os.chdir(root)
    expected = notebook_parameters(profile, notebook)
    missing = [k for k in expected if k not in namespace]
    if missing:
        raise NameError(f"notebook {notebook}'s parameters cell lacks {missing}: add them (the profile "
                        f"{profile!r} defines them in utils/config.py)")
    params = resolve_parameters(profile, notebook, namespace)
    if "device" in params:  # "auto" becomes the device it means; the parameter keeps what the user wrote
        namespace["device"] = str(resolve_device(params["device"]))
        if namespace["device"] != params["device"]:
            print(f"device {params['device']!r} -> {namespace['device']!r}")
    preflight.check(profile, [notebook], params={notebook: params})
    seed = int(params.get("seed", 0))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    dirs = output_dirs(profile)
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


def _same(a, b) -> bool:
    """Equal as parameters (8/255 computed two ways, 0 and 0.0, a tuple and a list are the same value)."""
    return param_hash({"v": a}) == param_hash({"v": b})


def resolve_parameters(profile: str, notebook: str, namespace: dict, log=print) -> dict:
    """The values notebook `notebook` runs with: each knob as the notebook holds it, except that with a profile other
    than the default a knob still at its default (cpu) value takes the profile's value (written back into
    `namespace`). Prints which knobs came from the profile and which were set in the notebook."""
    expected, defaults = notebook_parameters(profile, notebook), notebook_parameters(DEFAULT_PROFILE, notebook, {})
    taken, kept = [], []
    for k, value in expected.items():
        mine = namespace[k]
        if profile != DEFAULT_PROFILE and k in defaults and _same(mine, defaults[k]) and not _same(mine, value):
            namespace[k] = copy.deepcopy(value)
            taken.append(k)
        elif not _same(mine, value):
            kept.append(f"{k}={mine!r} (profile {profile}: {value!r})")
    if taken:
        log(f"profile {profile!r}: {len(taken)} knob(s) left at their cpu default take the {profile} value: "
            f"{', '.join(taken)}")
    if kept:
        log(f"set in this notebook, differing from profile {profile!r}: {'; '.join(kept)}")
    return {k: namespace[k] for k in expected}


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


def _execute(nb_path: Path, out_path: Path, params: dict, root: Path,
             progress: NotebookProgress | None = None) -> None:
    import papermill as pm

    out_path.parent.mkdir(parents=True, exist_ok=True)
    register_progress_engine()
    kernel_log = out_path.with_suffix(".kernel.log")
    try:
        with progress or NotebookProgress(nb_path.stem, lambda *_: None, heartbeat=0):
            pm.execute_notebook(str(nb_path), str(out_path), parameters=params, kernel_name=KERNEL_NAME,
                                cwd=str(root), progress_bar=False, log_output=False, engine_name=ENGINE,
                                progress=progress, kernel_manager_class=logged_kernel_manager(kernel_log))
    except pm.PapermillExecutionError as e:
        where = _failing_cell(out_path)
        raise NotebookFailed(
            f"{nb_path.name} failed in {where} ({e.ename}: {e.evalue}).\n"
            f"The executed copy with the traceback is {out_path} (the kernel's own messages: {kernel_log})"
        ) from None
    except Exception as e:
        if type(e).__name__ == "NoSuchKernel":
            raise NotebookFailed(f"kernel {KERNEL_NAME!r} is not registered: run `make setup` (it runs "
                                 f"`python -m ipykernel install --sys-prefix --name {KERNEL_NAME}`)") from None
        raise


# What each notebook leaves behind, by output folder (`utils.config.output_dirs`); a table's `.provenance.json`
# counts with it. The runner counts a notebook as done only when its run finished and each of these files exists
# with the sha256 recorded then; the chain test checks them too. A new notebook adds its line here.
NOTEBOOK_OUTPUTS: dict[str, dict[str, list[str]]] = {
    "01": {"results_dir": ["01_encoders.csv", "01_seeds.csv"], "cache_dir": ["encoders/01_manifest.json"],
           "figures_dir": ["01_samples.png", "01_augmented_views.png", "01_pretraining_loss.png",
                           "01_quick_probe.png", "01_seed_spread.png"]},
    "02": {"results_dir": ["02_linear_eval.csv", "02_seeds.csv"], "cache_dir": ["classifiers/linear_manifest.json"],
           "figures_dir": ["02_clean_accuracy.png"]},
    "03": {"results_dir": ["03_teaching.csv", "03_robustness.csv", "03_gap_ci.csv", "03_seed_gaps.csv"],
           "figures_dir": ["03_teaching_perturbations.png", "03_teaching_pgd_trace.png", "03_robust_vs_eps.png",
                           "03_heatmap.png", "03_gap_ci.png", "03_gap_ci_pgd.png", "03_seed_gaps.png",
                           "03_examples.png"]},
    "04": {"results_dir": ["04_regimes.csv", "04_factors.csv"], "figures_dir": ["04_regimes_gap.png", "04_factors.png"]},
    "05": {"results_dir": ["05_dense.csv"],
           "figures_dir": ["05_dense_vs_eps.png", "05_gap_dense_vs_cls.png", "05_examples.png"]},
}
# Outputs of notebook 01 that exist only when it trains the encoders (not with official checkpoints, as in `paper`).
TRAINED_ONLY = {"01_pretraining_loss.png"}
# Outputs that hold something only when notebook 01 trains some methods with several seeds (`seeds` > 1): the
# figures are drawn and the tables have rows only then (the tables are written, empty, in any case).
SEEDED_ONLY = {"01_seed_spread.png", "03_seed_gaps.png", "01_seeds.csv", "02_seeds.csv", "03_seed_gaps.csv"}


def declared_outputs(profile: str, notebook: str, root: str | os.PathLike | None = None) -> list[Path]:
    """The files notebook `notebook` must leave behind in `profile` (under `root`, default `output_root()`)."""
    dirs = output_dirs(profile, root)
    params01 = notebook_parameters(profile, "01")
    official, seeded = uses_official_checkpoints(params01), bool(seed_replicates(params01))
    out = []
    for folder, names in NOTEBOOK_OUTPUTS.get(notebook, {}).items():
        for name in names:
            if (official and name in TRAINED_ONLY) or (not seeded and name in SEEDED_ONLY):
                continue
            out.append(dirs[folder] / name)
            if name.endswith(".csv"):
                out.append(dirs[folder] / (name + ".provenance.json"))
    return out


class ChainLocked(RuntimeError):
    """Another run of the same profile holds the profile's lock."""


class UnknownNotebook(ValueError):
    """--only or --from names a notebook that does not exist."""


@contextmanager
def _profile_lock(runs_dir: Path, profile: str, log, timeout: float | None):
    """One chain per profile at a time (an OS lock on `runs/<profile>/.lock`, released even by kill -9): a second
    run waits, saying which process it waits for, at most `timeout` seconds (None: as long as it takes)."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / ".lock"
    f = open(path, "a+")
    try:
        t0, said = time.monotonic(), False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "an unknown process"
                if timeout is not None and time.monotonic() - t0 >= timeout:
                    raise ChainLocked(f"another run of profile {profile!r} is in progress ({holder}; lock {path}): "
                                      f"wait for it to finish, or stop that process") from None
                if not said:
                    log(f"waiting for the run of profile {profile!r} in progress ({holder}) to finish ...")
                    said = True
                time.sleep(1.0)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        yield
    finally:
        f.close()  # closing the file releases the lock


def _load_state(state_path: Path) -> dict:
    """The runner's record of the profile's notebooks; a damaged file is moved aside (reported) and rebuilt: every
    notebook is then checked and rerun."""
    if not state_path.is_file():
        return {}
    try:
        state = read_json_checked(state_path, dict)
        if not all(isinstance(v, dict) for v in state.values()):
            raise CorruptFileError(state_path, "its entries are not records of notebook runs")
        return state
    except CorruptFileError as e:
        quarantine(state_path, f"{e.reason}; the chain's state is rebuilt (every notebook runs again)")
        return {}


def _check_selection(keys: list[str], only: list[str] | None, start: str | None) -> None:
    """--only and --from must name notebooks that exist (a typo must not end in "finished" with nothing run)."""
    for k in (only or []) + ([start] if start is not None else []):
        if k not in keys:
            raise UnknownNotebook(f"no notebook {k!r}: the notebooks are {', '.join(keys)} (notebooks/NN_*.ipynb)")


def _why_rerun(prev: dict, fp: str, out: Path, outputs: list[Path], out_root: Path) -> str | None:
    """Why a notebook must run again (None: its last run finished and left every output as recorded)."""
    if not prev:
        return "never run"
    if prev.get("status") != "done":
        return f"its last run did not finish ({prev.get('status', 'unknown')})"
    if prev.get("fingerprint") != fp:
        return "changed since its last run"
    if not out.is_file():
        return f"its executed copy {out.name} is missing"
    recorded = prev.get("outputs") or {}
    for p in outputs:
        name = str(p.relative_to(out_root))
        if not p.is_file():
            return f"{name} is missing"
        if recorded.get(name) != file_sha256(p):
            return f"{name} differs from what its last run wrote"
    return None


def _upstream(fp: str, entry: dict) -> str:
    """What a notebook's fingerprint takes from the one before it: that one's fingerprint and outputs, so a notebook
    reruns when what it reads changed."""
    return text_digest(json.dumps({"fingerprint": fp, "outputs": entry.get("outputs")}, sort_keys=True))


def run_chain(profile: str = DEFAULT_PROFILE, only: list[str] | None = None, start: str | None = None,
              force: bool = False, root: Path | None = None, log=print,
              lock_timeout: float | None = None, overrides: dict | None = None) -> list[dict]:
    """Run the notebooks of a profile in order, with `overrides` ({key: value}, `--set`) applied to every notebook
    that takes the key (an unknown key is a ValueError listing the keys); see `_run_chain`."""
    overrides = dict(overrides or {})
    if profile in PROFILES:
        check_overrides(profile, overrides)
    before = os.environ.get(SET_ENV)
    if overrides:  # seen by this process's notebook_parameters and by the kernels it starts (they inherit it)
        os.environ[SET_ENV] = json.dumps(overrides)
    else:
        os.environ.pop(SET_ENV, None)
    try:
        return _run_chain(profile, only, start, force, root, log, lock_timeout)
    finally:
        if before is None:
            os.environ.pop(SET_ENV, None)
        else:
            os.environ[SET_ENV] = before


def _run_chain(profile: str, only: list[str] | None, start: str | None, force: bool, root: Path | None, log,
               lock_timeout: float | None) -> list[dict]:
    """Run the notebooks of a profile in order; return one record per notebook (name, status, seconds).

    A notebook is skipped only when its last run finished, its fingerprint is unchanged (its source, parameters, the
    `utils` sources, and the fingerprint and outputs of the notebook before it) and its executed copy and every
    output it declares (`NOTEBOOK_OUTPUTS`) exist with the sha256 recorded when it finished. A run is recorded in
    `runs/<profile>/state.json` as running before it starts, then as done, failed or interrupted; a damaged state
    file is moved aside and rebuilt. One run per profile at a time (`lock_timeout`: seconds to wait for another,
    None = as long as it takes). `root`: the repository; when given, outputs go under it too (else under
    `utils.config.output_root()`). An unknown notebook in `only` or `start` is a ValueError.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    out_root = Path(root) if root is not None else output_root()
    root = Path(root) if root is not None else repo_root()
    runs_dir = output_dirs(profile, out_root)["runs_dir"]
    state_path = runs_dir / "state.json"
    notebooks = list_notebooks(root)
    if not notebooks:
        raise FileNotFoundError(f"no notebooks/NN_*.ipynb under {root}")
    _check_selection([nb.name[:2] for nb in notebooks], only, start)
    with _profile_lock(runs_dir, profile, log, lock_timeout):
        state = _load_state(state_path)
        utils_digest = _utils_digest(root)

        def status(nb: Path, upstream: str) -> tuple[dict, str, list[Path], str | None]:
            key = nb.name[:2]
            params = {**notebook_parameters(profile, key), "progress": False}
            fp = fingerprint(nb, params, upstream, utils_digest)
            outputs = declared_outputs(profile, key, out_root)
            return params, fp, outputs, "forced" if force else _why_rerun(state.get(nb.name, {}), fp,
                                                                          runs_dir / nb.name, outputs, out_root)

        # first what will run, from the state as it is (a notebook after one that runs runs too), for time estimates
        previous, upstream, any_runs, will_run = [], "", False, []
        for nb in notebooks:
            key = nb.name[:2]
            selected = (only is None or key in only) and (start is None or key >= start)
            _, fp, _, why = status(nb, upstream)
            any_runs = any_runs or (selected and why is not None)
            if selected and any_runs:
                will_run.append(key)
            previous.append(state.get(nb.name, {}).get("seconds") if selected and any_runs else None)
            upstream = _upstream(fp, state.get(nb.name, {}))
        preflight.check(profile, will_run)  # every missing input at once, before any compute
        records, upstream = [], ""
        for i, nb in enumerate(notebooks, 1):
            key, out = nb.name[:2], runs_dir / nb.name
            params, fp, outputs, why = status(nb, upstream)  # with the outputs of the notebooks that just ran
            prev = state.get(nb.name, {})
            tag = f"[{i}/{len(notebooks)}] {nb.stem} ({profile})"
            if not ((only is None or key in only) and (start is None or key >= start)):
                records.append({"notebook": nb.name, "status": "not selected", "seconds": 0.0})
            elif why is None:
                log(f"{tag}: unchanged since {prev.get('finished')}, skipped")
                records.append({"notebook": nb.name, "status": "skipped", "seconds": 0.0})
            else:
                after = sum(s or 0.0 for s in previous[i:])
                last = previous[i - 1]
                log(f"{tag}: running ({why}) ..." + (f" (last run {clock(last)}; chain about "
                                                     f"{clock(last + after)} left)" if last else ""))
                state[nb.name] = {"fingerprint": fp, "status": "running", "pid": os.getpid(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
                atomic_write_json(state_path, state)
                t0 = time.perf_counter()
                try:
                    _execute(nb, out, params, root, NotebookProgress(key, log, previous_total=last, after=after,
                                                                     previous_cells=cell_durations(out)))
                    missing = [str(p) for p in outputs if not p.is_file()]
                    if missing:
                        raise NotebookFailed(f"{nb.name} finished but did not write {', '.join(missing)} (declared in "
                                             f"utils/pipeline.py NOTEBOOK_OUTPUTS); the executed copy is {out}")
                except BaseException as e:
                    state[nb.name].update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                                          finished=time.strftime("%Y-%m-%d %H:%M:%S"), error=str(e)[:2000])
                    atomic_write_json(state_path, state)
                    raise
                dt = time.perf_counter() - t0
                state[nb.name] = {"fingerprint": fp, "status": "done", "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                                  "seconds": round(dt, 1),
                                  "outputs": {str(p.relative_to(out_root)): file_sha256(p) for p in outputs}}
                atomic_write_json(state_path, state)
                log(f"{tag}: done in {dt:.0f} s -> {out}")
                records.append({"notebook": nb.name, "status": "ran", "seconds": dt})
            upstream = _upstream(fp, state.get(nb.name, {}))
        return records


def write_parameters_cells(root: Path | None = None) -> list[str]:
    """Rewrite the `parameters` cell of every notebook as `utils.config.parameters_source` renders it (cpu values,
    one comment per knob from KEY_DOCS), so the cells cannot drift from the profiles; other cells are untouched.
    Returns the names of the notebooks that changed."""
    changed = []
    for path in list_notebooks(root or repo_root()):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
                source = parameters_source(path.name[:2])
                if cell.source != source:
                    cell.source = source
                    changed.append(path.name)
        if path.name in changed:
            nbformat.write(nb, path)
    return changed


def _quiet_interrupt(signum, frame):
    """Ctrl-C: what the notebook client and asyncio log while the run unwinds (the interrupted cell's task, the
    kernel's shutdown) is noise once the user stopped the run; the runner says one line instead."""
    logging.disable(logging.CRITICAL)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=DEFAULT_PROFILE, choices=sorted(PROFILES))
    ap.add_argument("--only", action="append", help="run only notebook NN (repeatable), e.g. --only 03")
    ap.add_argument("--from", dest="start", help="run from notebook NN onward, e.g. --from 02")
    ap.add_argument("--force", action="store_true", help="rerun even when nothing changed")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a parameter in every notebook that takes it (repeatable); VALUE is read as a "
                         "Python literal where it is one (8 / 255, [0, 0.5], None), else as a string (a path)")
    ap.add_argument("--write-parameters", action="store_true",
                    help="rewrite every notebook's parameters cell from utils.config (cpu values, KEY_DOCS comments)")
    args = ap.parse_args(argv)
    if args.write_parameters:
        print("rewrote the parameters cell of: " + (", ".join(write_parameters_cells()) or "none (all current)"))
        return 0
    only = [o.zfill(2) for o in args.only] if args.only else None
    try:
        overrides = parse_set(args.set)
        check_overrides(args.profile, overrides)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    before = signal.signal(signal.SIGINT, _quiet_interrupt)
    try:
        run_chain(args.profile, only=only, start=args.start.zfill(2) if args.start else None, force=args.force,
                  log=lambda *a: print(*a, flush=True),  # flushed: a piped CI log shows each line as it happens
                  overrides=overrides)
    except (NotebookFailed, ChainLocked, preflight.PreflightError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except UnknownNotebook as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, before)
    print(f"chain ({args.profile}) finished in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
