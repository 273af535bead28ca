"""FP8 engine sets need FP8 tensor cores (Ada/Hopper, sm_89+): refused in one line on older GPUs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from ditq.engines.build import check_fp8_gpu
from ditq.errors import DitqError


def _set(formats: list[str]) -> SimpleNamespace:
    return SimpleNamespace(root=Path("onnx"), recipe={"weight_formats": formats})


@pytest.mark.parametrize("sm", ["sm_80", "sm_86", "sm_75"])
def test_fp8_sets_are_refused_before_ada(sm):
    with pytest.raises(DitqError, match=f"W8A8-FP8.*{sm}.*--format int"):
        check_fp8_gpu(_set(["FP8E4M3/channel"]), "A100", sm)  # type: ignore[arg-type]


@pytest.mark.parametrize("sm", ["sm_89", "sm_90", "sm_100"])
def test_fp8_sets_pass_on_ada_and_hopper_and_int8_sets_anywhere(sm):
    check_fp8_gpu(_set(["FP8E4M3/channel"]), "H100", sm)  # type: ignore[arg-type]
    check_fp8_gpu(_set(["INT8/channel"]), "T4", "sm_75")  # type: ignore[arg-type]
