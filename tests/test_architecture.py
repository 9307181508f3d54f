"""The shape of the code: which module may import which (read from the source, nothing is imported)."""

import ast

from conftest import ROOT

SCRIPTS = {"train", "evaluate", "search_hyperparams", "synthesize_results", "plot_results"}


def project_imports(path):
    """Modules of this project that `path` imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    local = {p.stem for p in ROOT.glob("*.py")} | {"core", "model", "data"}
    return {n for n in names if n.split(".")[0] in local}


def module_graph(folders):
    graph = {}
    for folder in folders:
        for path in (ROOT / folder).glob("*.py"):
            graph[f"{folder}.{path.stem}"] = {m for m in project_imports(path) if m.split(".")[0] in folders}
    return graph


def test_core_and_model_never_import_a_script():
    for folder in ("core", "model"):
        for path in (ROOT / folder).glob("*.py"):
            assert not project_imports(path) & SCRIPTS, path.name


def test_model_imports_nothing_from_core_at_the_top():
    """model/ is what users edit: it may call machinery lazily, but reading it must not mean reading core/."""
    for path in (ROOT / "model").glob("*.py"):
        top = [n for n in ast.parse(path.read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
        modules = {n.module for n in top if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in modules if m.startswith("core")}, path.name


def test_no_import_cycle_among_core_model_and_data():
    graph = module_graph(("core", "model", "data"))
    state = {}

    def visit(node, trail):
        if state.get(node) == "open":
            raise AssertionError("import cycle: " + " -> ".join(trail + [node]))
        if state.get(node) == "done":
            return
        state[node] = "open"
        for nxt in graph.get(node, ()):
            visit(nxt, trail + [node])
        state[node] = "done"

    for module in graph:
        visit(module, [])
