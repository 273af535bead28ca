"""torch-int8 (real INT8 GEMMs via torch._int_mm) matches the fake-quant reference and shares weights across groups."""

import pytest
import torch

from ditq.errors import DitqError
from ditq.runtime.backends import open_backend
from ditq.runtime.backends.fake_quant import group_denoiser
from ditq.runtime.backends.torch_int8 import Int8Linear, int_mm, torch_int8_backend


def _sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.square().sum() / (ref - out).square().sum().clamp_min(1e-30)))


def _mid_timestep(recipe, g: int) -> float:
    lo, hi = recipe.groups[g].interval
    return float((lo + hi) // 2)


@pytest.fixture(scope="module")
def int8_backend(tiny_model, tiny_recipe):
    return torch_int8_backend(tiny_model, tiny_recipe)


def test_int_mm_runs_on_cpu_for_any_shape():
    a = torch.randint(-128, 128, (5, 7), dtype=torch.int8)
    b = torch.randint(-128, 128, (3, 7), dtype=torch.int8)
    assert torch.equal(int_mm(a, b.t()), a.int() @ b.int().t())


@torch.no_grad()
def test_matches_fake_quant_reference_in_every_group(tiny_model, tiny_recipe, int8_backend, feeds):
    for g in range(tiny_recipe.num_groups):
        ref_model = group_denoiser(tiny_model, tiny_recipe, g)
        (x, t, y), = feeds([_mid_timestep(tiny_recipe, g)], batch=4, seed=g)
        assert int8_backend.group_of(float(t[0])) == g
        ref = ref_model(x, t, y)
        out = int8_backend(x, t, y)
        assert _sqnr_db(ref, out) > 40, (g, _sqnr_db(ref, out))


@torch.no_grad()
def test_dynamic_per_token_option_runs(tiny_model, tiny_recipe, feeds):
    backend = torch_int8_backend(tiny_model, tiny_recipe, dynamic=True)
    fp = tiny_model.denoiser()
    (x, t, y), = feeds([500.0], batch=2)
    assert _sqnr_db(fp(x, t, y), backend(x, t, y)) > 15
    assert all(m.act_scale is None for m in backend.modules[0].modules() if isinstance(m, Int8Linear))


def test_groups_share_weights_and_switch_without_copying(int8_backend, tiny_recipe, feeds):
    mods = [dict(m.named_modules()) for m in int8_backend.modules]
    lin = "m.transformer_blocks.0.attn1.to_q"
    assert isinstance(mods[0][lin], Int8Linear)
    # folded INT8 weights are identical across groups: one tensor; per-group biases/scales stay separate
    assert all(m[lin].weight_int8 is mods[0][lin].weight_int8 for m in mods[1:])
    assert int8_backend.shared_bytes > 0
    ptrs = [{n: t.data_ptr() for n, t in m.state_dict(keep_vars=True).items()} for m in int8_backend.modules]
    seen, before = [], list(int8_backend.calls)
    with torch.no_grad():
        for g in reversed(range(tiny_recipe.num_groups)):
            (x, t, y), = feeds([_mid_timestep(tiny_recipe, g)], batch=2)
            seen.append(int8_backend.device_fn(float(t[0])))
            int8_backend(x, t, y)
    assert [id(f) for f in seen] == [id(f) for f in reversed(int8_backend.device_fns)]
    assert ptrs == [{n: t.data_ptr() for n, t in m.state_dict(keep_vars=True).items()} for m in int8_backend.modules]
    assert [a - b for a, b in zip(int8_backend.calls, before)] == [1] * tiny_recipe.num_groups


def test_compile_needs_cuda(tiny_model, tiny_recipe):
    with pytest.raises(DitqError, match="CUDA"):
        torch_int8_backend(tiny_model, tiny_recipe, cuda_graphs=True)


@pytest.mark.gpu
@torch.no_grad()
def test_cuda_matches_cpu(tiny_model, tiny_recipe, int8_backend, feeds):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    gpu = torch_int8_backend(tiny_model, tiny_recipe, device="cuda", cuda_graphs=True)
    for batch in (1, 8):  # batch 1: 16 rows, padded for _int_mm (M > 16)
        (x, t, y), = feeds([500.0], batch=batch)
        assert _sqnr_db(int8_backend(x, t, y), gpu(x, t, y)) > 40


@torch.no_grad()
def test_reachable_by_name_from_a_recipe_or_its_onnx_directory(tiny_recipe_dir, tiny_onnx, int8_backend, feeds):
    (x, t, y), = feeds([500.0], batch=2)
    for path in (tiny_recipe_dir, tiny_onnx.root):
        backend, info = open_backend(path, "torch-int8")
        assert backend.name == "torch-int8-htg" and backend.num_classes == 10
        assert info["conditioning"].kind == "class" and info["sample_shape"]
        torch.testing.assert_close(backend(x, t, y), int8_backend(x, t, y))


def test_quantized_transformer_runs_torch_int8(tiny_onnx, int8_backend):
    from ditq.runtime.pipeline import QuantizedTransformer

    qt = QuantizedTransformer.from_pretrained(tiny_onnx.root, backend="torch-int8")
    assert qt.backend.name == "torch-int8-htg" and qt.device.type == "cpu"
    x = torch.randn(2, 1, 8, 8)
    out = qt(x, timestep=torch.tensor(10), class_labels=torch.tensor([3, 10]), return_dict=False)[0]
    torch.testing.assert_close(out, int8_backend(x, torch.full((2,), 10.0), {"class_labels": torch.tensor([3, 10])}))


def test_fp_is_refused_with_the_fix(tiny_recipe_dir):
    with pytest.raises(DitqError, match="--fp is not available with --backend torch-int8.*--backend fake-quant --fp"):
        open_backend(tiny_recipe_dir, "torch-int8", fp=True)


@torch.no_grad()
def test_deactivate_frees_the_groups_and_activate_builds_them_again(tiny_model, tiny_recipe, feeds):
    backend = torch_int8_backend(tiny_model, tiny_recipe)
    (x, t, y), = feeds([500.0], batch=2)
    before = backend(x, t, y)
    backend.deactivate()
    assert not backend.is_active and backend.modules == [] and backend.device_fns == []
    with backend:
        assert len(backend.modules) == tiny_recipe.num_groups
        torch.testing.assert_close(backend(x, t, y), before)
    assert not backend.is_active
