"""``ditq bench gpu`` (scripts/gpu_check.sh) on its CPU path, so the one-shot GPU run is known to run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import torch

from ditq.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def test_split_groups_keeps_the_timesteps_and_varies_the_scales(tiny_model):
    from ditq.bench.gpu_check import split_groups
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config

    one = calibrate(tiny_model, method_config("minmax"), CalibConfig(steps=2, samples=1, progress=False))
    three = split_groups(one, 3)
    assert [g.group_id for g in three.groups] == [0, 1, 2]
    assert three.groups[0].interval[0] == one.groups[0].interval[0]
    assert three.groups[-1].interval[1] == one.groups[0].interval[1]
    assert all(a.interval[1] + 1 == b.interval[0] for a, b in zip(three.groups, three.groups[1:]))
    site = one.sites[0].name
    assert torch.allclose(three.act_scale(site, 2), one.act_scale(site, 0) * 1.1)
    three.check()


def test_gpu_check_quick_runs_on_cpu_and_writes_json(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert main(["-q", "bench", "gpu", "--quick", "--device", "cpu", "--models", "tiny", "--batches", "1",
                 "-o", str(out)]) == 0
    result = json.loads(out.read_text())
    (model,) = result["models"]
    assert "error" not in model, model.get("error")
    (dtype,) = model["dtypes"]
    assert dtype["groups"] == 2 and dtype["weights_bytes"]["int8_all_groups"] > 0
    (row,) = dtype["rows"]
    assert row["batch"] == 1 and {"fp", "int8", "int8_switching"} <= set(row)
    assert "group_switch_overhead_ms" in row
    assert "| tiny | float32 | 1 |" in capsys.readouterr().out


def test_gpu_check_script_runs_its_cpu_path(tmp_path):
    script = ROOT / "scripts" / "gpu_check.sh"
    assert "torch==" in script.read_text()  # a pip install there pins the machine's torch, never replaces it
    proc = subprocess.run([str(script), "--quick", "--device", "cpu", "--models", "tiny", "--batches", "1",
                           "--dtypes", "float32"], env={**os.environ, "OUT": str(tmp_path / "out")},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [m["model"] for m in result["models"]] == ["tiny"] and "error" not in result["models"][0]
    assert (tmp_path / "out" / "gpu_check.log").read_text().count("| tiny | float32 | 1 |") == 1
