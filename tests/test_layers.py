"""The package's layers hold: every module imports only modules below it, nothing imports in a circle, nothing
reaches for another module's private names, and `utils` modules are imported at module level only.

Read from the source (AST), so an import hidden inside a function counts as much as one at the top.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "utils"

# Lowest first: a module may import only modules earlier in this list (the README's module map says the same).
ORDER = [
    # base: import nothing from utils above this group
    "config", "store", "runtime", "parallel", "attacks",
    # data and models
    "imageset", "data", "augment", "models", "scenes", "checkpoints",
    # methods
    "ssl", "pretrain", "encoders", "probe", "dense",
    # studies and the runner
    "robustness", "stats", "factors", "plots", "card", "miniature", "preflight", "nbprogress", "pipeline", "readme",
]
BASE = ORDER[:ORDER.index("attacks") + 1]

# Third-party modules that may be imported inside a function: optional or heavy dependencies that only one path
# needs (detection heads, metrics, the notebook runner, scikit-learn's dataset, the data download fallback, timm's
# TF-"SAME" convolutions for BYOL).
LAZY_OK = {"torchvision", "torchmetrics", "papermill", "sklearn", "matplotlib", "seaborn", "pycocotools", "timm"}


def _modules() -> dict[str, Path]:
    """{dotted name: path} of every module of the package (subpackages included)."""
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _top(dotted: str) -> str | None:
    """'utils.attacks.api' -> 'attacks'; 'utils' -> None."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "utils" else None


def _imports(path: Path, dotted: str):
    """(imported utils module, names taken, line, inside a function) for every import of a utils module, plus
    (third-party root, line) of every import inside a function."""
    tree = ast.parse(path.read_text())
    package = dotted if path.name == "__init__.py" else dotted.rsplit(".", 1)[0]
    found, lazy = [], []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.split(".")[0] == "utils":
                        found.append((a.name, [], child.lineno, in_function))
                    elif in_function:
                        lazy.append((a.name.split(".")[0], child.lineno))
            elif isinstance(child, ast.ImportFrom):
                mod = child.module or ""
                if child.level:  # relative import
                    base = package.split(".")[:len(package.split(".")) - child.level + 1]
                    mod = ".".join(base + ([mod] if mod else []))
                if mod.split(".")[0] == "utils":
                    names = [a.name for a in child.names]
                    # `from utils import attacks` imports the module utils.attacks
                    if mod == "utils":
                        for n in names:
                            found.append((f"utils.{n}", [], child.lineno, in_function))
                    else:
                        found.append((mod, names, child.lineno, in_function))
                elif in_function and mod != "__future__":
                    lazy.append((mod.split(".")[0], child.lineno))
            visit(child, inside)

    visit(tree, False)
    return found, lazy


def test_every_module_has_a_place_in_the_order():
    tops = {_top(m) for m in MODULES} - {None}
    assert tops <= set(ORDER), f"place these modules in ORDER (and the README's module map): {tops - set(ORDER)}"


@pytest.mark.parametrize("dotted", sorted(MODULES), ids=sorted(MODULES))
def test_imports_go_down_only(dotted):
    path = MODULES[dotted]
    me = _top(dotted)
    found, lazy = _imports(path, dotted)
    problems = []
    for target, names, line, in_function in found:
        other = _top(target)
        if other is None:
            problems.append(f"line {line}: imports the package root `utils` (import a module)")
            continue
        if in_function:
            problems.append(f"line {line}: imports {target} inside a function (import it at module level)")
        if other not in ORDER:
            problems.append(f"line {line}: imports {target}, which is no module of the package")
            continue
        if me is None or other == me:
            continue  # inside one subpackage, checked by the cycle test
        if ORDER.index(other) > ORDER.index(me):
            problems.append(f"line {line}: {me} imports {other}, a layer above it")
        if me in BASE and other not in BASE:
            problems.append(f"line {line}: base module {me} imports {other}, outside the base layer")
        for n in names:
            if n.startswith("_"):
                problems.append(f"line {line}: imports private name {n} from {target}")
    for root, line in lazy:
        if root not in LAZY_OK:
            problems.append(f"line {line}: imports {root} inside a function (only optional heavy dependencies "
                            f"{sorted(LAZY_OK)} may be imported lazily)")
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


@pytest.mark.parametrize("dotted", sorted(MODULES), ids=sorted(MODULES))
def test_no_private_attribute_of_another_module(dotted):
    """`attacks._something` is as private as `from utils.attacks import _something`."""
    path = MODULES[dotted]
    tree = ast.parse(path.read_text())
    aliases = {}  # local name -> utils module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "utils":
            for a in node.names:
                aliases[a.asname or a.name] = f"utils.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("utils.") and a.asname:
                    aliases[a.asname] = a.name
    bad = [f"line {n.lineno}: {n.value.id}.{n.attr}" for n in ast.walk(tree)
           if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in aliases
           and n.attr.startswith("_") and not n.attr.startswith("__")]
    assert not bad, f"{path.relative_to(ROOT)} uses private names of other modules: {bad}"


def test_no_import_cycle_between_files():
    graph = {m: set() for m in MODULES}
    for dotted, path in MODULES.items():
        for target, names, _, _ in _imports(path, dotted)[0]:
            candidates = [target] + [f"{target}.{n}" for n in names]
            for c in candidates:
                if c in MODULES and c != dotted:
                    graph[dotted].add(c)
    # a package's __init__ re-exports its own submodules: that edge is not a cycle of the design
    for m in graph:
        graph[m] = {t for t in graph[m] if not (t.startswith(m + ".") and MODULES[m].name == "__init__.py")}
    state, cycle = {}, []

    def dfs(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                dfs(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m, [m])
    assert not cycle, "import cycles: " + "; ".join(" -> ".join(c) for c in cycle)


def test_no_module_is_too_long():
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > 620}
    assert not long, f"split these modules (> ~600 lines): {long}"


def test_the_checker_sees_a_violation(tmp_path):
    """The walk is not blind: a function-level upward import and a private import are both found."""
    src = tmp_path / "store.py"
    src.write_text("def f():\n    from utils.pipeline import _execute\n    import json\n")
    found, lazy = _imports(src, "utils.store")
    assert found == [("utils.pipeline", ["_execute"], 2, True)]
    assert lazy == [("json", 3)]
