"""``ditq bench fullsize`` on the tiny PixArt architecture: every stage recorded, the files written."""

import json

from ditq.cli.main import main


def test_fullsize_records_every_stage_and_writes_the_files(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert main(["bench", "fullsize", "--models", "pixart-tiny", "--calib-steps", "3", "-o", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "fullsize.json").read_text())
    (rec,) = result["models"]
    assert rec["model"] == "pixart-tiny" and rec["kind"] == "pixart"
    assert set(rec["stages"]) == {"build", "calibrate", "export", "lint", "validate"}
    assert all(s["seconds"] >= 0 and s["peak_rss_gb"] > 0 for s in rec["stages"].values())
    assert rec["lint_violations"] == 0 and rec["validation"]["passed"]
    assert len(rec["validation"]["groups"]) == 2
    assert rec["malloc_mmap_threshold"] == str(1 << 20)  # the child ran with glibc's mmap threshold fixed
    assert "| pixart-tiny |" in (tmp_path / "fullsize.md").read_text()
    assert not (tmp_path / "artifacts" / "pixart-tiny" / "onnx").exists()  # removed unless --keep-artifacts
    assert main(["bench", "fullsize", "--models", "nope", "-o", str(tmp_path / "x")]) == 1
    assert "unknown architecture" in capsys.readouterr().err
