"""The shape of the package, read from the source: no import cycles at import time, and
litellm imported by the two modules that own it only."""

from __future__ import annotations

import ast
from pathlib import Path

import moa

ROOT = Path(moa.__file__).parent

# litellm is imported by the llm neuron's litellm transport and by the litellm adapter only
# (everything else reaches it through `load_litellm()`, which configures it first).
LITELLM_IMPORTERS = {
    "moa.neurons.llm._litellm",
    "moa.adapters.litellm_provider",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


_BLOCKS = (ast.With, ast.AsyncWith, ast.ClassDef, ast.For, ast.While)
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _imports(tree: ast.Module, *, lazy: bool) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of a module, `if TYPE_CHECKING:` blocks aside.

    Without `lazy`, only those run when the module is imported (module level, including
    under `if`/`try`/`with` and class bodies); with it, those inside functions too.
    """
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody):
                    visit(block)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, _BLOCKS) or (lazy and isinstance(node, _FUNCTIONS)):
                visit(node.body)

    visit(tree.body)
    return found


def _targets(module: str, node: ast.Import | ast.ImportFrom, *, packages: bool) -> set[str]:
    """The moa modules an import statement loads: the module named (or, for `from m import
    x`, `m.x` if that is a module), and with `packages` the `__init__` of each package on the
    way, which Python runs first (`moa` itself aside: the public facade imports everything,
    so every module would depend on it)."""
    if isinstance(node, ast.Import):
        named = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        named = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    loaded: set[str] = set()
    for name in named:
        parts = name.split(".")
        for i in range(2 if packages else len(parts), len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in MODULES and prefix != module and not module.startswith(prefix + "."):
                loaded.add(prefix)
    return loaded


def _graph(*, lazy: bool = False, packages: bool = True) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[module] = set().union(
            *(_targets(module, node, packages=packages) for node in _imports(tree, lazy=lazy))
        )
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_the_graph_sees_the_packages() -> None:
    graph = _graph()
    assert "moa.config._models" in graph["moa.config"]
    assert "moa.config" in graph["moa.neurons.base"]
    assert "moa.neurons.llm._neuron" in graph["moa.neurons.llm"]
    # importing moa.neurons.llm runs moa/neurons/__init__.py first
    assert {"moa.neurons", "moa.neurons.llm"} <= graph["moa.adapters.litellm_provider"]


def test_no_import_cycles_among_moa_modules() -> None:
    """What runs on import (packages' `__init__` included) never loops back."""
    assert _cycles(_graph()) == []


def test_no_dependency_cycles_even_through_lazy_imports() -> None:
    """Imports inside functions count too (as direct dependencies): the config models, the
    plugin registry and the `Neuron` base class no longer depend on each other in a ring."""
    assert _cycles(_graph(lazy=True, packages=False)) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_config_models_know_nothing_of_the_registry() -> None:
    tree = ast.parse(MODULES["moa.config._models"].read_text(encoding="utf-8"))
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert not {m for m in imported if m and m.startswith(("moa.plugins", "moa.neurons"))}


def test_only_the_litellm_transport_and_adapter_import_litellm() -> None:
    importers = set()
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            if any(name == "litellm" or name.startswith("litellm.") for name in names):
                importers.add(module)
    assert importers == LITELLM_IMPORTERS
