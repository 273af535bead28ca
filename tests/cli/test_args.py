"""Argument hygiene: every out-of-range value is a one-line usage error (exit 2) before any work; --debug and -q
work on either side of the subcommand; --help shows the defaults that are really used."""

import json

import pytest

from ditq.cli.main import CALIBRATION_DEFAULTS, build_parser, calibration_default, main


def _usage_error(capsys, argv):
    """main(argv) exits 2, by argparse (SystemExit) or by a check after parsing, with one line on stderr."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(f"ditq {argv[0]}: error: "), err
    return err


@pytest.mark.parametrize("argv, words", [
    (["sample", "X", "-o", "g.png", "--steps", "0"], "--steps"),
    (["sample", "X", "-o", "g.png", "--cfg", "nan"], "finite"),
    (["sample", "X", "-o", "g.png", "--cfg", "inf"], "finite"),
    (["sample", "X", "-o", "g.png", "--cfg", "-1"], "--cfg"),
    (["sample", "X", "-o", "g.png", "--seed", "-1"], "--seed"),
    (["sample", "X", "-o", "g.png", "--threads", "0"], "--threads"),
    (["calibrate", "M", "-o", "out", "--samples", "0"], "--samples"),
    (["calibrate", "M", "-o", "out", "--alpha", "nan"], "finite"),
    (["calibrate", "M", "-o", "out", "--alpha", "1.5"], "--alpha"),
    (["export", "R", "-o", "out", "--opset", "99"], "--opset"),
    (["export", "R", "-o", "out", "--opset", "18"], "--opset"),
    (["validate", "O", "--steps", "0"], "--steps"),
    (["validate", "O", "--min-sqnr", "nan"], "finite"),
    (["validate", "O", "--min-cosine=-inf"], "finite"),
    (["validate", "O", "--min-cosine", "1.5"], "--min-cosine"),
    (["demo", "--eval-samples", "0"], "--eval-samples"),
    (["demo", "--steps", "-3"], "--steps"),
    (["train-demo", "-o", "out", "--train-steps", "0"], "--train-steps"),
    (["build", "O", "-o", "E", "--opt-level", "6"], "--opt-level"),
    (["build", "O", "-o", "E", "--workspace-gib", "nan"], "finite"),
    (["build", "O", "-o", "E", "--workspace-gib", "0"], "--workspace-gib"),
    (["build", "O", "-o", "E", "--max-batch", "0"], "--max-batch"),
    (["build", "O", "-o", "E", "--min-batch", "8", "--opt-batch", "4"], "--min-batch <= --opt-batch"),
    (["calibrate", "M", "-o", "out", "--groups", "10000"], "--groups <= 100"),
    (["calibrate", "M", "-o", "out", "--groups", "30", "--steps", "20"], "--groups <= 20"),
    (["demo", "--groups", "13", "--steps", "12"], "--groups <= 12"),
])
def test_out_of_range_values_are_usage_errors(capsys, tmp_path, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)  # nothing may be written, wherever the paths point
    assert words in _usage_error(capsys, argv)
    assert list(tmp_path.iterdir()) == []


def test_steps_beyond_the_training_timesteps(capsys, tiny_model_dir, tiny_onnx, tmp_path):
    train_t = json.loads((tiny_model_dir / "scheduler" / "scheduler_config.json").read_text())["num_train_timesteps"]
    err = _usage_error(capsys, ["sample", str(tiny_onnx.root), "-o", str(tmp_path / "g.png"),
                                "--steps", str(train_t + 1)])
    assert f"--steps <= {train_t}" in err and not (tmp_path / "g.png").exists()
    err = _usage_error(capsys, ["calibrate", str(tiny_model_dir), "-o", str(tmp_path / "r"),
                                "--steps", str(train_t + 1), "--groups", "2"])
    assert f"--steps <= {train_t}" in err and not list(tmp_path.iterdir())


def test_opset_the_installed_onnx_does_not_know(capsys, monkeypatch, tiny_recipe_dir, tmp_path):
    import onnx

    monkeypatch.setattr(onnx.defs, "onnx_opset_version", lambda: 20)
    err = _usage_error(capsys, ["export", str(tiny_recipe_dir), "-o", str(tmp_path / "o"), "--opset", "21"])
    assert "--opset <= 20" in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [
    ["--debug", "-q", "doctor"], ["doctor", "--debug", "-q"], ["-q", "doctor", "--debug"],
    ["--debug", "bench", "speed", "-o", "x", "-q"], ["bench", "speed", "-o", "x", "--debug", "--quiet"],
])
def test_debug_and_quiet_on_either_side_of_the_subcommand(argv):
    args = build_parser().parse_args(argv)
    assert args.debug is True and args.quiet is True
    args = build_parser().parse_args([a for a in argv if a not in ("--debug", "-q", "--quiet")])
    assert args.debug is False and args.quiet is False


def test_debug_after_the_subcommand_shows_the_traceback(tmp_path):
    from ditq.errors import DitqError

    with pytest.raises(DitqError, match="does not exist"):
        main(["calibrate", str(tmp_path / "nope"), "-o", str(tmp_path / "out"), "--debug"])


def test_calibrate_help_shows_the_defaults_used():
    sub = build_parser()._subparsers._group_actions[0].choices["calibrate"]  # type: ignore[union-attr]
    text = " ".join(sub.format_help().split())
    assert "default: None" not in text
    assert "(default: 100; ptq4dit 25)" in text and "(default: 16; ptq4dit 32)" in text


def test_calibration_defaults_match_the_method_registry():
    from ditq.calibration.methods import METHODS

    assert set(CALIBRATION_DEFAULTS) - {""} <= set(METHODS)
    for name, cls in METHODS.items():
        for key in ("steps", "samples"):
            own = cls.calibration_defaults.get(key, CALIBRATION_DEFAULTS[""][key])
            assert calibration_default(name, key) == own, (name, key)


def test_calibrate_summary_prints_the_steps_and_samples_used(capsys, tiny_model_dir, tmp_path):
    assert main(["-q", "calibrate", str(tiny_model_dir), "-o", str(tmp_path / "r"), "--steps", "3",
                 "--groups", "2"]) == 0
    out = capsys.readouterr().out
    assert f"steps=3  samples={CALIBRATION_DEFAULTS['']['samples']}" in out, out


@pytest.mark.parametrize("ports", ["abc", "18000", "1,70000", "18000,18000"])
def test_bench_serve_ports_are_a_usage_error(capsys, ports):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "serve", "X", "-o", "out", "--ports", ports])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("ditq bench serve: error: ") \
        and "--ports" in err, err
