"""What a workshop relies on: the runner's progress lines and time estimates, parameters cells rendered from the
profiles, the intervals and detections the figures draw, and the verdict sentences of notebooks 01 and 02."""
import re

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch

from utils import pipeline, plots, stats
from utils.config import KEY_DOCS, PROFILES, format_value, notebook_parameters, parameters_source


# ------------------------------------------------------------------------------------------------ parameters cells

@pytest.mark.parametrize("value, text", [(8 / 255, "8 / 255"), (0.5, "0.5"), (1.0, "1.0"), (0, "0"), (None, "None"),
                                         ("digits", '"digits"'), ([0, 2 / 255, 0.25], "[0, 2 / 255, 0.25]"),
                                         ([[3, 1], [6, 2]], "[[3, 1], [6, 2]]"), (3e-4, "0.0003")])
def test_format_value_writes_knobs_as_a_person_would(value, text):
    assert format_value(value) == text
    assert eval(text) == value  # noqa: S307 - the written source gives back the value itself


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_parameters_source_gives_back_every_knob_with_its_doc(profile):
    for nb in ("01", "02", "03", "04", "05"):
        src = parameters_source(nb, profile)
        ns: dict = {}
        exec(src, ns)  # noqa: S102 - our own rendering
        want = {"profile": profile, "progress": True, **notebook_parameters(profile, nb)}
        assert {k: ns[k] for k in want} == want
        comments = [ln[2:] for ln in src.splitlines() if ln.startswith("# ")]
        assert comments == [KEY_DOCS[k] for k in want]
        assert max(map(len, src.splitlines())) <= 120


def test_write_parameters_cells_rewrites_a_drifted_cell_only(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "notebooks").mkdir()
    good = nbformat.v4.new_code_cell(parameters_source("02"), metadata={"tags": ["parameters"]})
    stale = nbformat.v4.new_code_cell("profile = 'cpu'\nprogress = True\nseed = 0", metadata={"tags": ["parameters"]})
    for name, cell in (("02_a.ipynb", good), ("03_b.ipynb", stale)):
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# x"), cell]),
                       tmp_path / "notebooks" / name)
    assert pipeline.write_parameters_cells(tmp_path) == ["03_b.ipynb"]
    nb = nbformat.read(tmp_path / "notebooks" / "03_b.ipynb", as_version=4)
    assert nb.cells[1].source == parameters_source("03") and nb.cells[0].source == "# x"
    assert pipeline.write_parameters_cells(tmp_path) == []


# ---------------------------------------------------------------------------------------------------- progress

def _nb(n_code: int):
    cells = [nbformat.v4.new_code_cell("p = 1", metadata={"tags": ["parameters"]}),
             nbformat.v4.new_code_cell("p = 2", metadata={"tags": ["injected-parameters"]}),
             nbformat.v4.new_markdown_cell("## Section A")]
    cells += [nbformat.v4.new_code_cell(f"x = {i}") for i in range(n_code)]
    return nbformat.v4.new_notebook(cells=cells)


def test_progress_lines_count_committed_cells_and_estimate_from_the_previous_run():
    lines = []
    nb = _nb(3)
    # the previous executed copy: 1 s per code cell, so from the first code cell on 3 s are left
    prog = pipeline.NotebookProgress("03", lines.append, previous_total=10.0, previous_cells=[0, 0, 0, 1, 1, 1],
                                     after=60.0, heartbeat=0)
    for i in range(len(nb.cells)):
        prog.cell_start(nb, i)
    assert len(lines) == 3, lines  # code cells only: not the parameters, the injected or the markdown cell
    assert lines[0].startswith("    03 cell 3/5 (Section A)")  # numbered as in the committed notebook (5 cells)
    assert re.search(r"about 0:0[23] left; chain about 1:0[23] left", lines[0]), lines[0]
    assert "cell 5/5" in lines[-1]
    # without per-cell durations of the same notebook: from the previous total
    lines.clear()
    prog = pipeline.NotebookProgress("03", lines.append, previous_total=120.0, previous_cells=[1.0], heartbeat=0)
    prog.cell_start(nb, 3)
    assert re.search(r"about (1:5\d|2:00) left", lines[0]) and "chain" not in lines[0]
    lines.clear()
    pipeline.NotebookProgress("03", lines.append, heartbeat=0).cell_start(nb, 3)
    assert "no previous run" in lines[0]


def test_progress_heartbeat_speaks_during_a_long_cell():
    lines = []
    with pipeline.NotebookProgress("04", lines.append, previous_total=0.1, heartbeat=0.05) as prog:
        prog.cell_start(_nb(1), 3)
        import time
        time.sleep(0.3)
    assert any("still running" in ln and "longer than the previous run (0:00)" in ln for ln in lines), lines
    n = len(lines)
    time.sleep(0.15)
    assert len(lines) == n, "the heartbeat must stop with the notebook"


def test_run_chain_logs_cells_and_the_time_left(tiny_repo, tmp_path):
    tiny_repo("07_sleep.ipynb", ("md", "## Sleeping"), "import time\ntime.sleep(0.2)")
    first, second = [], []
    pipeline.run_chain("smoke", root=tmp_path, log=first.append)
    pipeline.run_chain("smoke", root=tmp_path, force=True, log=second.append)
    assert any("07 cell 3/3 (Sleeping)" in ln and "no previous run" in ln for ln in first), first
    assert any("last run 0:0" in ln for ln in second) and any("07 cell 3/3" in ln and "left" in ln for ln in second)


# ---------------------------------------------------------------------------------------------- figures' inputs

def test_accuracy_interval_is_the_bootstrap_over_points():
    lo, hi = stats.accuracy_interval(0.8, 1000)
    assert lo < 0.8 < hi and hi - lo == pytest.approx(2 * 1.96 * np.sqrt(0.8 * 0.2 / 1000), rel=0.15)
    # the same as resampling 1000 right/wrong outcomes directly
    rng = np.random.default_rng(1)
    outcomes = np.r_[np.ones(800), np.zeros(200)]
    direct = np.quantile([rng.choice(outcomes, 1000).mean() for _ in range(2000)], [0.025, 0.975])
    assert (lo, hi) == pytest.approx(tuple(direct), abs=0.006)
    lo_small, hi_small = stats.accuracy_interval(0.8, 100)
    assert hi_small - lo_small > 2.5 * (hi - lo)  # ten times fewer points: about sqrt(10) wider
    assert stats.accuracy_interval(1.0, 50) == (1.0, 1.0)


def test_kept_detections_suppress_overlaps_then_apply_the_threshold():
    d = {"boxes": torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10], [40, 40, 50, 50.]]),
         "scores": torch.tensor([0.9, 0.8, 0.35, 0.7, 0.6]), "labels": torch.tensor([1, 1, 2, 3, 2])}
    kept = plots.kept_detections(d, score_min=0.4, nms_iou=0.3)
    # box 1 overlaps box 0 of its class; box 2 is below the threshold; box 3 is another class (kept)
    assert kept["scores"].tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert kept["labels"].tolist() == [1, 3, 2]


def test_factor_panels_draw_an_interval_per_level():
    rows = [{"method": m, "factor": "batch size", "level": str(b), "clean": 0.8, "robust": r, "eps": 2 / 255,
             "n": 1000} for m in ("simclr", "barlowtwins") for b, r in ((64, 0.60), (128, 0.62))]
    fig = plots.factor_panels(pd.DataFrame(rows), title="t")
    ax = fig.axes[0]
    assert len(ax.containers) == 4  # robust and clean per method, each an errorbar container
    lo, hi = ax.get_ylim()
    assert lo > 0.4 and hi < 0.95  # zoomed to the data so that 2 points can be read


# ------------------------------------------------------------------------------------------------ verdicts 01, 02

def test_clean_accuracy_and_quick_probe_verdicts_state_the_numbers():
    table = pd.DataFrame({"model": ["supervised", "simclr", "byol"] * 2, "task": ["a"] * 3 + ["b"] * 3,
                          "accuracy": [0.9, 0.8, 0.95, 0.5, 0.6, 0.7], "n": [1000] * 3 + [539] * 3})
    text = stats.clean_accuracy_verdict(table)
    assert "a (n=1000): supervised 0.900" in text and "1 of 2 SSL encoders beat supervised" in text
    assert "b (n=539): supervised 0.500" in text and "2 of 2 SSL encoders beat" in text
    enc = pd.DataFrame({"method": ["supervised", "simclr", "byol", "random init"],
                        "probe_accuracy": [0.88, 0.84, 0.73, 0.72], "random_init_accuracy": 0.72})
    text = stats.quick_probe_verdict(enc, margin=0.03)
    assert "1 of 2 SSL encoders beat the random-init encoder by at least 3 points; not: byol." in text
