"""Graph surgery on the reference ONNX: graft one group's folded weights and insert TensorRT-style Q/DQ.

Per quantized Linear (``MatMul(x, W^T)`` from the dynamo exporter, found by its module scope):
- weight: INT8 initializer [K, N] -> DequantizeLinear(per-channel scale [N], axis=1) -> MatMul B
- activation: [Sub(z) -> Mul(1/s) ->] QuantizeLinear(scalar scale) -> DequantizeLinear -> MatMul A, one pair per
  consumer (ONNX Runtime fuses a DQ->MatMul into an integer kernel only when the pair is not shared).
Zero points are INT8 zeros; scales have the graph's float type (TensorRT's strongly-typed rule).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from ditq.calibration.quantizers import quantize
from ditq.calibration.recipe import Recipe
from ditq.export.fold import PreAffine
from ditq.models.dit import Site

SCOPE_KEY = "pkg.torch.onnx.name_scopes"
MODULE_PREFIX = "m."  # the Denoiser wraps the transformer as attribute ``m``


@dataclass(frozen=True)
class GemmSite:
    linear: str  # module path in the transformer
    node: str  # MatMul node name
    weight: str  # initializer name of W^T [K, N]


def _scopes(node: onnx.NodeProto) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == SCOPE_KEY:
            import ast

            return list(ast.literal_eval(prop.value))
    return []


def find_gemms(model: onnx.ModelProto, linears: set[str]) -> dict[str, GemmSite]:
    """Map each quantized Linear to its MatMul node through the exporter's module-scope metadata."""
    inits = {t.name for t in model.graph.initializer}
    found: dict[str, GemmSite] = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        modules = [s[len(MODULE_PREFIX):] for s in _scopes(node) if s.startswith(MODULE_PREFIX)]
        if modules and modules[-1] in linears:
            if modules[-1] in found:
                raise RuntimeError(f"two MatMuls carry the scope of {modules[-1]}")
            found[modules[-1]] = GemmSite(modules[-1], node.name, node.input[1])
    missing = sorted(linears - set(found))
    if missing:
        raise RuntimeError(f"the exported graph has no MatMul for {missing[0]} (and {len(missing) - 1} more)")
    return found


def _float_type(model: onnx.ModelProto) -> int:
    return model.graph.input[0].type.tensor_type.elem_type


def apply_group(
    reference: onnx.ModelProto,
    gemms: Mapping[str, GemmSite],
    sites: list[Site],
    recipe: Recipe | None,
    group_id: int,
    folded: Mapping[str, torch.Tensor],
    pre: PreAffine,
    changed: set[str],
) -> onnx.ModelProto:
    """A copy of ``reference`` with group ``group_id``'s folded state; Q/DQ inserted unless ``recipe`` is None.

    ``changed`` names the parameters folding altered: each must be found in the graph, or this is a bug.
    """
    model = onnx.ModelProto()
    model.CopyFrom(reference)
    graph = model.graph
    ftype = _float_type(model)
    npf = helper.tensor_dtype_to_np_dtype(ftype)
    inits = {t.name: t for t in graph.initializer}
    quantized = {lin for s in sites for lin in s.linears}
    covered: set[str] = set()

    # 1) parameters that keep their names (biases, adaLN modulation, embedders): swap values
    for name, init in inits.items():
        key = name[len(MODULE_PREFIX):] if name.startswith(MODULE_PREFIX) else None
        if key in folded:
            value = folded[key].detach().numpy()
            if tuple(init.dims) != value.shape:
                raise RuntimeError(f"initializer {name} has shape {tuple(init.dims)}, parameter {value.shape}")
            init.CopyFrom(numpy_helper.from_array(value.astype(helper.tensor_dtype_to_np_dtype(init.data_type)), name))
            covered.add(key)

    # 2) weights of quantized Linears (exported transposed): folded value, INT8 + DQ when quantizing
    nodes = {n.name: n for n in graph.node}
    new_nodes: dict[str, list[onnx.NodeProto]] = {}
    for lin in sorted(quantized):
        gs = gemms[lin]
        w = folded[f"{lin}.weight"].detach()
        old = inits[gs.weight]
        if tuple(old.dims) != (w.shape[1], w.shape[0]):
            raise RuntimeError(f"{gs.weight} has shape {tuple(old.dims)}, expected the transpose of {tuple(w.shape)}")
        covered.add(f"{lin}.weight")
        node = nodes[gs.node]
        if recipe is None:
            old.CopyFrom(numpy_helper.from_array(w.T.numpy().astype(npf), gs.weight))
            continue
        w_scale = recipe.w_scale(lin)
        q = quantize(w, w_scale[:, None], recipe.w_bits).to(torch.int8).T.contiguous()
        graph.initializer.remove(old)
        graph.initializer.extend([
            numpy_helper.from_array(q.numpy(), f"{lin}.weight_int8"),
            numpy_helper.from_array(w_scale.numpy().astype(npf), f"{lin}.w_scale"),
            numpy_helper.from_array(np.zeros(w.shape[0], np.int8), f"{lin}.w_zero_point"),
        ])
        dq_w = helper.make_node("DequantizeLinear", [f"{lin}.weight_int8", f"{lin}.w_scale", f"{lin}.w_zero_point"],
                                [f"{lin}.weight_dq"], name=f"{lin}.weight_dq", axis=1)
        node.input[1] = f"{lin}.weight_dq"
        site = next(s for s in sites if lin in s.linears)
        x = node.input[0]
        chain: list[onnx.NodeProto] = []
        if site.name in pre:
            shift, inv = pre[site.name]
            graph.initializer.extend([numpy_helper.from_array(shift.numpy().astype(npf), f"{lin}.pre_shift"),
                                      numpy_helper.from_array(inv.numpy().astype(npf), f"{lin}.pre_scale")])
            chain += [helper.make_node("Sub", [x, f"{lin}.pre_shift"], [f"{lin}.shifted"], name=f"{lin}.pre_sub"),
                      helper.make_node("Mul", [f"{lin}.shifted", f"{lin}.pre_scale"], [f"{lin}.scaled"],
                                       name=f"{lin}.pre_mul")]
            x = f"{lin}.scaled"
        graph.initializer.extend([
            numpy_helper.from_array(np.array(float(recipe.act_scale(site.name, group_id)), npf), f"{lin}.a_scale"),
            numpy_helper.from_array(np.array(0, np.int8), f"{lin}.a_zero_point"),
        ])
        chain += [
            helper.make_node("QuantizeLinear", [x, f"{lin}.a_scale", f"{lin}.a_zero_point"], [f"{lin}.input_q"],
                             name=f"{lin}.input_q"),
            helper.make_node("DequantizeLinear", [f"{lin}.input_q", f"{lin}.a_scale", f"{lin}.a_zero_point"],
                             [f"{lin}.input_dq"], name=f"{lin}.input_dq"),
            dq_w,
        ]
        node.input[0] = f"{lin}.input_dq"
        new_nodes[gs.node] = chain

    lost = sorted(changed - covered)
    if lost or (pre and recipe is None):
        raise RuntimeError(f"folded parameters not found in the exported graph: {lost[:3]}")

    # keep the node list topologically sorted: each inserted chain goes right before its MatMul
    ordered: list[onnx.NodeProto] = []
    for node in graph.node:
        ordered += new_nodes.get(node.name, [])
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    return model
