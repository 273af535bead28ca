"""Graph surgery on the reference ONNX: graft one group's folded weights and insert TensorRT-style Q/DQ.

Per quantized Linear (``MatMul(x, W^T)`` from the dynamo exporter, found by its module scope):
- weight: INT8 initializer [K, N] -> DequantizeLinear(per-channel scale [N], axis=1) -> MatMul B
- activation: [Sub(z) -> Mul(1/s) ->] QuantizeLinear(scalar scale) -> DequantizeLinear -> MatMul A, one pair per
  consumer (ONNX Runtime fuses a DQ->MatMul into an integer kernel only when the pair is not shared).
Zero points are INT8 zeros (INT4 weight DQs omit theirs: symmetric, as Model Optimizer writes them); scales have
the graph's float type (TensorRT's strongly-typed rule).

Recipe specs beyond W8A8 static (``LinearSpec``):
- FP8 E4M3 (``fmt="fp8_e4m3"``, W8A8-FP8): the same pattern with FLOAT8E4M3FN in place of INT8: the weight a
  FLOAT8E4M3FN initializer [K, N] -> DequantizeLinear(scale [N], zero point FLOAT8E4M3FN zeros [N], axis=1), the
  activation QuantizeLinear/DequantizeLinear with a scalar scale and a FLOAT8E4M3FN 0 zero point (opset >= 19;
  ONNX Runtime saturates at +-448 and rounds half to even, as ``ditq.core.quantizers.round_fp8_e4m3``).
- INT4 weights: an INT4 initializer [K, N] -> DequantizeLinear(axis=0, block_size=B, scale [K/B, N]); per output
  channel INT4 is the single block B = K (scale [1, N]), since TensorRT and the lint take INT4 only block-wise.
  INT8 weights in blocks (Q-DiT) use the same block layout with an INT8 initializer.
- weight-only Linears (``weight_only``; INT4 for TensorRT, which has no INT4 x INT8 GEMM: W4A16): the weight DQ
  and the pre-affine, no activation Q/DQ.
- rotation: ``MatMul(x, R)`` with the constant block-Hadamard R before the quantizers, one per site (its Linears
  share it, each with its own Q/DQ pair); one block: ``MatMul(x - shift, diag(inv) R)`` (the pre-affine's scale
  folded in), several: Reshape to rows of the block, ``MatMul(H_block)``, Reshape back (k x block work, not k x k).
  The weight is ``W @ R``, per output channel for W8 (TensorRT has no INT8 blocks). The FP MatMul feeding a Q is
  TensorRT's ordinary explicit-quantization pattern (static scales), so the graph stays TensorRT-buildable.
- per-token dynamic activations (ViDiT-Q), INT8 grid: TensorRT's explicit form with constant scales,
  ``Q(x / s)``/``DQ`` with scale 1 into the INT8 GEMM and its output times ``s``, where
  ``s = max(amax_token / qmax, eps)`` is computed at run time by float ops (``_token_quantizer``: once per input
  tensor, shared by the site's Linears that read it, e.g. q/k/v; each Linear keeps its own Q/DQ pair).
- other dynamic activations (per token and channel group, Q-DiT): a fake-quant in float ops, exact vs torch's
  ``dynamic_fake_quant``:
  ``s = Max(ReduceMax(Abs(x), -1) / qmax, eps); Mul(Clip(Round(x / s), qmin, qmax), s)``, per token, or per token
  and channel group after a Reshape to [-1, K/g, g] (and back). No Q/DQ with runtime scales: TensorRT needs constant
  scales, and a scale that varies along K is no row factor of the GEMM, so these graphs run on ONNX Runtime (and
  the torch backend), not as TensorRT INT8 engines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from ditq.artifacts.recipe import LinearSpec, Recipe
from ditq.core.fold import PreAffine
from ditq.core.quantizers import DYNAMIC_EPS, qrange, rotation_matrix
from ditq.core.sites import Site
from ditq.errors import DitqError

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


def find_params(model: onnx.ModelProto, keys: set[str], state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Map parameters to the initializers that hold them: by name (``m.<key>``), or, where the exporter folded a
    constant expression of the parameter (PixArt's ``scale_shift_table[None]`` becomes an initializer
    ``unsqueeze_N`` [1, 6, C]), by the one initializer with the parameter's values (leading singleton axes
    allowed) that a node inside the parameter's module consumes. Parameters absent from the graph are left out."""
    inits = {t.name: t for t in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            if name in inits:
                consumers.setdefault(name, []).append(node)
    found: dict[str, str] = {}
    for key in sorted(keys):
        if MODULE_PREFIX + key in inits:
            found[key] = MODULE_PREFIX + key
            continue
        value = state[key].detach().float().numpy()
        owner = MODULE_PREFIX + key.rpartition(".")[0]
        matches = []
        for name, init in inits.items():
            dims = [d for d in init.dims]
            if dims[len(dims) - value.ndim:] != list(value.shape) or any(d != 1 for d in dims[:len(dims) - value.ndim]):
                continue
            if not any(owner in _scopes(n) for n in consumers.get(name, [])):
                continue
            arr = numpy_helper.to_array(init)
            if np.array_equal(arr.astype(np.float32).reshape(value.shape), value.astype(arr.dtype).astype(np.float32)):
                matches.append(name)
        if len(matches) == 1:
            found[key] = matches[0]
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
    params: Mapping[str, str],
    weight_only: frozenset[str] = frozenset(),
) -> onnx.ModelProto:
    """A copy of ``reference`` with group ``group_id``'s folded state; Q/DQ inserted unless ``recipe`` is None.

    ``changed`` names the parameters folding altered: each must be found in the graph, or this is a bug.
    ``params`` maps parameters to the initializers holding them (``find_params``). ``weight_only`` Linears get
    their weight DQ (and pre-affine) but no activation Q/DQ.
    """
    model = onnx.ModelProto()
    model.CopyFrom(reference)
    graph = model.graph
    ftype = _float_type(model)
    npf = helper.tensor_dtype_to_np_dtype(ftype)
    inits = {t.name: t for t in graph.initializer}
    quantized = {lin for s in sites for lin in s.linears}
    covered: set[str] = set()

    # 1) changed parameters other than quantized weights (biases, adaLN modulation, scale-shift tables)
    for key in sorted(changed):
        if key.endswith(".weight") and key[: -len(".weight")] in quantized:
            continue
        name = params.get(key)
        if name not in inits:
            continue
        init, value = inits[name], folded[key].detach().numpy()
        if int(np.prod(init.dims)) != value.size:
            raise RuntimeError(f"initializer {name} has shape {tuple(init.dims)}, parameter {value.shape}")
        value = value.reshape(tuple(init.dims)).astype(helper.tensor_dtype_to_np_dtype(init.data_type))
        init.CopyFrom(numpy_helper.from_array(value, name))
        covered.add(key)

    # 2) weights of quantized Linears (exported transposed): folded value, INT8 + DQ when quantizing
    nodes = {n.name: n for n in graph.node}
    position = {n.name: i for i, n in enumerate(graph.node)}
    new_nodes: dict[str, list[onnx.NodeProto]] = {}
    after_nodes: dict[str, list[onnx.NodeProto]] = {}  # per-token rescales of a MatMul's output
    token_quantized: dict[tuple[str, str, int], str] = {}  # (site, input, bits) -> its per-token quantizer's prefix
    shared_nodes: dict[str, list[onnx.NodeProto]] = {}  # a site's rotation, before the first MatMul reading it
    rotated: dict[tuple[str, str, int], str] = {}
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
        spec = recipe.linear_spec(lin)
        if not spec.dynamic and spec.a_bits != 8:
            raise DitqError(f"{lin}: static {spec.a_bits}-bit activations have no INT8 Q/DQ form; re-calibrate")
        w_scale = recipe.w_scale(lin)
        graph.initializer.remove(old)
        qtype = _qdtype(spec)
        if spec.w_bits == 8 and w_scale.dim() == 1:  # W8 (INT8 or FP8) per channel (TensorRT: no INT8 blocks)
            q = recipe.weight_codes(lin, w).T.contiguous().numpy()
            wname = f"{lin}.weight_{'fp8' if spec.fmt == 'fp8_e4m3' else 'int8'}"
            graph.initializer.extend([
                numpy_helper.from_array(q.astype(qtype), wname),
                numpy_helper.from_array(w_scale.numpy().astype(npf), f"{lin}.w_scale"),
                numpy_helper.from_array(np.zeros(w.shape[0], qtype), f"{lin}.w_zero_point"),
            ])
            dq_w = helper.make_node("DequantizeLinear",
                                    [wname, f"{lin}.w_scale", f"{lin}.w_zero_point"],
                                    [f"{lin}.weight_dq"], name=f"{lin}.weight_dq", axis=1)
        else:
            graph.initializer.extend(_block_weight(lin, recipe.weight_codes(lin, w), w_scale, spec.w_bits, npf))
            dq_w = helper.make_node("DequantizeLinear", [f"{lin}.weight_int{spec.w_bits}", f"{lin}.w_scale",
                                                         *[f"{lin}.w_zero_point"] * (spec.w_bits != 4)],
                                    [f"{lin}.weight_dq"],
                                    name=f"{lin}.weight_dq", axis=0,
                                    block_size=w.shape[1] // (w_scale.shape[1] if w_scale.dim() == 2 else 1))
        node.input[1] = f"{lin}.weight_dq"
        site = next(s for s in sites if lin in s.linears)
        x = node.input[0]
        chain: list[onnx.NodeProto] = []
        if spec.rotation:  # one rotated input per site, shared by its Linears (each keeps its own Q/DQ pair)
            key = (site.name, x, spec.rotation)
            if key not in rotated:
                anchor = min((gemms[other].node for other in site.linears), key=position.__getitem__)
                n = sum(other[0] == site.name for other in rotated)
                rotated[key] = f"{site.name}.rotated" + (f"_{n}" if n else "")
                nodes_, inits_ = _rotation_chain(site.name, x, rotated[key], spec.rotation, w.shape[1],
                                                 pre.get(site.name), npf, {t.name for t in graph.initializer})
                graph.initializer.extend(inits_)
                shared_nodes.setdefault(anchor, []).extend(nodes_)
            x = rotated[key]
        elif site.name in pre:  # (x - shift) * inv; the Sub only when there is a shift ("table" sites have none)
            shift, inv = pre[site.name]
            graph.initializer.append(numpy_helper.from_array(inv.numpy().astype(npf), f"{lin}.pre_scale"))
            if shift.any():
                graph.initializer.append(numpy_helper.from_array(shift.numpy().astype(npf), f"{lin}.pre_shift"))
                chain.append(helper.make_node("Sub", [x, f"{lin}.pre_shift"], [f"{lin}.shifted"],
                                              name=f"{lin}.pre_sub"))
                x = f"{lin}.shifted"
            chain.append(helper.make_node("Mul", [x, f"{lin}.pre_scale"], [f"{lin}.scaled"], name=f"{lin}.pre_mul"))
            x = f"{lin}.scaled"
        if lin in weight_only:
            node.input[0] = x
            new_nodes[gs.node] = [*chain, dq_w]
            continue
        if spec.act == "dynamic_token" and spec.fmt == "int":  # constant-scale Q/DQ around a per-token rescale
            key = (site.name, x, spec.a_bits)  # the site's Linears reading one tensor share its quantizer
            if key not in token_quantized:
                if chain:  # a per-Linear pre-affine: the quantizer follows it, before this MatMul
                    prefix, where = f"{lin}.tok", new_nodes.setdefault(gs.node, [])
                    where += chain
                else:
                    anchor = min((gemms[other].node for other in site.linears), key=position.__getitem__)
                    n = sum(other[0] == site.name for other in token_quantized)
                    prefix, where = f"{site.name}.tok" + (f"_{n}" if n else ""), shared_nodes.setdefault(anchor, [])
                q_nodes, q_inits = _token_quantizer(prefix, x, spec.a_bits, npf, qtype)
                graph.initializer.extend(q_inits)
                where += q_nodes
                token_quantized[key] = prefix
                chain = []
            prefix = token_quantized[key]
            node.input[0] = f"{lin}.input_dq"
            out = node.output[0]
            node.output[0] = f"{lin}.token_gemm"
            qdq = _input_qdq(lin, f"{prefix}_normed", f"{prefix}_unit", f"{prefix}_zero_point")
            new_nodes.setdefault(gs.node, []).extend([*chain, *qdq, dq_w])
            after_nodes[gs.node] = [helper.make_node("Mul", [f"{lin}.token_gemm", f"{prefix}_scale"], [out],
                                                     name=f"{lin}.token_rescale")]
            continue
        if spec.dynamic:
            dyn_nodes, dyn_inits = _dynamic_fake_quant(lin, x, spec, w.shape[1], npf)
            graph.initializer.extend(dyn_inits)
            chain += [*dyn_nodes, dq_w]
            node.input[0] = f"{lin}.input_fq"
            new_nodes[gs.node] = chain
            continue
        graph.initializer.extend([
            numpy_helper.from_array(np.array(float(recipe.act_scale(site.name, group_id)), npf), f"{lin}.a_scale"),
            numpy_helper.from_array(np.array(0, qtype), f"{lin}.a_zero_point"),
        ])
        chain += [*_input_qdq(lin, x, f"{lin}.a_scale", f"{lin}.a_zero_point"), dq_w]
        node.input[0] = f"{lin}.input_dq"
        new_nodes[gs.node] = chain

    lost = sorted(changed - covered)
    if lost or (pre and recipe is None):
        raise RuntimeError(f"folded parameters not found in the exported graph: {lost[:3]}")

    # keep the node list topologically sorted: each inserted chain goes right before its MatMul
    ordered: list[onnx.NodeProto] = []
    for node in graph.node:
        ordered += shared_nodes.get(node.name, []) + new_nodes.get(node.name, [])
        ordered.append(node)
        ordered += after_nodes.get(node.name, [])
    del graph.node[:]
    graph.node.extend(ordered)
    return model


DENSE_ROTATION_BLOCKS = 1  # a block-diagonal R with more blocks runs as Reshape -> MatMul(H_block) -> Reshape


def _rotation_chain(site: str, x: str, out: str, block: int, k: int, pre: tuple[torch.Tensor, torch.Tensor] | None,
                    npf: np.dtype, existing: set[str]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """``out = ((x - shift) * inv) @ R``. One Hadamard block (``k == block``): ``MatMul(Sub(x, shift), diag(inv) R)``,
    the pre-affine's scale folded into the constant (no Mul). Several blocks: ``x`` reshaped to rows of ``block``
    times the one ``block x block`` Hadamard and back (k x block multiply-adds per token, not k x k), after the
    pre-affine's Sub and Mul."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    dense = k // block <= DENSE_ROTATION_BLOCKS
    r = rotation_matrix(k if dense else block, block)
    if pre is not None:
        shift, inv = pre
        if shift.any():
            inits.append(numpy_helper.from_array(shift.numpy().astype(npf), f"{out}.pre_shift"))
            nodes.append(helper.make_node("Sub", [x, f"{out}.pre_shift"], [f"{out}.shifted"], name=f"{out}.pre_sub"))
            x = f"{out}.shifted"
        if dense:
            r = inv.double()[:, None] * r
        else:
            inits.append(numpy_helper.from_array(inv.numpy().astype(npf), f"{out}.pre_scale"))
            nodes.append(helper.make_node("Mul", [x, f"{out}.pre_scale"], [f"{out}.scaled"], name=f"{out}.pre_mul"))
            x = f"{out}.scaled"
    rot = f"{out}.matrix" if dense and pre is not None else f"hadamard_{r.shape[0]}_{block}"
    if rot not in existing:
        inits.append(numpy_helper.from_array(r.numpy().astype(npf), rot))
    if dense:
        nodes.append(helper.make_node("MatMul", [x, rot], [out], name=f"{out}.rotate"))
        return nodes, inits
    inits.append(numpy_helper.from_array(np.array([-1, block], np.int64), f"{out}.block_shape"))
    nodes += [helper.make_node("Shape", [x], [f"{out}.shape"], name=f"{out}.shape"),
              helper.make_node("Reshape", [x, f"{out}.block_shape"], [f"{out}.blocks"], name=f"{out}.to_blocks"),
              helper.make_node("MatMul", [f"{out}.blocks", rot], [f"{out}.blocks_rotated"], name=f"{out}.rotate"),
              helper.make_node("Reshape", [f"{out}.blocks_rotated", f"{out}.shape"], [out], name=f"{out}.from_blocks")]
    return nodes, inits


def _qdtype(spec: LinearSpec) -> np.dtype:
    """The numpy type of a static Linear's codes and zero points: INT8, or FLOAT8E4M3FN for FP8."""
    import ml_dtypes

    return np.dtype(ml_dtypes.float8_e4m3fn if spec.fmt == "fp8_e4m3" else np.int8)


def _block_weight(lin: str, codes_t: torch.Tensor, w_scale: torch.Tensor, bits: int, npf: np.dtype
                  ) -> list[onnx.TensorProto]:
    """INT4/INT8 codes [K, N], block scales [K/B, N] and (INT8 only: INT4 omits it, symmetric) zero points for a
    DequantizeLinear(axis=0, block_size=B)."""
    import ml_dtypes

    scale = w_scale if w_scale.dim() == 2 else w_scale[:, None]  # per channel = one block spanning K
    codes = codes_t.to(torch.int8).T.contiguous().numpy()
    qdtype = ml_dtypes.int4 if bits == 4 else np.int8
    return [
        numpy_helper.from_array(codes.astype(qdtype), f"{lin}.weight_int{bits}"),
        numpy_helper.from_array(scale.T.contiguous().numpy().astype(npf), f"{lin}.w_scale"),
        *([] if bits == 4 else [numpy_helper.from_array(np.zeros(tuple(scale.T.shape), qdtype),
                                                        f"{lin}.w_zero_point")]),
    ]


def _input_qdq(lin: str, x: str, scale: str, zero_point: str) -> list[onnx.NodeProto]:
    """The activation Q/DQ pair of Linear ``lin``: ``{lin}.input_q`` then ``{lin}.input_dq`` (its GEMM's input)."""
    return [helper.make_node("QuantizeLinear", [x, scale, zero_point], [f"{lin}.input_q"], name=f"{lin}.input_q"),
            helper.make_node("DequantizeLinear", [f"{lin}.input_q", scale, zero_point], [f"{lin}.input_dq"],
                             name=f"{lin}.input_dq")]


def _token_quantizer(prefix: str, x: str, a_bits: int, npf: np.dtype, qtype: np.dtype
                     ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Per-token activation quantization in TensorRT's explicit-quantization form (constant Q/DQ scales).

    ``{prefix}_scale = Max(ReduceMax(Abs(x), -1) / qmax, eps)`` per token and ``{prefix}_normed = x / s``, computed
    once per tensor. Each GEMM reading it gets its own Q/DQ pair with the constant scale 1 (``{lin}.input_q``, as
    static Linears do: ONNX Runtime fuses a DQ with one consumer into its integer GEMM) and multiplies its output
    by ``{prefix}_scale`` before the bias (``{lin}.token_rescale``). Exact: the per-token scale is a row factor,
    ``(round(x / s) s) W = (round(x / s) W) s``, so this equals ``dynamic_fake_quant`` up to float rounding order.
    ``a_bits`` < 8 (ViDiT-Q's mixed precision) uses the same INT8 Q/DQ: ``x / s`` is already within +-qmax."""
    _, qmax = qrange(a_bits)
    p = prefix
    inits = [numpy_helper.from_array(np.array(v, npf), f"{p}_{n}") for n, v in (("qmax", qmax), ("eps", DYNAMIC_EPS),
                                                                                 ("unit", 1.0))]
    inits += [numpy_helper.from_array(np.array([-1], np.int64), f"{p}_axes"),
              numpy_helper.from_array(np.array(0, qtype), f"{p}_zero_point")]
    nodes = [
        helper.make_node("Abs", [x], [f"{p}_abs"], name=f"{p}_abs"),
        helper.make_node("ReduceMax", [f"{p}_abs", f"{p}_axes"], [f"{p}_amax"], name=f"{p}_amax", keepdims=1),
        helper.make_node("Div", [f"{p}_amax", f"{p}_qmax"], [f"{p}_raw_scale"], name=f"{p}_raw_scale"),
        helper.make_node("Max", [f"{p}_raw_scale", f"{p}_eps"], [f"{p}_scale"], name=f"{p}_scale"),
        helper.make_node("Div", [x, f"{p}_scale"], [f"{p}_normed"], name=f"{p}_normed"),
    ]
    return nodes, inits


def _dynamic_fake_quant(lin: str, x: str, spec: LinearSpec, k: int, npf: np.dtype
                        ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Float ops quantizing ``x`` per token (or per token and group) at run time; output ``{lin}.input_fq``."""
    qmin, qmax = qrange(spec.a_bits)
    p = f"{lin}.dyn"
    inits = [numpy_helper.from_array(np.array(v, npf), f"{p}_{n}")
             for n, v in (("qmax", qmax), ("qmin", qmin), ("eps", DYNAMIC_EPS))]
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), f"{p}_axes"))
    nodes: list[onnx.NodeProto] = []
    src = x
    if spec.a_group:
        inits.append(numpy_helper.from_array(np.array([-1, k // spec.a_group, spec.a_group], np.int64),
                                             f"{p}_group_shape"))
        nodes += [helper.make_node("Shape", [x], [f"{p}_shape"], name=f"{p}_shape"),
                  helper.make_node("Reshape", [x, f"{p}_group_shape"], [f"{p}_grouped"], name=f"{p}_group")]
        src = f"{p}_grouped"
    out = f"{p}_q" if spec.a_group else f"{lin}.input_fq"
    nodes += [
        helper.make_node("Abs", [src], [f"{p}_abs"], name=f"{p}_abs"),
        helper.make_node("ReduceMax", [f"{p}_abs", f"{p}_axes"], [f"{p}_amax"], name=f"{p}_amax", keepdims=1),
        helper.make_node("Div", [f"{p}_amax", f"{p}_qmax"], [f"{p}_raw_scale"], name=f"{p}_raw_scale"),
        helper.make_node("Max", [f"{p}_raw_scale", f"{p}_eps"], [f"{p}_scale"], name=f"{p}_scale"),
        helper.make_node("Div", [src, f"{p}_scale"], [f"{p}_div"], name=f"{p}_div"),
        helper.make_node("Round", [f"{p}_div"], [f"{p}_round"], name=f"{p}_round"),
        helper.make_node("Clip", [f"{p}_round", f"{p}_qmin", f"{p}_qmax"], [f"{p}_clip"], name=f"{p}_clip"),
        helper.make_node("Mul", [f"{p}_clip", f"{p}_scale"], [out], name=f"{p}_mul"),
    ]
    if spec.a_group:
        nodes.append(helper.make_node("Reshape", [out, f"{p}_shape"], [f"{lin}.input_fq"], name=f"{p}_ungroup"))
    return nodes, inits
