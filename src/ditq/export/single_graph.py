"""One graph for all timestep groups (a prototype): what differs between the groups' graphs becomes runtime inputs.

The per-group ONNX set holds G graphs that differ only in small tensors (biases with folded shifts, the explicit
pre-shifts, activation scales); TensorRT plans embed their weights, so G engines hold G copies. Here:
- every initializer that differs between groups, other than an activation scale, becomes a graph input of the same
  name (the group's value is fed at each call);
- an activation scale ``s_g`` (the scalar shared by a QuantizeLinear/DequantizeLinear pair) stays a constant,
  group 0's ``s_0``, and the group's ratio ``r_g = s_g / s_0`` is applied around it: ``Mul(x, 1/r_g)`` before the
  QuantizeLinear and ``Mul(y, r_g)`` on the output of each MatMul the DequantizeLinear feeds. This is exact:
  ``s_0 * round(x / r_g / s_0) * r_g = s_g * round(x / s_g)`` and the GEMM is linear in its activation input (the
  bias is added after the MatMul, so after the Mul). Inputs ``{scale}.inv_ratio`` and ``{scale}.ratio``.
- weights, weight scales and zero points must be the same in every group (one shared copy): a set whose weights
  differ per group is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from ditq.artifacts.onnx import OnnxArtifact
from ditq.artifacts.onnx_data import tensor_value
from ditq.artifacts.single_graph import save_feeds
from ditq.errors import DitqError


@dataclass
class SingleGraph:
    model: onnx.ModelProto
    feeds: list[dict[str, np.ndarray]]  # per group (in the set's order): the inputs that select the group
    varying: list[str]  # initializers turned into inputs (biases, shifts)
    ratios: list[str]  # activation scales kept constant, with ratio inputs around their Q/DQ pair


def _key(tensor: onnx.TensorProto) -> tuple[Any, ...]:
    """What identifies an initializer's value without reading it: its external range (``ditq export`` writes each
    distinct large tensor once, so equal ranges mean equal values) or its inline bytes."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return ("external", tensor.data_type, tuple(tensor.dims), tuple((e.key, e.value) for e in tensor.external_data))
    return ("inline", tensor.SerializeToString())


def _value(tensor: onnx.TensorProto, base_dir: Path) -> np.ndarray:
    return tensor_value(tensor, base_dir)  # not onnx's loader: it refuses ditq triton's hard-linked weights.bin


def single_graph(art: OnnxArtifact) -> SingleGraph:
    """The set's G group graphs merged into one whose group is chosen by the feeds (``SingleGraph.feeds[g]``).

    Reads the graphs without their external weights (only the tensors that differ are read); the result keeps
    group 0's references to the set's ``weights.bin``: save it in the set's directory (``save_single_graph``)."""
    models = [onnx.load(str(art.path(g.group_id)), load_external_data=False) for g in art.groups]
    base = models[0]
    ops = [(n.op_type, tuple(n.input), tuple(n.output)) for n in base.graph.node]
    if any([(n.op_type, tuple(n.input), tuple(n.output)) for n in m.graph.node] != ops for m in models[1:]):
        raise DitqError(f"the group graphs of {art.root} differ in structure, not only in values; a single graph "
                        "needs graphs that differ only in constants: re-run `ditq export`")
    protos = [{t.name: t for t in m.graph.initializer} for m in models]
    names = list(protos[0])
    if any(set(i) != set(names) for i in protos[1:]):
        raise DitqError(f"the group graphs of {art.root} have different initializers; re-run `ditq export`")
    varying = [n for n in names if any(_key(protos[0][n]) != _key(i[n]) for i in protos[1:])]
    inits = [{n: _value(i[n], art.root) for n in varying} for i in protos]

    graph = base.graph
    node_names = [n.name for n in graph.node]
    if len(set(node_names)) != len(node_names) or not all(node_names):
        raise DitqError(f"the group graphs of {art.root} have unnamed or duplicate node names; re-run `ditq export`")
    q_scales = {n.input[1] for n in graph.node if n.op_type == "QuantizeLinear"}
    dq_by_scale: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type == "DequantizeLinear":
            dq_by_scale.setdefault(node.input[1], []).append(node)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    qdq_inputs = {i for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for i in n.input}

    feeds: list[dict[str, np.ndarray]] = [{} for _ in models]
    ratios: list[str] = []
    inputs: list[str] = []
    before: dict[str, list[onnx.NodeProto]] = {}  # node name -> nodes to insert before it
    after: dict[str, list[onnx.NodeProto]] = {}
    for name in varying:
        if name in q_scales and inits[0][name].size == 1:  # an activation scale: constant, ratio inputs around
            ref = inits[0][name]
            if not (ref > 0).all():
                raise DitqError(f"activation scale {name} of group 0 is not positive; re-calibrate")
            for g, arrs in enumerate(inits):
                r = float(arrs[name]) / float(ref)
                feeds[g][f"{name}.ratio"] = np.array(r, ref.dtype)
                feeds[g][f"{name}.inv_ratio"] = np.array(1.0 / r, ref.dtype)
            for node in graph.node:
                if node.op_type == "QuantizeLinear" and node.input[1] == name:
                    x = node.input[0]
                    mul = helper.make_node("Mul", [x, f"{name}.inv_ratio"], [f"{x}.{name}.group"],
                                           name=f"{node.name}.group_inv_ratio")
                    node.input[0] = mul.output[0]
                    before.setdefault(node.name, []).append(mul)
            for dq in dq_by_scale.get(name, []):
                for mm in consumers.get(dq.output[0], []):
                    if mm.op_type != "MatMul" or mm.input[0] != dq.output[0]:
                        raise DitqError(f"{dq.name} feeds {mm.op_type} {mm.name}, not a MatMul's activation input; "
                                        "the single-graph prototype handles only Q/DQ -> MatMul")
                    y = mm.output[0]
                    mm.output[0] = f"{y}.unscaled"
                    after.setdefault(mm.name, []).append(
                        helper.make_node("Mul", [mm.output[0], f"{name}.ratio"], [y], name=f"{mm.name}.group_ratio"))
            ratios.append(name)
            inputs += [f"{name}.inv_ratio", f"{name}.ratio"]
        elif name in qdq_inputs:
            raise DitqError(f"{name} (a weight, weight scale or zero point) differs between groups: one graph "
                            "cannot share the weights; the single-graph form needs per-group shifts and activation "
                            "scales only")
        else:
            for g, arrs in enumerate(inits):
                feeds[g][name] = arrs[name]
            inputs.append(name)

    moved = set(varying) - set(ratios)
    kept = [t for t in graph.initializer if t.name not in moved]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for name in inputs:
        value = feeds[0][name]
        elem = helper.np_dtype_to_tensor_dtype(value.dtype)
        graph.input.append(helper.make_tensor_value_info(name, elem, list(value.shape)))
    ordered: list[onnx.NodeProto] = []
    for node in graph.node:
        ordered += before.get(node.name, [])
        ordered.append(node)
        ordered += after.get(node.name, [])
    del graph.node[:]
    graph.node.extend(ordered)
    graph.name = "single_graph"
    return SingleGraph(model=base, feeds=feeds, varying=sorted(moved), ratios=ratios)


def save_single_graph(sg: SingleGraph, path: Path) -> None:
    """The graph (weights stay in the set's ``weights.bin``: ``path`` must be in the set's directory) and the
    per-group feeds next to it (``ditq.artifacts.single_graph``)."""
    onnx.save_model(sg.model, str(path))
    save_feeds(Path(path), sg.feeds)
