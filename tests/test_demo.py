import json
import math

from ditq.cli.main import main


def test_demo_end_to_end_on_a_tiny_model(capsys, tiny_model_dir, tmp_path):
    out = tmp_path / "demo"
    code = main(["-q", "demo", "--model", str(tiny_model_dir), "-o", str(out), "--steps", "12", "--samples", "2",
                 "--eval-samples", "4", "--groups", "2"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert set(report["methods"]) == {"htg", "minmax"}
    htg = report["methods"]["htg"]
    assert len(htg["groups"]) == 2 and htg["validation_passed"]
    assert len(htg["quality"]["sqnr_per_step_db"]) == 12
    assert math.isfinite(htg["quality"]["psnr_db"]) and htg["latency"]["ratio"] > 0
    for name in ("grid.png", "report.md", "sqnr_per_step.csv", "recipe-htg/manifest.json",
                 "onnx-htg/group_1.onnx", "onnx-minmax/validation/validation.json"):
        assert (out / name).is_file(), name
    assert main(["lint", str(out / "onnx-htg")]) == 0
    # the demo scores HTG's candidates on the quick 6 x 8 probes (the library default is 12 x 16)
    recipe = json.loads((out / "recipe-htg" / "recipe.json").read_text())
    assert recipe["calibration"]["method"]["probes"] == [6, 8]


def test_quality_rows_show_a_dash_for_what_a_row_does_not_measure():
    from ditq.demo import _quality_row

    row = _quality_row("htg W8A8, ORT CPU integer kernels", 3, {"sqnr_mean_db": 46.25, "sqnr_min_db": 20.12}, "")
    assert row == "| htg W8A8, ORT CPU integer kernels | 3 | 46.25 | 20.12 | – | – | – |  |"
    assert "nan" not in _quality_row("x", 1, {"sqnr_mean_db": 1.0, "sqnr_min_db": math.nan, "psnr_db": 2.0}, "1.00")
