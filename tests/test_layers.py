"""The package reads as the pipeline: every module imports only from its own layer or below, and
packages import each other without cycles. `make lint` runs this file.

Layers, bottom to top, are LAYERS below (the README shows the same map).
"""

from __future__ import annotations

import ast
from pathlib import Path

from _support import REPO

LAYERS: list[tuple[str, ...]] = [
    ("latbench.core",),  # errors, file IO, hashing, formats, progress, text helpers
    ("latbench.space", "latbench.models"),  # what can be built: archs, the search space, the networks
    ("latbench.blocks",),  # block configurations and candidates
    ("latbench.export",),  # ONNX / Core ML artifacts
    ("latbench.measuring", "device_runners"),  # one measuring session; the devices it drives
    ("latbench.tables",),  # lookup tables: build, derive, check, overhead model, plausibility
    ("latbench.estimation",),  # estimators and validation
    ("latbench.efficiency",),  # Mobile Efficiency Score, Pareto
    ("latbench.search",),  # Algorithm 1 and accuracy oracles
    ("latbench.report",),  # report model, plots, writers
    ("latbench.api",),  # the public Python API
    ("latbench.commands", "latbench.cli", "latbench.__main__"),  # the command line
]
#: The package's __init__ holds the version (layer 0) and re-exports the API lazily (module
#: __getattr__), which is the one sanctioned upward reference.
LAZY_REEXPORT = "latbench"


def layer_of(module: str) -> int | None:
    best, layer = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, layer = len(p), i
    if layer is None and module == "latbench":
        return 0
    return layer


def modules() -> dict[str, Path]:
    out = {}
    for root in ("latbench", "device_runners"):
        for path in sorted((REPO / root).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every latbench/device_runners import in a file."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, not in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module, not in_function))
            visit(child, inner)

    visit(tree, False)
    return [(m, top) for m, top in found if m.split(".")[0] in ("latbench", "device_runners")]


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "latbench" and len(parts) > 1 else parts[0]


def test_every_module_has_a_layer():
    unmapped = [m for m in modules() if layer_of(m) is None]
    assert not unmapped, f"modules outside the layer map: {unmapped}"


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for module, path in modules().items():
        for target, top in imports(path):
            if module == LAZY_REEXPORT and not top:
                continue
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})")
    assert not upward, "\n".join(upward)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = dfs(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = dfs(n)
            if found:
                return found
    return None


def test_packages_import_each_other_without_cycles():
    graph: dict[str, set[str]] = {}
    for module, path in modules().items():
        if module == LAZY_REEXPORT:
            continue
        src = package_of(module)
        for target, _ in imports(path):
            dst = package_of(target)
            if dst != src and dst != "latbench":
                graph.setdefault(src, set()).add(dst)
    assert _cycle(graph) is None, f"package import cycle: {' -> '.join(_cycle(graph))}"


def test_modules_import_each_other_without_cycles_at_import_time():
    known = modules()
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        for target, top in imports(path):
            if top:
                # `from pkg import name` may name a submodule or an attribute: resolve to a module.
                while target not in known and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target != module:
                    graph.setdefault(module, set()).add(target)
    # A package importing its own submodules (re-exports) is not a cycle of the code.
    for module in list(graph):
        graph[module] = {t for t in graph[module] if not t.startswith(module + ".")}
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_the_layer_test_sees_real_imports():
    # Guard against a parser that finds nothing (then every check above would pass vacuously).
    found = dict(imports(REPO / "latbench" / "tables" / "build.py"))
    assert "latbench.measuring.session" in found and found["latbench.measuring.session"] is True
    assert layer_of("latbench.tables.build") == 5 and layer_of("device_runners.cpu") == 4
