"""`import ditq` stays lean, every module imports without the optional extras, and tensorrt stays lazy."""

import importlib
import pkgutil
import subprocess
import sys

import ditq


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
              "W8A8_SMOOTHQUANT", "W8A8_PTQ4DIT", "W4A8_QDIT", "W8A8_VIDITQ", "W8A8_MINMAX")


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
