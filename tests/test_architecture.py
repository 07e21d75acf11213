"""The package's shape, as docs/architecture.md describes it: no import cycles, no module reaching
into another's underscore names, benchmarks outside the product, the torch-only modules free of
pyspark."""
import ast
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "recsys_spark"


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text()) for p in sorted(PACKAGE.glob("*.py")) if p.stem != "__init__"}


def _imports(tree: ast.Module) -> list[tuple[str, str]]:
    """(module, name) for every import of the package anywhere in the file (functions included)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("recsys_spark", "benchmarks"):
            for alias in node.names:
                if node.module == "recsys_spark":
                    out.append((alias.name, ""))
                else:
                    out.append((node.module.split(".", 1)[-1] if "." in node.module else node.module, alias.name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("recsys_spark", "benchmarks"):
                    out.append((alias.name.split(".", 1)[-1], ""))
    return out


def _graph() -> dict[str, set[str]]:
    return {name: {m for m, _ in _imports(tree)} for name, tree in _modules().items()}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path, or [] (depth-first search over the module graph)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt in graph and not state.get(nxt):
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if not state.get(node):
            found = visit(node)
            if found:
                return found
    return []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_product_has_no_import_cycle():
    assert _cycle(_graph()) == []


def test_no_module_uses_another_modules_private_names():
    modules = _modules()
    offences = []
    for name, tree in modules.items():
        imported = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and node.module == "recsys_spark" for alias in node.names}
        offences += [f"{name}: from recsys_spark.{m} import {n}" for m, n in _imports(tree)
                     if n.startswith("_") and m != name]
        offences += [f"{name}: {node.value.id}.{node.attr}" for node in ast.walk(tree)
                     if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                     and node.value.id in imported and node.attr.startswith("_")]
    assert offences == []


def test_benchmarks_are_outside_the_product():
    assert not list(PACKAGE.glob("bench*.py"))
    assert all(not m.startswith("benchmarks") for deps in _graph().values() for m in deps)


def test_the_torch_side_imports_without_pyspark():
    # Training ranks and the GPU benchmarks run these where there is no Spark.
    code = ("import sys; sys.modules['pyspark'] = None\n"
            "import recsys_spark.model, recsys_spark.topk, recsys_spark.trainer, recsys_spark.checkpoints\n"
            "import recsys_spark.ranking, recsys_spark.metrics, recsys_spark.ranks, recsys_spark.devices\n"
            "import recsys_spark.calibration, recsys_spark.collaborative\n"
            "assert 'pyspark.sql' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_product_function_runs_past_about_sixty_lines_without_saying_why():
    long = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                if "Long on purpose" not in (ast.get_docstring(node) or ""):
                    long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long == []
