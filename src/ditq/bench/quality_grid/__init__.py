"""``ditq bench quality``: the seed papers' comparison on our testbeds, method x {W8A8, W4A8} x sampler steps.

For each method and bit width: calibrate once (each method's own calibration set: PTQ4DiT 25 timesteps x 32
samples, the others 100 x 16, all from the FP sampler with a calibration seed different from the evaluation seed),
export the ONNX set (its size is the artifact size: group graphs + shared weights.bin), then evaluate at every
step count against the FP run of the same seeds and noise (``bench.quality``): mean/min per-step SQNR of the model
output (teacher-forced on the FP trajectory), final-image PSNR vs FP, class accuracy and Fréchet distance from the
digits classifier (demo model only; FP's own values are the floor row). Quality runs on the torch fake-quant
backend (exact Q/DQ arithmetic); every cell also checks ONNX Runtime's exact-QDQ graphs against it on one FP
trajectory input per group, and one cell is evaluated end to end on ONNX Runtime as well.
Peer rows: NVIDIA Model Optimizer (``nvidia-modelopt``, optional) quantizing the same Linear layers with its INT8
max and SmoothQuant configs and INT4-weight (max, AWQ-lite) configs with INT8 activations, same data and metrics.
``--calib-seeds 1 2 3``: every cell and peer row is calibrated (its own calibration data) and evaluated once per
seed against the one FP reference; the table shows the mean and min-max over seeds of the global (pooled MSE) and
mean (per-image) PSNR and of the step SQNR (per-seed values in ``quality.json``), and a paired line per bit width
gives HTG minus the best one-scale static peer with a 95 % bootstrap interval over images (``seeds.py``).
Writes ``quality.md``, ``quality.csv``, ``quality.json`` and plots (``samples_w4a8.png``; with matplotlib,
``sqnr_over_timesteps.png``).
"""

from __future__ import annotations

from ditq.bench.quality_grid.config import (
    BITS,
    METHOD_ORDER,
    TINY,
    QualityConfig,
    parse_method,
    quick_config,
)
from ditq.bench.quality_grid.grid import artifact_bytes, run_quality_grid
from ditq.bench.quality_grid.peers import PEER_CONFIGS, modelopt_config, peer_rows
from ditq.bench.quality_grid.plots import write_plots
from ditq.bench.quality_grid.report import all_rows, format_markdown, write_results

__all__ = ["BITS", "METHOD_ORDER", "PEER_CONFIGS", "TINY", "QualityConfig", "all_rows", "artifact_bytes",
           "format_markdown", "modelopt_config", "parse_method", "peer_rows", "quick_config", "run_quality_grid",
           "write_plots", "write_results"]
