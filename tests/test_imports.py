"""The import structure of the package: no module imports another that imports it back (not even through an import
inside a function), the data modules never reach model loading, and every module imports on its own in a fresh
interpreter.

The graph is read statically from the sources (`ast`), imports inside functions included: such a lazy import still
runs when the function is called, and it is how `training/load.py` and `training/build_depth_model.py` used to
import each other without failing.
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parents[1]
REMOTE_CODE_MODULES = ("configuration_depth", "modeling_qwen2_5_vl_depth", "processing_depth")
# Modules that read or write datasets (and the batches made from them): they must work where no model is loaded.
DATA_MODULES = (
    "training.world",
    "training.make_world",
    "training.make_rgbd_pairs",
    "training.ingest_sensor",
    "training.data_files",
    "training.dataset_files",
    "training.depth_png",
    "training.trl_layout",
    "training.collator",
    "training.processed_cache",
    "training.benchmarks",
)
MODEL_LOADING_MODULES = ("training.model_loading", "training.build_depth_model", "modeling_qwen2_5_vl_depth")


def project_modules(root: Path = REPO_ROOT, packages: tuple[str, ...] = ("training",)) -> dict[str, Path]:
    """Every importable module of the project by dotted name: the remote code and each module of `packages`
    (`__main__` modules left out: importing one runs its command)."""
    modules = {name: root / f"{name}.py" for name in REMOTE_CODE_MODULES if (root / f"{name}.py").exists()}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__main__":
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that the file at `path` imports, at the top or inside functions (blocks under
    `if TYPE_CHECKING:` never run, so they are left out)."""
    imported = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            children = node.orelse
        else:
            children = ast.iter_child_nodes(node)
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module)
            # `from training import world` imports the module training.world.
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in children:
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return imported & known


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    known = set(modules)
    return {name: imported_modules(path, known) - {name} for name, path in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others (Tarjan's strongly connected
    components of more than one module)."""
    order, lowest, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(module: str) -> None:
        order[module] = lowest[module] = len(order)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph[module]):
            if imported not in order:
                visit(imported)
                lowest[module] = min(lowest[module], lowest[imported])
            elif imported in on_stack:
                lowest[module] = min(lowest[module], order[imported])
        if lowest[module] == order[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in order:
            visit(module)
    return cycles


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, list[str]]:
    """Every module `start` imports, directly or not, with the import chain that leads to it."""
    chains, frontier = {start: [start]}, [start]
    while frontier:
        module = frontier.pop()
        for imported in sorted(graph[module]):
            if imported not in chains:
                chains[imported] = [*chains[module], imported]
                frontier.append(imported)
    return chains


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(project_modules())


def test_the_checks_see_a_circle_closed_by_an_import_inside_a_function(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "loader.py").write_text("def load():\n    from pkg.builder import build\n    return build()\n")
    (package / "builder.py").write_text("from pkg.loader import load\n\n\ndef build():\n    return 1\n")
    (package / "typed.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from pkg.user import User\n"
    )
    (package / "user.py").write_text("from pkg import typed\n")
    graph = import_graph(project_modules(tmp_path, packages=("pkg",)))
    assert graph["pkg.loader"] == {"pkg.builder"} and graph["pkg.builder"] == {"pkg.loader"}
    assert graph["pkg.typed"] == set()  # type-checking imports never run
    assert graph["pkg.user"] == {"pkg", "pkg.typed"}
    assert import_cycles(graph) == [["pkg.builder", "pkg.loader"]]


def test_no_module_imports_one_that_imports_it_back(graph):
    assert set(graph) >= {"training.sft", "training.model_loading", "training.data_files", *REMOTE_CODE_MODULES}
    assert import_cycles(graph) == []


@pytest.mark.parametrize("data_module", DATA_MODULES)
def test_data_modules_never_import_model_loading(graph, data_module):
    modules = [name for name in graph if name == data_module or name.startswith(f"{data_module}.")]
    assert modules, f"{data_module} is not a module of the project"
    for module in modules:
        chains = reachable(graph, module)
        reached = {loader: chains[loader] for loader in MODEL_LOADING_MODULES if loader in chains}
        assert not reached, f"{module} imports model loading: {' -> '.join(next(iter(reached.values())))}"


FRESH_IMPORTS = r"""
import importlib, json, sys, traceback
project = tuple(sys.argv[1].split(","))
failures = {}
for name in sys.argv[2:]:
    # As in a fresh interpreter for the project's own modules: none of them imported yet (third-party ones stay).
    for loaded in [loaded for loaded in sys.modules if loaded.split(".")[0] in project]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failures[name] = traceback.format_exc(limit=-3)
print(json.dumps(failures))
"""


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module imported first, before any other of the project's: a circle that the order of a test session's
    imports hides fails here."""
    modules = sorted(project_modules())
    roots = sorted({name.split(".")[0] for name in modules})
    result = subprocess.run(
        [sys.executable, "-c", FRESH_IMPORTS, ",".join(roots), *modules],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    assert failures == {}, "\n".join(f"{name}:\n{error}" for name, error in failures.items())
