"""The command table: every ``cli/<command>.py`` owns its flags, and building the parser imports nothing heavy."""

import importlib
import subprocess
import sys

from ditq.cli.main import COMMANDS, build_parser


def test_building_the_whole_parser_imports_no_heavy_module():
    code = ("import sys\nfrom ditq.cli.main import build_parser\n"
            "p = build_parser()\n"
            "for a in p._subparsers._group_actions[0].choices.values(): a.format_help()\n"
            "print([m for m in ('torch', 'onnx', 'onnxruntime', 'diffusers', 'polygraphy', 'tensorrt', 'numpy') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_command_module_owns_add_args_and_run():
    sub = build_parser()._subparsers._group_actions[0]  # type: ignore[union-attr]
    assert list(sub.choices) == list(COMMANDS)
    for name, (module, help_) in COMMANDS.items():
        mod = importlib.import_module(module)
        assert callable(mod.add_args) and callable(mod.run), name
        assert sub.choices[name].description == help_
        assert sub.choices[name].get_default("handler") == module
