"""The code's shape, checked: the layers stay visible and the modules stay small enough to read.

* ``snapper/`` is a library: no Prefect, no argument parsing, printing or exit codes outside
  ``snapper/cli/``;
* no module over ~500 lines, no function over ~80 lines;
* project modules are imported at the top of a module, never inside a function, and the
  import graph of ``snapper`` has no cycle;
* subpackages import only the layers below them (:data:`ALLOWED`), MLflow is imported only
  in ``snapper/mlops/``, and ``flows/`` never imports ``snapper.cli``;
* every name ``docs/architecture.md`` mentions exists.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("snapper", "flows")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
LONG_MODULES_ALLOWED: set[str] = set()  # none today; an exception needs a reason written here
# Project imports inside a function, each with its reason (everything else imports at the top).
LAZY_IMPORTS: dict[tuple[str, str], str] = {
    ("snapper/models/reference.py", "snapper.mlops"): "a checkpoint folder resolves without importing MLflow",
}

# The layers: which parts of the library each part may import at module level. "core" is the
# modules at the top of snapper/ (config, geometry, crop, zoom, imageio, atomic, device, errors, ...).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "models": {"core"},
    "data": {"core"},
    "inference": {"core", "models"},
    "evaluation": {"core", "models", "inference", "data"},
    "mlops": {"core", "models", "inference", "evaluation"},
    "training": {"core", "models", "data", "inference", "evaluation", "mlops"},
    "integrations": {"core", "models", "inference", "mlops"},
    "batch": {"core", "models", "inference", "data", "evaluation", "mlops", "formats"},
    "formats": {"core", "models", "data", "batch"},
    "review": {"core", "batch", "integrations"},
    "cli": {"core", "models", "data", "inference", "evaluation", "mlops", "training", "integrations", "batch",
            "formats", "review"},
}
MLFLOW_PACKAGE = "snapper/mlops/"  # the only place that imports mlflow


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def _rel(p: Path) -> str:
    return p.relative_to(REPO).as_posix()


def _module_name(p: Path) -> str:
    parts = list(p.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _tree(p: Path) -> ast.Module:
    return ast.parse(p.read_text(), filename=str(p))


def _is_project(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in PACKAGES  # type: ignore[union-attr]


def test_module_sizes() -> None:
    long = {_rel(p): n for p in _sources() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
            and _rel(p) not in LONG_MODULES_ALLOWED}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_function_sizes() -> None:
    long = []
    for p in _sources():
        for node in ast.walk(_tree(p)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{_rel(p)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_no_project_imports_inside_functions() -> None:
    found = []
    for p in _sources():
        for fn in ast.walk(_tree(p)):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and _is_project(node.module):
                    if (_rel(p), node.module) not in LAZY_IMPORTS:
                        found.append(f"{_rel(p)}:{node.lineno} from {node.module} import ...")
                elif isinstance(node, ast.Import) and any(_is_project(a.name) for a in node.names):
                    found.append(f"{_rel(p)}:{node.lineno} import {node.names[0].name}")
    assert not found, "project modules imported inside functions:\n" + "\n".join(sorted(set(found)))


def test_library_has_no_prefect_cli_or_prints() -> None:
    found = []
    for p in _sources():
        rel = _rel(p)
        if not rel.startswith("snapper/") or rel.startswith("snapper/cli/"):
            continue
        for node in ast.walk(_tree(p)):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                names = []
            for name in names:
                if name.split(".")[0] in ("prefect", "argparse"):
                    found.append(f"{rel}:{node.lineno} imports {name}")
            if isinstance(node, ast.Call):
                f = node.func
                if isinstance(f, ast.Name) and f.id == "print":
                    found.append(f"{rel}:{node.lineno} print()")
                if isinstance(f, ast.Attribute) and f.attr == "exit" and isinstance(f.value, ast.Name) and f.value.id == "sys":
                    found.append(f"{rel}:{node.lineno} sys.exit()")
    assert not found, "library code that belongs in snapper/cli or flows/:\n" + "\n".join(found)


def _import_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports at module level (the imports that run on import)."""
    modules = {_module_name(p): p for p in _sources() if _rel(p).startswith("snapper/")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, p in modules.items():
        for node in _tree(p).body:
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != mod and _is_project(t):
                    graph[mod].add(t)
    return graph


def test_no_import_cycles() -> None:
    graph = _import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    # A package's __init__ importing its submodules is not a cycle worth flagging.
    cycles = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert not cycles, f"import cycles: {cycles}"


def _layer(module: str) -> str:
    """``snapper.training.loop`` -> "training"; top-level modules of ``snapper`` -> "core"."""
    parts = module.split(".")
    if len(parts) > 1 and (REPO / "snapper" / parts[1]).is_dir():
        return parts[1]
    return "core"


def test_layers_import_only_the_layers_below() -> None:
    wrong = []
    for mod, targets in _import_graph().items():
        here = _layer(mod)
        for t in targets:
            there = _layer(t)
            if there != here and there not in ALLOWED[here]:
                wrong.append(f"{mod} ({here}) imports {t} ({there})")
    assert not wrong, "imports against the layers (tests/test_layout.py ALLOWED):\n" + "\n".join(sorted(wrong))


def _imported_names(p: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(_tree(p)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def test_only_mlops_imports_mlflow_and_flows_never_import_the_cli() -> None:
    found = []
    for p in _sources():
        rel = _rel(p)
        for line, name in _imported_names(p):
            if name.split(".")[0] == "mlflow" and rel.startswith("snapper/") and not rel.startswith(MLFLOW_PACKAGE):
                found.append(f"{rel}:{line} imports {name} (MLflow belongs in {MLFLOW_PACKAGE})")
            if rel.startswith("flows/") and (name == "snapper.cli" or name.startswith("snapper.cli.")):
                found.append(f"{rel}:{line} imports {name} (flows wire library calls, not commands)")
    assert not found, "\n".join(found)


_DOTTED = re.compile(r"`((?:snapper|flows)(?:\.[A-Za-z_][A-Za-z0-9_]*)+)(?:\(\))?`")
_PATH = re.compile(r"`((?:snapper|flows|tests|bench)/[A-Za-z0-9_/.\-]+)`")


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("doc", ["docs/architecture.md"])
def test_architecture_doc_names_exist(doc: str) -> None:
    text = (REPO / doc).read_text()
    names = sorted(set(_DOTTED.findall(text)))
    paths = sorted(set(_PATH.findall(text)))
    assert len(names) >= 20, "the architecture doc should name the main entry points as snapper.module.name"
    missing = []
    for name in names:
        try:
            _resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    missing += [p for p in paths if not (REPO / p.rstrip("/")).exists()]
    assert not missing, f"{doc} names things that do not exist: {missing}"
