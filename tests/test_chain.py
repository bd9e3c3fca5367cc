"""The notebook chain: committed notebooks are clean and parameterized; the smoke chain runs end to end."""
import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from utils import pipeline
from utils.config import notebook_parameters

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


@pytest.fixture(scope="module")
def smoke_chain():
    """Runs every notebook in the smoke profile once (forced) for the tests below; returns the run records."""
    return pipeline.run_chain("smoke", force=True, log=print)


def _table(name):
    return pd.read_csv(ROOT / "results" / "smoke" / name)


@pytest.mark.slow
def test_smoke_chain_end_to_end(smoke_chain):
    """Every notebook ran, drew its figures and wrote its tables with provenance; a rerun skips all."""
    assert [r["status"] for r in smoke_chain] == ["ran"] * len(NOTEBOOKS)
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


def _whitebox(df):
    return df[~df["attack"].str.startswith("transfer") & (df["attack"] != "square")]


@pytest.mark.slow
def test_03_has_a_row_for_every_model_task_attack_eps(smoke_chain):
    p, common = notebook_parameters("smoke", "03"), notebook_parameters("smoke", "01")
    tasks = ["fashion_mnist", p["transfer_task"]]
    settings = [(a, "linf", e) for a in p["linf_attacks"] for e in p["eps_linf"]] + \
               [(a, "l2", e) for a in p["l2_attacks"] for e in p["eps_l2"]]
    expected = {(m, t, a, n, round(e, 8)) for m in common["methods"] for t in tasks for a, n, e in settings}
    wb = _whitebox(_table("03_robustness.csv"))
    got = [(r.model, r.task, r.attack, r.norm, round(r.eps, 8)) for r in wb.itertuples()]
    assert len(got) == len(set(got)), "duplicate rows in 03_robustness.csv"
    assert set(got) == expected, f"missing {sorted(expected - set(got))[:5]}, extra {sorted(set(got) - expected)[:5]}"
    # Every row states its attack setting, and robust accuracy never rises with eps within one sweep.
    assert wb[["steps", "restarts", "n"]].notna().all().all()
    for _, g in wb.groupby(["model", "task", "attack", "norm"]):
        acc = g.sort_values("eps")["accuracy"].to_numpy()
        assert (acc[1:] <= acc[:-1] + 1e-9).all(), g
    # Black-box check and transfer attacks in both directions are in the same table.
    df = _table("03_robustness.csv")
    assert set(df[df.attack == "square"].model) == set(common["methods"])
    sources = set(df[df.attack.str.startswith("transfer")].attack)
    assert "transfer-pgd<supervised" in sources and len(sources) == len(common["methods"])


@pytest.mark.slow
def test_03_accuracy_at_eps0_is_the_clean_accuracy_of_02(smoke_chain):
    assert notebook_parameters("smoke", "02")["n_test"] == notebook_parameters("smoke", "03")["n_attack"]
    clean = _table("02_linear_eval.csv").set_index(["model", "task"])
    wb = _whitebox(_table("03_robustness.csv"))
    at0 = wb[wb.eps == 0]
    assert len(at0) > 0
    for r in at0.itertuples():
        c = clean.loc[(r.model, r.task)]
        assert r.n == c["n"], (r.model, r.task)
        assert r.accuracy == pytest.approx(c["accuracy"], abs=1e-9), (r.model, r.task, r.attack, r.norm)


@pytest.mark.slow
def test_04_covers_every_factor_level_and_all_regimes_for_every_encoder(smoke_chain):
    p, common = notebook_parameters("smoke", "04"), notebook_parameters("smoke", "01")
    regimes = _table("04_regimes.csv")
    tasks = ["fashion_mnist", p["transfer_task"]]
    for r in ("linear", "finetuned", "adv-finetuned"):
        for t in tasks:
            sub = regimes[(regimes.regime == r) & (regimes.task == t)]
            assert set(sub.model) == set(common["methods"]), (r, t)
            for m, g in sub.groupby("model"):
                assert sorted(g.eps.round(8)) == sorted(round(e, 8) for e in p["eps_linf"]), (r, t, m)
    # The linear regime in 04 is the same computation as in 03: identical numbers.
    lin = regimes[regimes.regime == "linear"].set_index(["model", "task", "eps"])["accuracy"]
    wb = _whitebox(_table("03_robustness.csv"))
    pgd03 = wb[(wb.attack == "pgd") & (wb.norm == "linf")].set_index(["model", "task", "eps"])["accuracy"]
    common_idx = lin.index.intersection(pgd03.index)
    assert len(common_idx) > 0 and (lin[common_idx] == pgd03[common_idx]).all()

    from utils import factors
    levels = factors.factor_levels(archs=p["archs"], epoch_checkpoints=p["epoch_checkpoints"],
                                   augmentations=notebook_parameters("smoke", "01")["augmentations"],
                                   batch_sizes=p["batch_sizes"])
    ab = _table("04_factors.csv")
    expected = {(m, lv.factor, lv.level) for m in p["ablation_methods"] for lv in levels}
    got = {(r.method, r.factor, r.level) for r in ab.itertuples()}
    assert got == expected
    assert ab[["clean", "robust"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (ab["robust"] <= ab["clean"] + 1e-9).all()


@pytest.mark.slow
def test_05_has_every_encoder_task_and_eps(smoke_chain):
    p, common = notebook_parameters("smoke", "05"), notebook_parameters("smoke", "01")
    df = _table("05_dense.csv")
    assert {"detection", "segmentation"} <= set(df.task)
    df = df[df.task.isin(["detection", "segmentation"])]
    for m in common["methods"]:
        sub = df[df.model == m]
        assert len(sub) > 0, m
        for (task, attack, metric), g in sub.groupby(["task", "attack", "metric"]):
            assert sorted(g.eps.round(8)) == sorted(round(e, 8) for e in p["eps_linf"]), (m, task, attack, metric)
