"""The README's results section states what the committed tables in figures/tables/ give (utils.readme), and the
check that says so can fail: an altered number in the README or in a table is reported, by key, and nothing else.
No notebook runs here: everything reads the committed copies."""
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from utils import readme, stats, store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def copies(tmp_path):
    """A copy of the README and of figures/tables/ to alter."""
    tables = tmp_path / "tables"
    shutil.copytree(readme.TABLES_DIR, tables)
    shutil.copy(readme.README_PATH, tmp_path / "README.md")
    return tmp_path / "README.md", tables


def _set_marker(text: str, key: str, value: str) -> str:
    pattern = re.compile(r"(<!-- (num|txt):" + re.escape(key) + r" -->)(.*?)(<!-- /\2 -->)")
    assert len(pattern.findall(text)) == 1, f"marker {key} not found once"
    return pattern.sub(lambda m: m.group(1) + value + m.group(4), text)


def test_committed_readme_agrees_with_committed_tables():
    changed = readme.check()
    assert changed == [], ("README.md states numbers the tables in figures/tables/ do not give; run "
                           "`python -m utils.readme`:\n" + "\n".join(f"{k}: {o!r} -> {n!r}" for k, o, n in changed))


def test_every_quote_is_used_and_every_marker_known():
    keys = [m["key"] for m in readme.markers(readme.README_PATH.read_text())]
    assert len(keys) == len(set(keys)), "a key appears twice in the README"
    assert set(keys) == set(readme.QUOTES), f"QUOTES not in the README: {set(readme.QUOTES) - set(keys)}"


@pytest.mark.parametrize("key,value", [("03.gap.fashion_mnist", "+3.0"), ("03.verdict.fashion_mnist", "holds"),
                                       ("05.rel_gap.detection", "+0.500")])
def test_an_altered_readme_number_is_reported_exactly(copies, key, value):
    path, tables = copies
    text = path.read_text()
    truth = readme.QUOTES[key](readme.Tables(tables))
    assert value != truth
    path.write_text(_set_marker(text, key, value))
    assert readme.check(path, tables) == [(key, value, truth)]
    assert readme.main(["--check", "--readme", str(path), "--tables", str(tables)]) == 1
    assert path.read_text() == _set_marker(text, key, value), "--check rewrote the README"


def test_an_altered_table_is_reported_exactly(copies):
    path, tables = copies
    df = pd.read_csv(tables / "02_linear_eval.csv")
    row = (df.model == "supervised") & (df.task == "fashion_mnist")
    assert float(df.loc[row, "accuracy"].iloc[0]) < 0.95
    df.loc[row, "accuracy"] = 0.95
    df.to_csv(tables / "02_linear_eval.csv", index=False)
    assert readme.check(path, tables) == [("02.supervised.fashion_mnist", readme.QUOTES[
        "02.supervised.fashion_mnist"](readme.Tables(readme.TABLES_DIR)), "0.950")]


def test_the_numbers_come_from_the_stats_verdicts(copies, monkeypatch):
    """The README follows utils.stats: a verdict that says otherwise changes the README's number and its words."""
    path, tables = copies
    real = stats.linear_eval_verdict

    def flipped(gaps, **kw):
        return real(gaps, **kw).replace("fashion_mnist (worst-case): mean SSL-minus-supervised gap -",
                                        "fashion_mnist (worst-case): mean SSL-minus-supervised gap +", 1) \
            .replace("The finding does NOT hold", "The finding holds", 1)

    monkeypatch.setattr(stats, "linear_eval_verdict", flipped)
    changed = {k: new for k, _, new in readme.check(path, tables)}
    assert set(changed) == {"03.gap.fashion_mnist", "03.verdict.fashion_mnist", "03.pgd_agrees"}
    assert changed["03.verdict.fashion_mnist"] == "**does** hold" and changed["03.gap.fashion_mnist"].startswith("+")


def test_a_changed_verdict_sentence_is_an_error_not_a_guess(copies, monkeypatch):
    path, tables = copies
    monkeypatch.setattr(stats, "convergence_summary", lambda conv: "Convergence looked fine.")
    with pytest.raises(readme.ReadmeError, match="convergence_summary"):
        readme.check(path, tables)


def test_rewrite_is_idempotent(copies):
    path, tables = copies
    text = path.read_text()
    for key, value in (("03.gap.digits", "+99.9"), ("01.minutes", "0.1"), ("05.verdict", "anything")):
        text = _set_marker(text, key, value)
    path.write_text(text)
    first = readme.rewrite(path, tables)
    assert {k for k, _, _ in first} == {"03.gap.digits", "01.minutes", "05.verdict"}
    once = path.read_text()
    assert once == readme.README_PATH.read_text()
    assert readme.rewrite(path, tables) == [] and path.read_text() == once
    assert readme.render(once, readme.Tables(tables))[0] == once


def test_only_marker_text_changes(copies):
    """Outside the markers (and outside the results section) the README is kept byte for byte."""
    path, tables = copies
    text = _set_marker(path.read_text(), "03.gap.digits", "+99.9")
    new, _ = readme.render(text, readme.Tables(tables))
    strip = re.compile(r"(<!-- (?:num|txt):[\w.\-]+ -->).*?(<!-- /(?:num|txt) -->)")
    assert strip.sub(r"\1\2", new) == strip.sub(r"\1\2", text)


@pytest.mark.parametrize("table,notebook", [("04_regimes.csv", "04_finetune_and_factors.ipynb"),
                                            ("03_gap_ci.csv", "03_attack_eval.ipynb"),
                                            ("05_dense.csv.provenance.json", "05_dense_tasks.ipynb")])
def test_a_missing_table_names_its_notebook(copies, table, notebook):
    path, tables = copies
    (tables / table).unlink()
    with pytest.raises(readme.MissingTable, match=re.escape(notebook)) as e:
        readme.check(path, tables)
    assert f"--only {notebook[:2]}" in str(e.value)
    assert readme.main(["--check", "--readme", str(path), "--tables", str(tables)]) == 2


def test_copy_from_results_names_the_missing_notebook(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(readme.TABLES_DIR, results)
    (results / "05_dense.csv").unlink()
    with pytest.raises(readme.MissingTable, match="05_dense_tasks.ipynb"):
        readme.copy_tables(results, tmp_path / "runs", tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing is written before every source was found"


def test_copy_records_times_and_whether_the_figures_are_that_runs(tmp_path):
    results, runs, figures, dest = (tmp_path / d for d in ("results", "runs", "figures", "out"))
    shutil.copytree(readme.TABLES_DIR, results)
    figures.mkdir()
    (figures / "02_clean_accuracy.png").write_bytes(b"drawn by this run")
    sha = store.file_sha256(figures / "02_clean_accuracy.png")
    store.atomic_write_json(runs / "state.json", {
        "01_data_and_encoders.ipynb": {"status": "done", "seconds": 120.0, "outputs": {"figures/01_a.png": "0" * 64}},
        "02_linear_eval.ipynb": {"status": "done", "seconds": 30.0, "finished": "then",
                                 "outputs": {"figures/02_clean_accuracy.png": sha, "results/cpu/x.csv": "1" * 64}},
        "03_attack_eval.ipynb": {"status": "running", "pid": 1}})
    readme.copy_tables(results, runs, dest, figures_dir=figures)
    for name in readme.TABLES:
        assert (dest / name).read_bytes() == (results / name).read_bytes()
    times = pd.read_csv(dest / readme.CHAIN_TIMES)
    assert times["notebook"].tolist() == [1, 2] and times["seconds"].tolist() == [120.0, 30.0]
    assert times["figures_from_run"].tolist() == [False, True]
    quote = readme.QUOTES["02.minutes"](readme.Tables(dest))
    assert quote == "0.5"
    with pytest.raises(readme.MissingTable, match="03.minutes"):  # 03 has no finished run: no time to quote
        readme.QUOTES["03.minutes"](readme.Tables(dest))


def test_a_marker_at_a_line_start_or_with_an_unknown_key_is_refused(copies):
    path, tables = copies
    text = path.read_text()
    head = text.index(readme.SECTION) + len(readme.SECTION) + 2
    with pytest.raises(readme.ReadmeError, match="starts with a marker"):
        readme.markers(text[:head] + "<!-- num:01.arch -->x<!-- /num --> text\n\n" + text[head:])
    with pytest.raises(readme.ReadmeError, match="no function"):
        readme.markers(text[:head] + "Some <!-- num:01.nonsense -->1<!-- /num -->.\n\n" + text[head:])


def test_only_the_cpu_profile_is_quoted():
    assert readme.main(["--profile", "smoke", "--check"]) == 2
