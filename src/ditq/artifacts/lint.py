"""Static checks that a QDQ ONNX graph follows TensorRT 10.x/11.x explicit-quantization rules.

The rules depend on the target (``lint_model(..., target=...)``, :data:`TARGETS`): ``tensorrt-10`` and
``tensorrt-11`` add what those versions can build (block quantization only for INT4/FP8/FP4 in ``IDequantizeLayer``,
10.13 and 11.1 alike: no INT8 blocks; INT4 weight-only: no INT4 x INT8 GEMM, so W4A8 has no kernel);
``onnxruntime`` keeps the placement rules only (ONNX Runtime runs INT8 blocks and W4A8 exactly).

TensorRT only fuses QuantizeLinear/DequantizeLinear (Q/DQ) pairs into INT8/INT4 GEMM kernels when the
graph follows its placement and typing rules; a violation fails the engine build or silently leaves a
layer in float. `lint_model` checks every rule without building an engine and without loading weight
data: tensor shapes come from `TensorProto.dims`, and only the small scale and zero-point tensors are read.

Quantized GEMM pattern (what ditq's exporter emits and the lint accepts):
    MatMul/Gemm(DQ(Q(x, s_a, 0), s_a, 0), DQ(W_int8, s_w[N], 0, axis=<output channels>))
FP8 (W8A8-FP8, TensorRT's fast path on Ada/Hopper): the same pattern with FLOAT8E4M3FN codes and zero points
(zero point FP8 0, scales positive, activations per tensor, weights per output channel); both inputs of a GEMM
must share the quantized type (TensorRT has no FP8 x INT8 GEMM).
INT4 weight-only (W4A16, what TensorRT builds for INT4; NVIDIA's Model Optimizer deploys INT4 this way):
    MatMul(x, DQ(W_int4, s_w[K/B, N], axis=<K>, block_size=B))   (zero point omitted: symmetric)
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from onnx import NodeProto, TensorProto, numpy_helper

from ditq._deps import MIN_TRT_MAJOR, trt_major
from ditq.artifacts.onnx_data import tensor_value
from ditq.errors import DitqError

if TYPE_CHECKING:
    from ditq.artifacts.onnx import OnnxArtifact

RULES: tuple[str, ...] = (
    "zero-point",  # zero point absent or 0, and signed: INT8 or FLOAT8E4M3FN (INT4 for block-quantized weight DQ)
    "scale-constant",  # scale is an initializer or a Constant output, not computed at runtime
    "scale-positive",  # every scale value finite and > 0
    "per-channel-activation",  # Q/DQ on an activation has a scalar (per-tensor) scale
    "per-channel-axis",  # per-channel weight DQ on the output-channel axis; block quantization along K
    "gemm-both-inputs",  # a GEMM with a DQ on one data input has one on the other
    "qdq-on-output",  # no QuantizeLinear on a quantized GEMM's output (directly or after its bias Add)
    "cast-between-dq-gemm",  # no Cast between a DQ and the GEMM it feeds
    "float-type",  # scale float types match the quantized tensor, the other GEMM input and the graph I/O
    "activation-pair",  # every activation Q feeds only DQs with the same scale and zero point
    "block-type",  # (TensorRT targets) block-quantized DQ only of a type the version block-quantizes (not INT8)
    "int4-weight-only",  # (TensorRT targets) an INT4 weight DQ's GEMM has no activation Q/DQ (no INT4 x INT8 GEMM)
    "mixed-types",  # (TensorRT targets) a GEMM's two DQ inputs share one quantized type (no FP8 x INT8 GEMM)
)

TARGETS: tuple[str, ...] = ("onnxruntime", "tensorrt-10", "tensorrt-11")
NEWEST_TENSORRT = "tensorrt-11"
# Types IDequantizeLayer dequantizes in blocks, per TensorRT target (10.13 and 11.1 docs: FP4, FP8, INT4).
_BLOCK_TYPES: dict[str, frozenset[int]] = {
    t: frozenset({TensorProto.INT4, TensorProto.FLOAT8E4M3FN, getattr(TensorProto, "FLOAT4E2M1", TensorProto.INT4)})
    for t in ("tensorrt-10", "tensorrt-11")}
_TARGET_RULES = frozenset({"block-type", "int4-weight-only", "mixed-types"})


def tensorrt_target(version: str | None) -> str:
    """The lint target of a TensorRT version (``"10.13.0.35"`` -> ``tensorrt-10``); the newest for None."""
    if version is None:
        return NEWEST_TENSORRT
    major = trt_major(version)
    if major < MIN_TRT_MAJOR:
        raise DitqError(f"TensorRT {version} is older than 10.0, which ditq's engines need; pip install 'ditq[trt]'")
    return f"tensorrt-{min(major, int(NEWEST_TENSORRT.split('-')[1]))}"


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise DitqError(f"unknown lint target {target!r}; use one of {', '.join(TARGETS)}")

_GEMMS = frozenset({"MatMul", "Gemm"})
# Shape-only ops a DQ output may pass through on its way to a GEMM (TensorRT propagates DQ across them).
_PASS_THROUGH = frozenset({"Cast", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})
_FLOATS = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16})
_CONSTANT_ATTR_DTYPES = {"value_float": np.float32, "value_floats": np.float32,
                         "value_int": np.int64, "value_ints": np.int64}


@dataclass(frozen=True)
class Violation:
    rule: str  # one of RULES
    node: str  # node name, or its first output name when the node is unnamed
    message: str  # one line: what is wrong and the bad value


def _name(node: NodeProto) -> str:
    return node.name or node.output[0]


def _attr(node: NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _type_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type)


def _fmt(values: np.ndarray, limit: int = 4) -> str:
    flat = values.ravel()
    shown = ", ".join(f"{v:g}" for v in flat[:limit].astype(np.float64))
    return shown + (", ..." if flat.size > limit else "")


def _constant_tensor(node: NodeProto) -> TensorProto | None:
    for a in node.attribute:
        if a.name == "value":
            return a.t
        if a.name in _CONSTANT_ATTR_DTYPES:
            value = np.array(onnx.helper.get_attribute_value(a), dtype=_CONSTANT_ATTR_DTYPES[a.name])
            return numpy_helper.from_array(value, node.output[0])
    return None


class _Graph:
    """Producer/consumer index, element types and constant tensors of a model's main graph."""

    def __init__(self, model: onnx.ModelProto, base_dir: Path | None) -> None:
        try:
            graph = onnx.shape_inference.infer_shapes(model).graph
        except ValueError as e:  # protobuf refuses to serialize a > 2 GB model for inference
            raise DitqError(f"cannot lint an in-memory model with weights loaded ({e}); load it with "
                            "onnx.load(path, load_external_data=False)") from e
        self.base_dir = base_dir
        self.nodes = list(graph.node)
        self.tensors: dict[str, TensorProto] = {t.name: t for t in graph.initializer}
        for n in self.nodes:
            if n.op_type == "Constant" and (t := _constant_tensor(n)) is not None:
                self.tensors[n.output[0]] = t
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list[NodeProto]] = defaultdict(list)
        for n in self.nodes:
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        io = [v for v in [*graph.input, *graph.output] if v.name not in self.tensors]
        self.types = {v.name: v.type.tensor_type.elem_type for v in [*io, *graph.value_info]}
        self.types.update({k: t.data_type for k, t in self.tensors.items()})
        self.io_floats = {t for v in io if (t := v.type.tensor_type.elem_type) in _FLOATS}
        self.outputs = {v.name for v in graph.output}
        # Constant-derived values (what a constant folder would fold); ONNX nodes are topologically sorted.
        self.folded = set(self.tensors)
        for n in self.nodes:
            if n.input and all(i in self.folded for i in n.input if i):
                self.folded.update(o for o in n.output if o)

    def array(self, name: str) -> np.ndarray | None:
        """Value of a constant tensor (reads external data only with a base_dir), else None."""
        t = self.tensors.get(name)
        if t is None or (t.data_location == TensorProto.EXTERNAL and self.base_dir is None):
            return None
        try:
            return tensor_value(t, self.base_dir or "")
        except (ValueError, OSError) as e:  # external data file missing, truncated or garbled
            where = next((kv.value for kv in t.external_data if kv.key == "location"), "its external data file")
            raise DitqError(f"cannot read tensor {name!r} from {Path(self.base_dir or '') / where} "
                            f"({' '.join(str(e).split())}); the file is damaged, re-run `ditq export`") from e

    def shape(self, name: str) -> tuple[int, ...] | None:
        t = self.tensors.get(name)
        return None if t is None else tuple(t.dims)

    def dq_source(self, name: str) -> tuple[NodeProto | None, list[NodeProto]]:
        """The DequantizeLinear feeding `name` through shape-only ops (or None), and the ops passed."""
        path: list[NodeProto] = []
        node = self.producer.get(name)
        while node is not None and node.op_type in _PASS_THROUGH:
            path.append(node)
            node = self.producer.get(node.input[0])
        return (node if node is not None and node.op_type == "DequantizeLinear" else None), path

    def same_value(self, a: str, b: str, default: np.ndarray | None = None) -> bool:
        """Whether two constant inputs hold the same values; an absent ('') input reads as `default`."""
        if a == b:
            return True
        va, vb = (self.array(x) if x else default for x in (a, b))
        return va is not None and vb is not None and np.array_equal(
            va.astype(np.float64).ravel(), vb.astype(np.float64).ravel())


def _check_qdq(g: _Graph, node: NodeProto, target: str) -> Iterator[Violation]:
    name, op, is_q = _name(node), node.op_type, node.op_type == "QuantizeLinear"
    data, scale = node.input[0], node.input[1]
    zp = node.input[2] if len(node.input) > 2 else ""
    block = _attr(node, "block_size", 0)
    activation = data not in g.folded

    # Quantized type: the zero point's type, else the DQ input's / Q's output_dtype (ONNX default UINT8).
    qtype = g.types.get(zp) if zp else (_attr(node, "output_dtype", 0) or TensorProto.UINT8 if is_q
                                        else g.types.get(data))
    allowed = {TensorProto.INT8, TensorProto.FLOAT8E4M3FN} | ({TensorProto.INT4} if block and not is_q else set())
    if qtype is not None and qtype not in allowed:
        why = " (a Q without zero point or output_dtype defaults to it)" if is_q and not zp else ""
        yield Violation("zero-point", name, f"{op} quantizes to {_type_name(qtype)}{why}; TensorRT needs "
                        f"{' or '.join(sorted(map(_type_name, allowed)))} (signed, zero point 0)")
    if block and not is_q and qtype is not None and target in _BLOCK_TYPES and qtype not in _BLOCK_TYPES[target]:
        yield Violation("block-type", name, f"{op} dequantizes {_type_name(qtype)} {data!r} in blocks of {block}; "
                        f"{target} block-quantizes only INT4, FP8 and FP4: quantize INT8 weights per output "
                        "channel (no --w-block) or use --w-bits 4")
    if zp:
        zp_value = g.array(zp)
        if zp_value is None and zp not in g.tensors:
            yield Violation("zero-point", name, f"zero point {zp!r} is computed at runtime; "
                            "it must be a constant 0")
        elif zp_value is not None and (bad := zp_value.astype(np.float64) != 0).any():  # NaN too (FP8)
            yield Violation("zero-point", name, f"zero point {zp!r} must be 0, has {bad.sum()} nonzero "
                            f"value(s): {_fmt(zp_value[bad])}")

    if scale not in g.tensors:
        producer = g.producer.get(scale)
        source = f"by {producer.op_type} {_name(producer)}" if producer else "as a graph input"
        yield Violation("scale-constant", name, f"scale {scale!r} is computed at runtime {source}; "
                        "it must be an initializer or Constant")
    if (scale_value := g.array(scale)) is not None:
        s = scale_value.astype(np.float64)
        if (bad := ~(np.isfinite(s) & (s > 0))).any():
            yield Violation("scale-positive", name, f"scale {scale!r} has {bad.sum()} non-positive or "
                            f"non-finite value(s): {_fmt(s[bad])}")

    scale_shape = g.shape(scale)
    if activation and (block or (scale_shape is not None and prod(scale_shape) != 1)):
        yield Violation("per-channel-activation", name, f"{op} on activation {data!r} has scale {scale!r} of "
                        f"shape {list(scale_shape or [])}{f' with block_size={block}' if block else ''}; "
                        "activations need a scalar scale")

    scale_type, data_type = g.types.get(scale), g.types.get(data)
    if is_q and scale_type and data_type and scale_type != data_type:
        yield Violation("float-type", name, f"QuantizeLinear input {data!r} is {_type_name(data_type)} but "
                        f"scale {scale!r} is {_type_name(scale_type)}")
    if scale_type and len(g.io_floats) == 1 and scale_type not in g.io_floats:
        yield Violation("float-type", name, f"scale {scale!r} is {_type_name(scale_type)} in a graph with "
                        f"{_type_name(next(iter(g.io_floats)))} inputs/outputs")

    if is_q and activation:
        out = node.output[0]
        wrong = [f"{c.op_type} {_name(c)}" for c in g.consumers[out] if c.op_type != "DequantizeLinear"]
        wrong += ["the graph output"] * (out in g.outputs)
        if not g.consumers[out] or wrong:
            yield Violation("activation-pair", name, f"QuantizeLinear output {out!r} must feed only "
                            f"DequantizeLinear nodes; it feeds {', '.join(wrong) or 'nothing'}")
        for dq in g.consumers[out]:
            dq_zp = dq.input[2] if len(dq.input) > 2 else ""
            if dq.op_type == "DequantizeLinear" and not (
                    g.same_value(scale, dq.input[1]) and g.same_value(zp, dq_zp, default=np.zeros(1))):
                yield Violation("activation-pair", name, f"paired DequantizeLinear {_name(dq)} uses scale "
                                f"{dq.input[1]!r} / zero point {dq_zp!r}, not {scale!r} / {zp!r}")


def _gemm_axes(gemm: NodeProto, index: int, rank: int) -> tuple[int, int]:
    """(output-channel axis, reduction K axis) of GEMM data input `index` with the given rank."""
    if gemm.op_type == "MatMul":
        return (rank - 1, rank - 2) if index else (rank - 2, rank - 1)
    out = index ^ _attr(gemm, "transB" if index else "transA", 0)  # Gemm: A is [M, K], B is [K, N]
    return out, 1 - out


def _check_weight_axis(g: _Graph, gemm: NodeProto, index: int, dq: NodeProto) -> Iterator[Violation]:
    weight, scale = dq.input[0], dq.input[1]
    wshape, sshape = g.shape(weight), g.shape(scale)
    block = _attr(dq, "block_size", 0)
    if wshape is None or sshape is None or len(wshape) < 2 or (not block and prod(sshape) == 1):
        return
    out_axis, k_axis = _gemm_axes(gemm, index, len(wshape))
    axis = _attr(dq, "axis", 1) % len(wshape)
    if block:
        expected = tuple(d // block if i == k_axis else d for i, d in enumerate(wshape))
        if axis != k_axis or wshape[k_axis] % block or sshape != expected:
            yield Violation("per-channel-axis", _name(dq), f"block-quantized weight {weight!r} "
                            f"{list(wshape)} feeding {_name(gemm)} has axis={axis}, block_size={block}, "
                            f"scale {list(sshape)}; expected axis={k_axis} (K) and scale {list(expected)}")
    elif axis != out_axis or sshape != (wshape[out_axis],):
        yield Violation("per-channel-axis", _name(dq), f"per-channel weight {weight!r} {list(wshape)} "
                        f"feeding {_name(gemm)} has axis={axis}, scale {list(sshape)}; expected "
                        f"axis={out_axis} (output channels) and scale [{wshape[out_axis]}]")


def _dq_qtype(g: _Graph, dq: NodeProto) -> int:
    """The quantized type a DequantizeLinear reads (its data input's type, else its zero point's), 0 if unknown."""
    return g.types.get(dq.input[0]) or (g.types.get(dq.input[2], 0) if len(dq.input) > 2 and dq.input[2] else 0)


def _int4_weight(g: _Graph, dq: NodeProto | None) -> bool:
    return dq is not None and dq.input[0] in g.folded and g.types.get(dq.input[0]) == TensorProto.INT4


def _check_gemm(g: _Graph, gemm: NodeProto, target: str) -> Iterator[Violation]:
    name = _name(gemm)
    sources = [g.dq_source(gemm.input[i]) for i in (0, 1)]
    dqs = [dq for dq, _ in sources]
    for index, (dq, path) in enumerate(sources):
        if dq is None:
            continue
        if dqs[1 - index] is None and not _int4_weight(g, dq):  # INT4 weight-only (W4A16) is a TensorRT format
            other = gemm.input[1 - index]
            producer = g.producer.get(other)
            source = f"{producer.op_type} {_name(producer)}" if producer else "a graph input or initializer"
            yield Violation("gemm-both-inputs", name, f"input {index} is dequantized by {_name(dq)} but "
                            f"input {1 - index} {other!r} comes from {source}; TensorRT runs it in float")
        for cast in (n for n in path if n.op_type == "Cast"):
            to = _type_name(_attr(cast, "to", 0))
            yield Violation("cast-between-dq-gemm", name, f"Cast {_name(cast)} (to {to}) sits between "
                            f"DequantizeLinear {_name(dq)} and input {index}; make the DQ scale that type")
        if not path:
            yield from _check_weight_axis(g, gemm, index, dq)
    if None in dqs:
        return
    if target in _BLOCK_TYPES and (int4 := next((dq for dq in dqs if _int4_weight(g, dq)), None)) is not None:
        yield Violation("int4-weight-only", name, f"INT4 weight {int4.input[0]!r} meets a dequantized "
                        f"activation: {target} has no INT4 x INT8 GEMM (INT4 is weight-only); export W4A16 "
                        "with `ditq export --target tensorrt`")
    qa, qb = (_dq_qtype(g, dq) for dq in dqs if dq is not None)
    if target in _BLOCK_TYPES and {qa, qb} == {TensorProto.INT8, TensorProto.FLOAT8E4M3FN}:  # others: zero-point
        yield Violation("mixed-types", name, f"its inputs are dequantized from {_type_name(qa)} and "
                        f"{_type_name(qb)}; {target} has no mixed GEMM: quantize both to the same type")
    a, b = (g.types.get(dq.input[1], 0) for dq in dqs if dq is not None)
    if a and b and a != b:
        yield Violation("float-type", name, f"its two input DQ scales differ in type: "
                        f"{_type_name(a)} vs {_type_name(b)}")
    consumers = list(g.consumers[gemm.output[0]])
    for add in [c for c in consumers if c.op_type == "Add"]:
        if all(i == gemm.output[0] or i in g.folded for i in add.input):
            consumers += [c for c in g.consumers[add.output[0]] if c.op_type == "QuantizeLinear"]
    for q in (c for c in consumers if c.op_type == "QuantizeLinear"):
        via = " after its bias Add" if q.input[0] != gemm.output[0] else ""
        yield Violation("qdq-on-output", name, f"QuantizeLinear {_name(q)} quantizes the output of quantized "
                        f"{gemm.op_type} {name}{via}; TensorRT fuses Q/DQ only on GEMM inputs")


def lint_model(model: onnx.ModelProto, base_dir: Path | None = None, *,
               target: str = NEWEST_TENSORRT) -> list[Violation]:
    """All rule violations in `model` for `target` (one of :data:`TARGETS`), in node order. `base_dir` locates
    external data for scales."""
    _check_target(target)
    g = _Graph(model, base_dir)
    violations: list[Violation] = []
    for node in g.nodes:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            violations += _check_qdq(g, node, target)
        elif node.op_type in _GEMMS:
            violations += _check_gemm(g, node, target)
    return violations


def count_quantized_gemms(model: onnx.ModelProto) -> int:
    """Number of MatMul/Gemm nodes whose two data inputs both come from DequantizeLinear."""
    g = _Graph(model, None)
    return sum(all(g.dq_source(n.input[i])[0] for i in (0, 1)) for n in g.nodes if n.op_type in _GEMMS)


def lint_file(path: Path, target: str = NEWEST_TENSORRT) -> list[Violation]:
    """Lint one .onnx file for `target` without loading its external weight data."""
    path = Path(path)
    if not path.is_file():
        raise DitqError(f"ONNX file {path} does not exist; pass the path of an exported .onnx model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError) as e:
        raise DitqError(f"cannot read {path} as an ONNX model ({e}); re-export it") from e
    if not model.ir_version or not model.graph.node:  # an empty file parses as an empty ModelProto
        what = "is empty" if path.stat().st_size == 0 else "holds no ONNX graph (no IR version or no nodes)"
        raise DitqError(f"{path} {what}; it is not an ONNX model, re-export it")
    return lint_model(model, path.parent, target=target)


def lint_dir(onnx_dir: Path, target: str = NEWEST_TENSORRT) -> dict[str, list[Violation]]:
    """Lint every *.onnx file in `onnx_dir` for `target`, keyed by file name."""
    onnx_dir = Path(onnx_dir)
    files = sorted(onnx_dir.glob("*.onnx")) if onnx_dir.is_dir() else []
    if not files:
        raise DitqError(f"no *.onnx files in {onnx_dir}; pass the directory the exporter wrote")
    _check_target(target)
    return {p.name: lint_file(p, target) for p in files}


def set_target(artifact: OnnxArtifact) -> str:
    """The lint target an exported set was made for: the newest TensorRT for ``--target tensorrt``, else
    ``onnxruntime`` (its INT8 blocks and W4A8 GEMMs are meant for ONNX Runtime and torch, not TensorRT)."""
    return NEWEST_TENSORRT if artifact.target == "tensorrt" else "onnxruntime"


def lint_onnx_set(artifact: OnnxArtifact, target: str | None = None) -> dict[str, list[Violation]]:
    """Lint every graph of an exported ONNX set for `target` (default: :func:`set_target`), keyed by file name.
    A set whose activations are quantized by float ops at run time (per token and channel group; any dynamic set
    exported before per-token Q/DQ) has weight-only DQs on purpose, so gemm-both-inputs is dropped for it."""
    results = lint_dir(artifact.root, target or set_target(artifact))
    if float_quantized_activations(artifact.recipe):
        results = {f: [v for v in vs if v.rule != "gemm-both-inputs"] for f, vs in results.items()}
    return results


def float_quantized_activations(recipe: dict[str, Any]) -> bool:
    """Whether an ONNX set's recipe summary says some activation is quantized by float ops (no Q/DQ); sets
    exported before the per-token Q/DQ form say only ``dynamic_activations``, which then means yes."""
    return bool(recipe.get("float_quantized_activations", recipe.get("dynamic_activations", False)))


def format_violations(results: dict[str, list[Violation]]) -> str:
    """One line per violation, then a summary line with per-rule counts."""
    lines = [f"{file}: [{v.rule}] {v.node}: {v.message}" for file, vs in results.items() for v in vs]
    by_rule = Counter(v.rule for vs in results.values() for v in vs)
    failing = sum(bool(vs) for vs in results.values())
    if by_rule:
        counts = ", ".join(f"{rule}: {by_rule[rule]}" for rule in RULES if rule in by_rule)
        lines.append(f"{by_rule.total()} violation(s) ({counts}) in {failing} of {len(results)} file(s)")
    else:
        lines.append(f"0 violations in {len(results)} file(s)")
    return "\n".join(lines)
