"""Progress of a notebook run by the chain runner: a papermill engine that reports each code cell as it starts
(`NotebookProgress`: cell n of m, elapsed, time left from the previous run's durations, a heartbeat while a cell runs
long) and a kernel manager that keeps the kernel's own log in a file. Used by `utils.pipeline`.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager

def clock(seconds: float) -> str:
    """Seconds as m:ss (h:mm:ss from an hour on)."""
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def cell_durations(executed: Path) -> list[float] | None:
    """Seconds per cell of a previous executed copy (papermill records them), in its cell order; None if absent."""
    try:
        cells = json.loads(executed.read_text())["cells"]
        return [float((c.get("metadata", {}).get("papermill", {}) or {}).get("duration") or 0.0) for c in cells]
    except Exception:  # noqa: BLE001 - no usable previous copy: estimate from the notebook's total instead
        return None


class NotebookProgress:
    """Logs a notebook's progress while papermill runs it: one line when each code cell starts (cell n of m in the
    committed notebook's numbering, its section, elapsed time, time left) and one line per `heartbeat` seconds while
    a cell runs long. Time left comes from the previous run: per cell when the previous executed copy has the same
    cells, else the previous total; `after` seconds (the notebooks still to run) are added for the chain."""

    def __init__(self, name: str, log, *, previous_total: float | None = None,
                 previous_cells: list[float] | None = None, after: float = 0.0, heartbeat: float = 60.0):
        self.name, self.log, self.after, self.heartbeat = name, log, after, heartbeat
        self.previous_total, self.previous_cells = previous_total, previous_cells
        self.t0 = self.t_cell = time.perf_counter()
        self.cell_label, self.remaining_from = "", None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self):
        if self.heartbeat > 0:
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def left(self) -> float | None:
        """Estimated seconds left in this notebook, or None without a previous run."""
        elapsed = time.perf_counter() - self.t0
        if self.remaining_from is not None:
            in_cell = time.perf_counter() - self.t_cell
            return max(sum(self.previous_cells[self.remaining_from:]) - in_cell, 0.0)
        if self.previous_total is not None:
            return max(self.previous_total - elapsed, 0.0)
        return None

    def _status(self) -> str:
        elapsed = time.perf_counter() - self.t0
        left = self.left()
        if left is None:
            return f"{clock(elapsed)} elapsed (no previous run to estimate the time left)"
        if left == 0 and self.previous_total:
            return f"{clock(elapsed)} elapsed, longer than the previous run ({clock(self.previous_total)})"
        chain = f"; chain about {clock(left + self.after)} left" if self.after > 0 else ""
        return f"{clock(elapsed)} elapsed, about {clock(left)} left{chain}"

    def cell_start(self, nb, index: int) -> None:
        """Papermill starts cell `index` of the executed notebook `nb` (which holds the injected parameters)."""
        cells = nb.cells
        committed = [i for i, c in enumerate(cells)
                     if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
        if (index not in committed or cells[index].cell_type != "code"
                or "parameters" in cells[index].get("metadata", {}).get("tags", [])):
            return
        self.t_cell = time.perf_counter()
        same = self.previous_cells is not None and len(self.previous_cells) == len(cells)
        self.remaining_from = index if same else None
        section = ""
        for c in cells[:index]:
            if c.cell_type == "markdown":
                heads = [ln.lstrip("#").strip() for ln in c.source.splitlines() if ln.startswith("#")]
                section = heads[-1] if heads else section
        if not section:
            section = next((ln for ln in cells[index].source.splitlines() if ln.strip()), "")
        self.cell_label = f"cell {committed.index(index) + 1}/{len(committed)}"
        self.log(f"    {self.name} {self.cell_label} ({section[:60]}): {self._status()}")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            if self.cell_label:
                self.log(f"    {self.name} {self.cell_label} still running "
                         f"({clock(time.perf_counter() - self.t_cell)} in this cell): {self._status()}")


ENGINE = "ssl-adv-progress"


def register_progress_engine() -> None:
    """Register a papermill engine that is papermill's own nbclient engine plus a `progress` hook that sees each cell
    start (papermill's engine hooks: `NotebookExecutionManager.cell_start`). Registering again replaces it."""
    from papermill.engines import NBClientEngine, papermill_engines

    class ProgressEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, progress=None, **kwargs):
            if progress is not None:
                start = nb_man.cell_start

                def cell_start(cell, cell_index=None, **kw):
                    try:
                        progress.cell_start(nb_man.nb, cell_index)
                    except Exception:  # noqa: BLE001 - a progress line must never break a run
                        pass
                    return start(cell, cell_index, **kw)

                nb_man.cell_start = cell_start
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(ENGINE, ProgressEngine)


class LoggedKernelManager(AsyncKernelManager):
    """A kernel whose own stdout/stderr (its start-up warnings, its worker processes' messages, the tracebacks of a
    shutdown after Ctrl-C) go to the file `log_path`, not the terminal: an interrupted run ends in one line. Passed
    to papermill as a class (`logged_kernel_manager`), so that nbclient owns the manager and shuts the kernel down."""

    log_path: Path | None = None

    async def start_kernel(self, **kw):
        with open(self.log_path or os.devnull, "ab") as log:  # the kernel process keeps its own copy of the file
            return await super().start_kernel(stdout=log, stderr=log, **kw)


def logged_kernel_manager(log_path: Path) -> type:
    """A `LoggedKernelManager` class writing to `log_path` (emptied first)."""
    log_path.unlink(missing_ok=True)
    return type("LoggedKernelManager", (LoggedKernelManager,), {"log_path": log_path})
