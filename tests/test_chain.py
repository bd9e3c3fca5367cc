"""The notebook chain: committed notebooks are clean and parameterized; the smoke and paper-mini chains run."""
import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from utils import parallel, pipeline
from utils.config import (KEY_DOCS, MINIATURE_ROOT, OWN_FC_REGIME, PROFILES, notebook_parameters, parameters_source,
                          repo_path)
from utils.miniature import make_miniature

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = pipeline.list_notebooks(ROOT)

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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_parameters_cell_comments_are_key_docs(path):
    """Every knob of a parameters cell sits under one comment line that is its unit and meaning from KEY_DOCS, and
    the cell is exactly what utils.config renders (`python -m utils.pipeline --write-parameters` rewrites it)."""
    source = _parameters_cell(nbformat.read(path, as_version=4)).source
    lines = source.splitlines()
    assigned = []
    for node in ast.parse(source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, f"line {node.lineno}: one assignment a line"
        key = node.targets[0].id
        assigned.append(key)
        comment = lines[node.lineno - 2] if node.lineno > 1 else ""
        assert comment == f"# {KEY_DOCS[key]}", f"{path.name}: {key}'s comment is {comment!r}, KEY_DOCS says " \
                                                 f"{KEY_DOCS[key]!r}"
    assert len(assigned) == len(set(assigned))
    assert source == parameters_source(path.name[:2]), \
        f"{path.name}'s parameters cell drifted from utils.config: run `python -m utils.pipeline --write-parameters`"


def test_notebooks_take_only_the_common_keys_they_use():
    """checkpoint_root (the official checkpoints) is a knob of notebook 01 only, in every profile."""
    for profile in PROFILES:
        assert "checkpoint_root" in notebook_parameters(profile, "01")
        for nb in ("02", "03", "04", "05"):
            p = notebook_parameters(profile, nb)
            assert "checkpoint_root" not in p and {"seed", "device", "methods", "data_root"} <= set(p), (profile, nb)


def test_every_output_a_notebook_writes_is_declared():
    """The runner checks what `NOTEBOOK_OUTPUTS` declares: every table and figure a notebook's code writes is there."""
    for path in NOTEBOOKS:
        code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        written = set(re.findall(r'save_figure\([^()]*ctx\.figure\("([^"]+)"\)', code)) | \
            set(re.findall(r'write_table\([^()]*?ctx\.result\("([^"]+)"\)', code))
        declared = {n for names in pipeline.NOTEBOOK_OUTPUTS[path.name[:2]].values() for n in names}
        assert written and written <= declared, f"{path.name} writes {sorted(written - declared)} undeclared"


def test_failure_names_notebook_cell_and_copy(tiny_repo, tmp_path):
    tiny_repo("01_broken.ipynb", "x = 1", "raise ValueError('broken on purpose')")
    with pytest.raises(pipeline.NotebookFailed) as e:
        pipeline.run_chain("smoke", root=tmp_path, log=lambda *_: None)
    msg = str(e.value)
    assert "01_broken.ipynb" in msg and "cell 3" in msg and "broken on purpose" in msg
    assert str(tmp_path / "runs" / "smoke" / "01_broken.ipynb") in msg


@pytest.fixture(scope="module")
def smoke_chain():
    """Runs every notebook in the smoke profile once (forced) for the tests below; returns the run records."""
    return pipeline.run_chain("smoke", force=True, log=print)


@pytest.fixture(scope="module")
def paper_mini_chain():
    """The `paper` code path end to end: the official checkpoint layouts, an ImageNet-style folder of JPEGs (some
    grayscale, some CMYK), CIFAR's files and Pascal VOC, all generated (`utils.miniature`), run once (forced)."""
    make_miniature(repo_path(MINIATURE_ROOT))
    return pipeline.run_chain("paper-mini", force=True, log=print)


# Every table test runs on both chains: the smoke profile (trained encoders, Fashion-MNIST) and paper-mini (the
# paper profile's code on generated inputs).
CHAINS = ["smoke", "paper-mini"]


@pytest.fixture(scope="module", params=CHAINS)
def chain(request):
    """(profile, run records) of one chain; each chain runs once per module."""
    return request.param, request.getfixturevalue(request.param.replace("-", "_") + "_chain")


def _table(name, profile="smoke"):
    return pd.read_csv(ROOT / "results" / profile / name)


@pytest.mark.slow
def test_chain_end_to_end(chain):
    """Every notebook ran, drew its figures and wrote its tables with provenance (what it declares in
    `pipeline.NOTEBOOK_OUTPUTS`); a rerun skips all."""
    profile, records = chain
    assert [r["status"] for r in records] == ["ran"] * len(NOTEBOOKS)
    for nb in NOTEBOOKS:
        for p in pipeline.declared_outputs(profile, nb.name[:2]):
            assert p.is_file(), f"{nb.name} did not write {p}"
            if p.suffix == ".png":
                assert p.stat().st_size > 5000, f"{nb.name} drew an empty {p.name}"
            if p.suffix == ".csv":
                df = pd.read_csv(p)
                assert len(df) > 0, f"{p.name} is empty"
                if "accuracy" in df:
                    assert df["accuracy"].between(0, 1).all(), f"{p.name}: accuracies outside [0, 1]"
                prov = json.loads(p.with_name(p.name + ".provenance.json").read_text())
                assert prov["profile"] == profile and prov["git_commit"] and prov["versions"]["torch"]
    again = pipeline.run_chain(profile, log=print)
    assert [r["status"] for r in again] == ["skipped"] * len(NOTEBOOKS)


def _whitebox(df):
    """The rows of the attack grid itself (not the worst case, the convergence check or transfer)."""
    return df[~df["attack"].str.startswith("transfer") & (df["attack"] != "worst-case")
              & ~df["attack"].str.endswith("(convergence)")]


@pytest.mark.slow
def test_03_has_a_row_for_every_model_task_attack_eps(chain):
    profile, _ = chain
    p, common = notebook_parameters(profile, "03"), notebook_parameters(profile, "01")
    tasks = [p["task"], *p["transfer_tasks"]]
    settings = [(a, "linf", e) for a in p["linf_attacks"] for e in p["eps_linf"]] + \
               [(a, "l2", e) for a in p["l2_attacks"] for e in p["eps_l2"]]
    expected = {(m, t, a, n, round(e, 8)) for m in common["methods"] for t in tasks for a, n, e in settings}
    wb = _whitebox(_table("03_robustness.csv", profile))
    got = [(r.model, r.task, r.attack, r.norm, round(r.eps, 8)) for r in wb.itertuples()]
    assert len(got) == len(set(got)), "duplicate rows in 03_robustness.csv"
    assert set(got) == expected, f"missing {sorted(expected - set(got))[:5]}, extra {sorted(set(got) - expected)[:5]}"
    # Every row states its attack setting, and robust accuracy never rises with eps within one sweep.
    assert wb[["steps", "restarts", "n"]].notna().all().all()
    for _, g in wb.groupby(["model", "task", "attack", "norm"]):
        acc = g.sort_values("eps")["accuracy"].to_numpy()
        assert (acc[1:] <= acc[:-1] + 1e-9).all(), g
    # The per-point worst case: a row for every model x task x norm x eps, never above any attack's accuracy.
    df = _table("03_robustness.csv", profile)
    wc = df[df.attack == "worst-case"]
    grids = (("linf", p["eps_linf"]), ("l2", p["eps_l2"]))
    assert {(r.model, r.task, r.norm, round(r.eps, 8)) for r in wc.itertuples()} == \
        {(m, t, n, round(e, 8)) for m in common["methods"] for t in tasks for n, grid in grids for e in grid}
    full = wb[wb.n == p["n_attack"]]  # the ensemble covers only the first n_ensemble points: not comparable here
    assert (wb[wb.attack == "autoattack"].n == p["n_ensemble"]).all()
    lowest = full.groupby(["model", "task", "norm", full.eps.round(8)]).accuracy.min()
    for r in wc.itertuples():
        assert r.accuracy <= lowest[(r.model, r.task, r.norm, round(r.eps, 8))] + 1e-9, r
    # the ensemble carries the masking check; the convergence check ran for every classifier with every budget
    assert df[df.attack == "autoattack"].square_only.notna().all()
    conv = df[df.attack.str.endswith("(convergence)")]
    assert len(conv) == len(common["methods"]) * len(tasks) * len(p["convergence_schedule"])
    # transfer attacks in both directions are in the same table
    sources = set(df[df.attack.str.startswith("transfer")].attack)
    assert "transfer-pgd<supervised" in sources and len(sources) == len(common["methods"])


@pytest.mark.slow
def test_seed_replicates_run_through_01_02_03_and_the_seed_gaps_agree_with_the_headline(chain):
    """Notebook 01's `seeds` x `seed_methods` reach 02 and 03: one row per seeded method x seed in 01_seeds and
    02_seeds (the first seed's rows equal the main tables'), a 03_seed_gaps row per seeded SSL method x task x
    eps, and each first-seed gap there equal to the PGD gap of 03's headline table (same masks)."""
    profile, _ = chain
    p01, p03 = notebook_parameters(profile, "01"), notebook_parameters(profile, "03")
    n, chosen = p01["seeds"], p01["seed_methods"]
    out = ROOT / "results" / profile
    if n == 1 or not chosen:  # paper-mini: official checkpoints, one file per method
        for name in ("01_seeds.csv", "02_seeds.csv", "03_seed_gaps.csv"):
            assert len(pd.read_csv(out / name)) == 0, name
        assert not (ROOT / "figures" / profile / "03_seed_gaps.png").exists()
        return
    seeds = [p01["seed"] + k for k in range(n)]
    s01 = _table("01_seeds.csv", profile)
    assert sorted(zip(s01.method, s01.seed)) == sorted((m, s) for m in chosen for s in seeds)
    main01 = _table("01_encoders.csv", profile).set_index("method")
    for r in s01[s01.seed == p01["seed"]].itertuples():
        assert r.probe_accuracy == main01.loc[r.method, "probe_accuracy"]
    s02 = _table("02_seeds.csv", profile)
    tasks = [p03["task"], *p03["transfer_tasks"]]
    assert sorted(zip(s02.method, s02.seed, s02.task)) == sorted((m, s, t) for m in chosen for s in seeds
                                                                  for t in tasks)
    main02 = _table("02_linear_eval.csv", profile).set_index(["model", "task"])
    assert len(main02) == len(p01["methods"]) * len(tasks), "seed replicates leaked into 02's main table"
    for r in s02[s02.seed == p01["seed"]].itertuples():
        assert r.accuracy == main02.loc[(r.method, r.task), "accuracy"]
    assert s02.groupby(["method", "task"]).accuracy.nunique().max() > 1, "every seed gave the same accuracy"
    sg = _table("03_seed_gaps.csv", profile)
    ssl = [m for m in chosen if m != "supervised"]
    assert sorted(zip(sg.model, sg.task, sg.eps.round(8))) == sorted(
        (m, t, round(e, 8)) for m in ssl for t in tasks for e in sorted(set(p03["eps_linf"])))
    assert (sg.n_seeds == n).all() and (sg.steps == p03["steps"]).all()
    headline = _table("03_gap_ci.csv", profile)
    headline = headline[(headline.attack == "pgd") & (headline.norm == "linf")]
    headline = headline.set_index(["model", "task", headline.eps.round(8)])
    for r in sg.itertuples():
        per_seed = [float(v) for v in str(r.seed_gaps).split(";")]
        assert abs(per_seed[0] - headline.loc[(r.model, r.task, round(r.eps, 8)), "gap"]) < 1e-6, r
        assert abs(sum(per_seed) / n - r.gap) < 1e-6 and r.lo <= r.gap + 1e-9 <= r.hi + 2e-9
    assert (ROOT / "figures" / profile / "03_seed_gaps.png").stat().st_size > 5000


@pytest.mark.slow
def test_03_accuracy_at_eps0_is_the_clean_accuracy_of_02(chain):
    profile, _ = chain
    n_test, n_attack = notebook_parameters(profile, "02")["n_test"], notebook_parameters(profile, "03")["n_attack"]
    assert n_test >= n_attack
    clean = _table("02_linear_eval.csv", profile)
    clean = clean[clean.regime == "linear"].set_index(["model", "task"])  # not the supervised checkpoint's own fc
    wb = _whitebox(_table("03_robustness.csv", profile))
    wb = wb[wb.attack != "autoattack"]  # the ensemble runs on the first n_ensemble points only
    at0 = wb[wb.eps == 0]
    assert len(at0) > 0
    if n_test != n_attack:  # 03 attacks a prefix of 02's test points: compare on equal sets only
        pytest.skip(f"{profile}: 02 scores {n_test} points, 03 attacks the first {n_attack}")
    for r in at0.itertuples():
        c = clean.loc[(r.model, r.task)]
        assert r.n == c["n"], (r.model, r.task)
        # the same points counted right (accuracies are float32 means in one table, exact ratios in the other)
        assert round(r.accuracy * r.n) == round(c["accuracy"] * c["n"]), (r.model, r.task, r.attack, r.norm)


@pytest.mark.slow
def test_04_covers_every_factor_level_and_all_regimes_for_every_encoder(chain):
    profile, _ = chain
    p, common = notebook_parameters(profile, "04"), notebook_parameters(profile, "01")
    regimes = _table("04_regimes.csv", profile)
    tasks = [p["task"], *p["transfer_tasks"]]
    for r in ("linear", "finetuned", "adv-finetuned"):
        for t in tasks:
            sub = regimes[(regimes.regime == r) & (regimes.task == t)]
            assert set(sub.model) == set(common["methods"]), (r, t)
            for m, g in sub.groupby("model"):
                assert sorted(g.eps.round(8)) == sorted(round(e, 8) for e in p["eps_linf"]), (r, t, m)
    # The linear regime in 04 is the same computation as in 03: identical numbers.
    lin = regimes[regimes.regime == "linear"].set_index(["model", "task", "eps"])["accuracy"]
    wb = _whitebox(_table("03_robustness.csv", profile))
    pgd03 = wb[(wb.attack == "pgd") & (wb.norm == "linf")].set_index(["model", "task", "eps"])["accuracy"]
    common_idx = lin.index.intersection(pgd03.index)
    assert len(common_idx) > 0 and (lin[common_idx] == pgd03[common_idx]).all()

    from utils import factors
    levels = factors.factor_levels(archs=p["archs"], epoch_checkpoints=p["epoch_checkpoints"],
                                   augmentations=common["augmentations"], batch_sizes=p["batch_sizes"])
    ab = _table("04_factors.csv", profile)
    expected = {(m, lv.factor, lv.level) for m in p["ablation_methods"] for lv in levels}
    got = {(r.method, r.factor, r.level) for r in ab.itertuples()}
    assert got == expected
    assert ab[["clean", "robust"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (ab["robust"] <= ab["clean"] + 1e-9).all()


@pytest.mark.slow
def test_05_has_every_encoder_task_and_eps(chain):
    profile, _ = chain
    p, common = notebook_parameters(profile, "05"), notebook_parameters(profile, "01")
    df = _table("05_dense.csv", profile)
    assert {"detection", "segmentation"} <= set(df.task)
    df = df[df.task.isin(["detection", "segmentation"])]
    for m in common["methods"]:
        sub = df[df.model == m]
        assert len(sub) > 0, m
        for (task, attack, metric), g in sub.groupby(["task", "attack", "metric"]):
            assert sorted(g.eps.round(8)) == sorted(round(e, 8) for e in p["eps_linf"]), (m, task, attack, metric)


@pytest.mark.slow
def test_03_teaching_section_is_fast_and_its_pgd_gives_the_kernels_verdicts(chain):
    """Part 1 of notebook 03: the hand-written PGD gives utils.attacks.pgd's verdicts on all n_teach points (100 in
    smoke and cpu), and the whole section (the cells tagged `teaching`) runs in under 30 s."""
    profile, _ = chain
    p = notebook_parameters(profile, "03")
    n = p["n_teach"]
    teaching = _table("03_teaching.csv", profile).set_index("quantity")
    assert notebook_parameters("smoke", "03")["n_teach"] == notebook_parameters("cpu", "03")["n_teach"] == 100
    assert (teaching["n"] == n).all()
    assert teaching.loc["verdicts_agree_hand_vs_kernel", "value"] == n
    assert teaching.loc["bf16_verdicts_overturned", "value"] <= teaching.loc["bf16_verdicts_compared", "value"]
    assert teaching.loc["point_attacks_cascade", "value"] <= teaching.loc["point_attacks_each_eps_alone", "value"]
    executed = json.loads((ROOT / "runs" / profile / "03_attack_eval.ipynb").read_text())
    cells = [c for c in executed["cells"] if "teaching" in c["metadata"].get("tags", [])]
    assert sum(c["cell_type"] == "code" for c in cells) >= 8
    seconds = sum(c["metadata"]["papermill"]["duration"] or 0.0 for c in cells)
    assert 0 < seconds < 30, f"the teaching section took {seconds:.1f} s"
    # it comes first: right after the set-up cell, before the attack grid
    first = next(i for i, c in enumerate(executed["cells"]) if "teaching" in c["metadata"].get("tags", []))
    grid = next(i for i, c in enumerate(executed["cells"]) if "run_attack_grid" in "".join(c["source"]))
    assert first < grid


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@pytest.mark.slow
def test_torchrun_on_paper_mini_gives_the_single_process_verdicts(paper_mini_chain, tmp_path):
    """The paper profile's torchrun entry, 2 gloo processes on the CPU, over notebook 02's classifiers (official
    ResNet-50 layouts): every sweep it writes holds exactly the per-point results notebook 03 computed in one process
    (PGD L-inf over 03's eps grid, each classifier: methods x tasks)."""
    cache = tmp_path / "cache" / "paper-mini"
    # hard links where the file system allows (the classifiers are ResNet-50s, gigabytes in all), else copies
    shutil.copytree(ROOT / "cache" / "paper-mini" / "classifiers", cache / "classifiers", copy_function=_link_or_copy)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SSL_ADV_OUTPUT_ROOT": str(tmp_path)}
    r = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29541", "-m", "utils.robustness",
                        "--profile", "paper-mini", "--set", 'linf_attacks=["pgd"]', "--set", "l2_attacks=[]"],
                       capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    sweeps = sorted((cache / "attacks").glob("*.json"))
    p = notebook_parameters("paper-mini", "03")
    assert len(sweeps) == len(p["methods"]) * (1 + len(p["transfer_tasks"]))
    for sweep in sweeps:
        ours, ref = json.loads(sweep.read_text()), json.loads((ROOT / "cache" / "paper-mini" / "attacks" /
                                                               sweep.name).read_text())
        assert ours["params"] == ref["params"] and ours["result"] == ref["result"], sweep.name


@pytest.mark.slow
def test_02_sets_official_encoders_beside_their_published_top1(chain):
    """With the official checkpoints (paper-mini's layouts), 02's table holds each encoder's published linear top-1
    and the shortfall, flagged beyond `published_tolerance`, and a row of the supervised checkpoint's own fc (regime
    own_fc) on the same test points beside the registry's 76.13; encoders trained here (smoke) have nothing to
    compare and no such row."""
    profile, _ = chain
    p = notebook_parameters(profile, "02")
    t = _table("02_linear_eval.csv", profile)
    if notebook_parameters(profile, "01")["epochs"] > 0:
        assert "published_top1" not in t and set(t.regime) == {"linear"}
        return
    rows = t[t.task == p["task"]]
    own = rows[rows.regime == OWN_FC_REGIME]
    assert own.model.tolist() == ["supervised"] and own.published_top1.tolist() == [76.13]
    assert own.n.tolist() == rows[rows.regime == "linear"].n.unique().tolist()  # the same test points
    assert len(rows) == len(p["methods"]) + 1 and rows["published_top1"].notna().all()
    assert np.allclose(rows["shortfall"], rows["published_top1"] - 100 * rows["accuracy"])
    flagged = rows["flags"].fillna("").str.contains("below_published")
    assert flagged.tolist() == (rows["shortfall"] > p["published_tolerance"]).tolist()
    assert t[t.task != p["task"]]["published_top1"].isna().all()


# ---------------------------------------------------------------------------------- kill -9, then a rerun

TIMING = ["seconds", "wall_s", "pretrain_s", "from_cache"]  # how long a step took, and whether it was cached


def _children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (the runner's kernels)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            pass
    return out


def _smoke_chain_in(root: Path, until=None, sig=signal.SIGKILL, timeout: float = 1200) -> tuple[int, str]:
    """`python -m utils.pipeline --profile smoke` with its outputs under `root`. With `until`, once it holds: SIGKILL
    the runner and its kernel (which runs in a session of its own, with its worker processes), or SIGINT the
    runner's process group as a terminal's Ctrl-C does. Returns (exit status, stderr)."""
    err_path = root / f"stderr-{time.monotonic_ns()}.txt"
    root.mkdir(parents=True, exist_ok=True)
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "utils.pipeline", "--profile", "smoke"], cwd=ROOT,
                                env={**os.environ, "SSL_ADV_OUTPUT_ROOT": str(root)}, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
        t0 = time.monotonic()
        while until is not None and not until():
            assert proc.poll() is None, f"the chain ended before the kill point: {err_path.read_text()[-2000:]}"
            assert time.monotonic() - t0 < timeout, "the kill point never came"
            time.sleep(0.2)
        if until is not None and sig == signal.SIGKILL:
            for kernel in _children(proc.pid):
                os.killpg(kernel, signal.SIGKILL)
            os.killpg(proc.pid, signal.SIGKILL)
        elif until is not None:
            os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout)
    return proc.returncode, err_path.read_text()


@pytest.mark.slow
def test_kill_9_twice_then_rerun_gives_the_tables_of_an_uninterrupted_run(smoke_chain, tmp_path):
    """kill -9 during 01's pretraining and during 03's attack grid, Ctrl-C during 04's fine-tuning, then a plain
    rerun: every table equals the uninterrupted smoke chain's (`smoke_chain`), timing columns aside."""
    cache = tmp_path / "cache" / "smoke"
    first_encoder_done = lambda: any("-epoch" not in p.name for p in (cache / "encoders").glob("*.safetensors"))
    rc, _ = _smoke_chain_in(tmp_path, until=first_encoder_done)
    assert rc == -signal.SIGKILL
    state = json.loads((tmp_path / "runs" / "smoke" / "state.json").read_text())
    assert state["01_data_and_encoders.ipynb"]["status"] == "running"  # not taken for a finished run

    rc, _ = _smoke_chain_in(tmp_path, until=lambda: len(list((cache / "attacks").glob("*.json"))) >= 3)
    assert rc == -signal.SIGKILL

    rc, err = _smoke_chain_in(tmp_path, sig=signal.SIGINT,
                              until=lambda: any((cache / "classifiers").glob("*-finetuned-*.safetensors")))
    assert rc == 130 and err.strip() == parallel.INTERRUPTED, err  # one line, no worker tracebacks

    rc, err = _smoke_chain_in(tmp_path)
    assert rc == 0, err[-3000:]
    tables = [p for nb in NOTEBOOKS for p in pipeline.declared_outputs("smoke", nb.name[:2], tmp_path)
              if p.suffix == ".csv"]
    assert len(tables) >= len(NOTEBOOKS)
    for ours in tables:
        a, b = pd.read_csv(ours), pd.read_csv(ROOT / "results" / "smoke" / ours.name)
        pd.testing.assert_frame_equal(a.drop(columns=TIMING, errors="ignore"),
                                      b.drop(columns=TIMING, errors="ignore"), obj=ours.name)
