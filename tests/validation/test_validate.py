import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ditq.cli.main import main


@pytest.fixture(scope="module")
def validation_dir(tiny_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("val") / "validation"
    assert main(["validate", str(tiny_onnx.root), "-o", str(out), "--steps", "20"]) == 0
    return out


def test_validate_reports_every_group(validation_dir, tiny_onnx):
    report = json.loads((validation_dir / "validation.json").read_text())
    assert report["passed"] and len(report["groups"]) == len(tiny_onnx.groups)
    for g in report["groups"]:
        lo, hi = g["interval"]
        assert all(lo <= t <= hi for t in g["timesteps"])  # inputs drawn from the group's own timesteps
        m = g["metrics"]
        assert m["onnxrt-fp"]["sqnr_db"] > 60
        assert m["torch-fakequant"]["sqnr_db"] >= m["onnxrt-qdq"]["sqnr_db"] - 1.0
        assert (validation_dir / f"group_{g['group']}" / "golden.json").is_file()


def test_failed_threshold_exits_3(capsys, tiny_onnx, tmp_path):
    assert main(["validate", str(tiny_onnx.root), "-o", str(tmp_path / "v"), "--steps", "20",
                 "--min-sqnr", "200"]) == 3
    assert "check failed" in capsys.readouterr().err


def test_saved_files_replay_with_the_polygraphy_cli(validation_dir, tiny_onnx):
    exe = Path(sys.executable).with_name("polygraphy")
    exe = exe if exe.exists() else shutil.which("polygraphy")
    if exe is None:
        pytest.skip("polygraphy CLI not on PATH")
    g0 = validation_dir / "group_0"
    run = subprocess.run([str(exe), "run", str(tiny_onnx.path(None)), "--onnxrt", "--load-inputs",
                          str(g0 / "inputs.json"), "--load-outputs", str(g0 / "golden.json"), "--atol", "1e-4",
                          "--rtol", "1e-3"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "PASSED" in run.stdout + run.stderr
