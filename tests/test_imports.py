"""`import ditq` stays lean, every module imports without the optional extras, and tensorrt stays lazy."""

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import ditq

SRC = Path(ditq.__file__).parent.parent


def test_import_ditq_does_not_pull_heavy_modules():
    code = ("import sys, ditq, ditq.cli.main; "
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'diffusers', 'polygraphy', 'tensorrt') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_module_imports_without_tensorrt():
    # importing a blocked module fails; availability probes (importlib.util.find_spec, which diffusers runs for
    # matplotlib at import) still see a spec, as they would for an installed-but-unusable package
    blocker = ("import sys, importlib.abc, importlib.machinery\n"
               "class Fail(importlib.abc.Loader):\n"
               "    def create_module(self, spec): raise ImportError('blocked ' + spec.name)\n"
               "    def exec_module(self, module): raise ImportError('blocked')\n"
               "class Block(importlib.abc.MetaPathFinder):\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in ('tensorrt', 'matplotlib'):\n"
               "            return importlib.machinery.ModuleSpec(name, Fail())\n"
               "sys.meta_path.insert(0, Block())\n")
    names = [m.name for m in pkgutil.walk_packages(ditq.__path__, "ditq.")]
    code = blocker + "import importlib\n" + "".join(f"importlib.import_module({n!r})\n" for n in names)
    subprocess.run([sys.executable, "-c", code], check=True)
    probe = blocker + "import pytest\nwith pytest.raises(ImportError, match='blocked'):\n    import tensorrt\n"
    subprocess.run([sys.executable, "-c", probe], check=True)  # the blocker does block


def test_help_runs():
    assert importlib.import_module("ditq.cli.main").build_parser().format_help().startswith("usage: ditq")


PUBLIC_API = ("calibrate", "export_onnx", "build_engines", "QuantizedTransformer", "sample", "validate",
              "load_recipe", "Recipe", "QuantConfig", "CalibrationSpec", "HTGConfig", "W8A8_HTG", "W4A8_HTG",
              "W8A8_SMOOTHQUANT", "W8A8_PTQ4DIT", "W4A8_QDIT", "W8A8_VIDITQ", "W8A8_MINMAX",
              "W8A8_FP8_HTG")


def test_the_public_api_is_lazy_and_complete():
    # naming the public API (dir, __all__) imports nothing heavy; each name resolves on first access
    code = ("import sys, ditq; names = set(dir(ditq)) & set(ditq.__all__); "
            "heavy = [m for m in ('torch', 'diffusers', 'onnx') if m in sys.modules]; "
            f"print(heavy, sorted(set({PUBLIC_API!r}) - names))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] []"
    for name in PUBLIC_API:
        value = getattr(ditq, name)
        assert value is not None and (not callable(value) or value.__doc__), name
    for name in ("calibrate", "export_onnx", "build_engines", "sample", "validate", "load_recipe"):
        doc = getattr(ditq, name).__doc__
        assert "Args:" in doc and "Example::" in doc, name
    try:
        ditq.no_such_name  # noqa: B018
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("an unknown attribute must raise AttributeError")


def test_the_cli_preset_choices_are_the_presets():
    from ditq.cli.calibrate import PRESETS

    assert PRESETS == tuple(ditq.PRESETS)


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:``."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return inside


def test_tensorrt_is_imported_only_through_the_lazy_proxy():
    """Every TensorRT use goes through ``ditq._deps.trt``; other modules import tensorrt only for type checking."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if _module_name(path) == "ditq._deps":
            continue
        tree = ast.parse(path.read_text())
        typing_only = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n.split(".")[0] == "tensorrt" for n in names) and id(node) not in typing_only:
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert found == []


def test_runtime_modules_import_each_other_without_a_cycle():
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        if not name.startswith("ditq.runtime"):
            continue
        deps = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports included
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
                deps.update(subs or ({node.module} & set(modules)))
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join((*path[path.index(name):], name))}"
        if name in done or name not in graph:
            return
        for dep in sorted(graph[name]):
            visit(dep, (*path, name))
        done.add(name)

    for name in sorted(graph):
        visit(name, ())
