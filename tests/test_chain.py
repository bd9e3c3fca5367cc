"""The notebook chain: committed notebooks are clean and parameterized; the smoke chain runs end to end."""
import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from utils import pipeline
from utils.profiles import notebook_parameters

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = pipeline.list_notebooks(ROOT)

# What each notebook must leave behind in the smoke profile (checked for the notebooks that exist).
EXPECTED = {
    "01": {"figures": ["01_samples.png", "01_pretraining_loss.png", "01_augmented_views.png", "01_quick_probe.png"],
           "tables": ["01_encoders.csv"]},
    "02": {"figures": ["02_clean_accuracy.png"], "tables": ["02_linear_eval.csv"]},
    "03": {"figures": ["03_robust_vs_eps.png", "03_heatmap.png", "03_gap_ci.png", "03_examples.png"],
           "tables": ["03_robustness.csv"]},
    "04": {"figures": ["04_regimes_gap.png", "04_factors.png"], "tables": ["04_regimes.csv", "04_factors.csv"]},
    "05": {"figures": ["05_dense_vs_eps.png", "05_gap_dense_vs_cls.png", "05_examples.png"], "tables": ["05_dense.csv"]},
}


def _parameters_cell(nb):
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one code cell must be tagged 'parameters'"
    return cells[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_is_clean_and_parameterized(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == pipeline.KERNEL_NAME
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    ns: dict = {}
    exec(_parameters_cell(nb).source, ns)
    names = {k for k in ns if not k.startswith("__")}
    expected = set(notebook_parameters("cpu", path.name[:2])) | {"profile", "progress"}
    assert names == expected, f"parameters cell differs from the profile: {sorted(names ^ expected)}"
    # The defaults written in the notebook are the cpu profile's, so a notebook opened by hand runs as `cpu`.
    cpu = notebook_parameters("cpu", path.name[:2])
    for k, v in cpu.items():
        assert ns[k] == pytest.approx(v) if isinstance(v, float) else ns[k] == v, k


def test_failure_names_notebook_cell_and_copy(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "utils").mkdir()
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("profile = 'smoke'\nprogress = False", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("raise ValueError('broken on purpose')"),
    ])
    nb.metadata["kernelspec"] = {"name": pipeline.KERNEL_NAME, "display_name": "x", "language": "python"}
    nbformat.write(nb, tmp_path / "notebooks" / "01_broken.ipynb")
    with pytest.raises(pipeline.NotebookFailed) as e:
        pipeline.run_chain("smoke", root=tmp_path, log=lambda *_: None)
    msg = str(e.value)
    assert "01_broken.ipynb" in msg and "cell 3" in msg and "broken on purpose" in msg
    assert str(tmp_path / "runs" / "smoke" / "01_broken.ipynb") in msg


@pytest.mark.slow
def test_smoke_chain_end_to_end():
    """Runs every notebook in the smoke profile, then checks figures and recorded numbers; a rerun skips all."""
    records = pipeline.run_chain("smoke", force=True, log=print)
    assert [r["status"] for r in records] == ["ran"] * len(NOTEBOOKS)
    figures, results = ROOT / "figures" / "smoke", ROOT / "results" / "smoke"
    for nb in NOTEBOOKS:
        exp = EXPECTED.get(nb.name[:2], {})
        for f in exp.get("figures", []):
            p = figures / f
            assert p.is_file() and p.stat().st_size > 5000, f"{nb.name} did not draw {f}"
        for t in exp.get("tables", []):
            df = pd.read_csv(results / t)
            assert len(df) > 0, f"{t} is empty"
            if "accuracy" in df:
                assert df["accuracy"].between(0, 1).all(), f"{t}: accuracies outside [0, 1]"
            prov = json.loads((results / (t + ".provenance.json")).read_text())
            assert prov["profile"] == "smoke" and prov["git_commit"] and prov["versions"]["torch"]
    again = pipeline.run_chain("smoke", log=print)
    assert [r["status"] for r in again] == ["skipped"] * len(NOTEBOOKS)
