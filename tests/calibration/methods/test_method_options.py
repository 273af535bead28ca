"""Method options are checked against their config's annotations before any calibration runs."""

from __future__ import annotations

import re

import pytest

from ditq.errors import DitqError


@pytest.mark.parametrize(("method", "params", "message"), [
    ("htg", {"rotation_signs": "maybe"}, "rotation_signs must be true or false, got 'maybe'"),
    ("htg", {"groups": True}, "groups must be an integer or a string"),
    ("htg", {"alphas": (0.5, "x")}, "alphas must be a list of numbers"),
    ("viditq", {"rotation_block": 6.5}, "rotation_block must be an integer"),
    ("qdit", {"group_sizes": 32}, "group_sizes must be a list of integers"),
])
def test_method_options_of_the_wrong_type_are_one_line_errors(method, params, message):
    """Options come from the command line as JSON, else strings: a mistyped value (``rotation_signs=maybe`` is the
    string 'maybe', which a dataclass would take as true) is refused before any calibration runs."""
    from ditq.calibration.methods import method_config

    with pytest.raises(DitqError, match=re.escape(message)):
        method_config(method, **params)
    ok = method_config("htg", rotation_signs=False, groups="auto", alphas=(0.5, 0.8), rotation=64)
    assert ok.alphas == (0.5, 0.8)


def test_cli_refuses_a_mistyped_option_before_calibrating(tiny_model_dir, tmp_path, capsys):
    from ditq.cli.main import main

    out = tmp_path / "r"
    assert main(["calibrate", str(tiny_model_dir), "--param", "rotation_signs=maybe", "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ditq calibrate: error:") and "rotation_signs" in err and "\n" not in err
    assert not out.exists()
