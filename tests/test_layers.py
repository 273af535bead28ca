"""The house keeps its shape: each layer imports only the layers below it (STYLE §1, DESIGN §1).

core <- artifacts <- models <- stages (calibration, export, engines, runtime, validation) <- testbed <- bench
<- api/demo <- cli. The stages meet only through artifacts; validation may use runtime. Every import counts,
function-level (lazy) ones and ``TYPE_CHECKING`` ones included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ditq

SRC = Path(ditq.__file__).parent

LAYER = {
    "errors": -1, "_deps": 0,
    "core": 1,
    "artifacts": 2,
    "models": 3,
    "calibration": 4, "export": 4, "engines": 4, "runtime": 4, "validation": 4,
    "testbed": 5,
    "bench": 6,
    "config": 6.5, "api": 7, "demo": 7,
    "serve": 7.5,  # model repositories and the local server: may use runtime (the row router)
    "cli": 8,
}
ALLOWED_SIDEWAYS = {("validation", "runtime")}  # validate runs the backends it checks


def _unit(module: str) -> str:
    """``ditq.runtime.backends.onnxruntime`` -> ``runtime``; ``ditq`` itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "ditq"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module.split(".")[0] == "ditq":
                # ``from pkg import sub`` imports the submodule ``pkg.sub`` where one exists, else ``pkg`` itself
                subs = [f"{module}.{a.name}" for a in node.names if _is_module(f"{module}.{a.name}")]
                found += [(node.lineno, m) for m in subs]
                if len(subs) < len(node.names) and module != "ditq":
                    found.append((node.lineno, module))
    return found


def test_every_module_has_a_layer() -> None:
    units = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in SRC.rglob("*.py")} - {"__init__", "__main__"}
    assert units <= set(LAYER), f"give these a layer in tests/test_layers.py: {sorted(units - set(LAYER))}"


def test_layers_import_only_downward() -> None:
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        unit = path.relative_to(SRC).parts[0].removesuffix(".py")
        if unit in ("__init__", "__main__"):
            continue  # the lazy facade re-exports from every layer
        for line, module in _imports(path):
            other = _unit(module)
            if other in (unit, "__init__") or other not in LAYER:
                continue  # within the unit; ``ditq.__version__``
            if LAYER[other] < LAYER[unit] or (unit, other) in ALLOWED_SIDEWAYS:
                continue
            bad.append(f"{path.relative_to(SRC)}:{line} ({unit}, layer {LAYER[unit]}) imports {module} "
                       f"({other}, layer {LAYER[other]})")
    assert not bad, "imports that go up or sideways:\n" + "\n".join(bad)


def test_no_import_cycles_between_modules() -> None:
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {m for _, m in _imports(path)}
    modules = set(graph)
    graph = {k: {m for m in v if m in modules and m != k} for k, v in graph.items()}
    seen: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph[node]):
            if seen.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in seen:
                visit(nxt, [*stack, nxt])
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node, [node])
    cycles = [c for c in cycles if not any(m == "ditq" for m in c)]  # the facade imports lazily from all
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
