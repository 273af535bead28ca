#!/usr/bin/env bash
# One call on a fresh CUDA machine (H100/H200, CUDA torch preinstalled, no TensorRT, no internet): torch-int8 vs
# FP16/BF16 on DiT-XL/2 and PixArt-α shapes (random weights) at batch 1/8/16, the group-switch overhead and memory.
# Writes OUT/gpu_check.json (default OUT: $OUT if set, else ./gpu_check). Extra arguments go to `ditq bench gpu`
# (e.g. --quick --device cpu to check it runs without a GPU). About 5 minutes on an H200.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
# never reinstall torch: the machine's CUDA build stays; install ditq only if its dependencies are missing
needs="import ditq.bench.gpu_check, ditq.models.configs, ditq.calibration.calibrate, ditq.runtime.backends.torch_int8"
if ! PYTHONPATH=src python3 -c "$needs" 2>/dev/null; then
    constraints="$(mktemp)"
    python3 -c "import torch; print(f'torch=={torch.__version__}')" > "$constraints"
    python3 -m pip install -q --no-build-isolation -e . -c "$constraints"
fi
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
PYTHONPATH=src python3 -m ditq.cli.main bench gpu -o "$out/gpu_check.json" --force "$@" 2>&1 | tee "$out/gpu_check.log"
