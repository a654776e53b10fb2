"""The package's layering, checked on its source: no import cycle (imports inside functions included), Ray
Tune/Train only in the orchestration package, MLflow only in tracking, the worker side free of the report,
and the one private Ray hook still where rayexp's pinned Ray keeps it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rayexp"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(module: str) -> set[str]:
    """Every module ``module`` imports, at its top or inside a function (``from a import b`` counts ``a`` and,
    when it is a module, ``a.b``)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _internal_graph() -> dict[str, set[str]]:
    return {m: {t for t in _imports(m) if t in MODULES and t != m} for m in MODULES}


def test_no_import_cycle_among_rayexp_modules_counting_imports_inside_functions():
    graph = _internal_graph()
    state: dict[str, int] = {}  # 1 visiting, 2 done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def _importers(prefix: str) -> set[str]:
    return {m for m in MODULES if any(t == prefix or t.startswith(prefix + ".") for t in _imports(m))}


def test_ray_tune_and_train_only_in_the_orchestration_package():
    outside = {m for m in _importers("ray.tune") | _importers("ray.train") if not m.startswith("rayexp.orchestrate")}
    assert not outside


def test_mlflow_only_in_tracking():
    assert {m for m in _importers("mlflow") if not m.startswith("rayexp.tracking")} == set()


def test_neither_tracking_nor_orchestration_depends_on_the_report():
    graph = _internal_graph()

    def reaches(module: str, seen: set[str]) -> set[str]:
        for target in graph[module] - seen:
            seen.add(target)
            reaches(target, seen)
        return seen

    for module in MODULES:
        if module.startswith(("rayexp.tracking", "rayexp.orchestrate")):
            assert not {"rayexp.report", "rayexp.recommend"} & reaches(module, set()), module


def test_no_orchestration_module_over_300_lines():
    for module, path in MODULES.items():
        if module.startswith("rayexp.orchestrate"):
            assert len(path.read_text().splitlines()) <= 300, module


def test_the_private_ray_data_hook_rayexp_uses_is_still_there():
    """``sweep.keep_ray_data_stats_actor`` calls Ray Data's private ``get_or_create_stats_actor``; pyproject.toml
    pins Ray's minor version for it. A Ray that moved or changed it fails here, not in a sweep."""
    import inspect

    import ray
    from ray.data._internal.stats import get_or_create_stats_actor

    assert ray.__version__.startswith("2.60.")
    assert list(inspect.signature(get_or_create_stats_actor).parameters) == []


def test_what_the_gpu_check_imports_reaches_neither_ray_nor_mlflow():
    """``benchmarks/gpu_check.py`` runs on a GPU machine that has neither (its smoke test runs it with both
    blocked): the modules it imports must not reach them, through imports inside functions either."""
    graph = _internal_graph()
    roots = ("rayexp.backbones", "rayexp.data.batches", "rayexp.data.catalog", "rayexp.training")
    reached, todo = set(), list(roots)
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(graph[module])
    offending = {m: sorted(t for t in _imports(m) if t.split(".")[0] in ("ray", "mlflow")) for m in sorted(reached)}
    assert {m: found for m, found in offending.items() if found} == {}


def test_the_statistical_tests_take_plain_numbers_only():
    """``rayexp.inference`` holds the tests every verdict rests on: it imports no other rayexp module (so no
    tracking schema, no rows), and neither Ray nor MLflow."""
    found = _imports("rayexp.inference")
    assert not {t for t in found if t.split(".")[0] in ("rayexp", "ray", "mlflow")}
