"""``export_onnx(model, recipe, out) -> OnnxArtifact``: one QDQ graph per timestep group + the FP reference.

The transformer is exported once (torch dynamo exporter, dynamic batch); each group's graph is that graph with
the group's folded parameters grafted in and Q/DQ inserted (``export.qdq``). Tensors that are identical across
graphs (the folded weights: smoothing is per site, not per group) are written once to ``weights.bin``; only
what differs per group (biases carrying the shift, activation scales) lives inside ``group_{g}.onnx``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from tqdm.auto import tqdm

from ditq.artifacts import manifest_sha256, sha256_bytes, sha256_file, write_json
from ditq.artifacts.captions import CAPTIONS_FILE
from ditq.artifacts.onnx import OnnxArtifact, OnnxGroup
from ditq.artifacts.outputs import check_output, staging_dir
from ditq.artifacts.recipe import Recipe
from ditq.core.cond import cat_cond
from ditq.core.fold import foldable_params
from ditq.errors import CheckFailed, DitqError
from ditq.export.qdq import SCOPE_KEY, apply_group, find_gemms, find_params
from ditq.models.loading import LoadedModel, check_recipe_model, quant_sites

log = logging.getLogger(__name__)

OUTPUT = "sample"
DATA_FILE = "weights.bin"
EXTERNAL_MIN_BYTES = 1024
DEFAULT_OPSET = 21


def input_names(model: LoadedModel) -> tuple[str, ...]:
    """The graph inputs: ``hidden_states``, ``timestep`` and the conditioning (class labels or caption)."""
    return ("hidden_states", "timestep", *model.denoiser().cond_names)


_BATCH = torch.export.Dim("batch", min=1, max=4096)
# PixArt: the caption length is dynamic too (α pads to 120 tokens, Σ to 300); with it static, torch.export cannot
# prove that diffusers' ``encoder_hidden_states.view(batch, -1, dim)`` keeps the mask's length.
_CAPTION = torch.export.Dim("caption_length", min=2, max=4096)
CAPTION_INPUTS = ("encoder_hidden_states", "encoder_attention_mask")


def dynamic_axes(name: str) -> dict[int, torch.export.Dim]:
    return {0: _BATCH, 1: _CAPTION} if name in CAPTION_INPUTS else {0: _BATCH}


def dummy_inputs(model: LoadedModel, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Tracing inputs: conditional rows and one unconditional row (the null class or caption)."""
    n = max(batch - 1, 1)
    cond = cat_cond(model.cond(torch.arange(n) % model.num_conditions), model.null_cond(batch - n))
    names = input_names(model)[2:]
    return (torch.randn(batch, *model.sample_shape), torch.linspace(0, model.num_train_timesteps - 1, batch),
            *(cond[k] for k in names))


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
# What the graphs are for: "onnxruntime" exports the recipe as calibrated (W4A8 stays W4A8, the seeds' quality
# setting); "tensorrt" exports what TensorRT builds: INT4 weights as W4A16 (weight DQ only; TensorRT has no
# INT4 x INT8 GEMM and NVIDIA's Model Optimizer deploys INT4 this way) and refuses what it cannot build.
TARGETS = ("onnxruntime", "tensorrt")


def weight_only_linears(recipe: Recipe, target: str) -> frozenset[str]:
    """The Linears ``target`` exports without activation Q/DQ: INT4-weight Linears for TensorRT."""
    if target not in TARGETS:
        raise DitqError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    if target != "tensorrt":
        return frozenset()
    specs = {lin: recipe.linear_spec(lin) for site in recipe.sites for lin in site.linears}
    if floating := recipe.float_quantized_linears:
        raise DitqError(f"method {recipe.method!r} quantizes activations per token and channel group at run time "
                        f"({floating[0]}), which has no TensorRT INT8 form (constant Q/DQ scales); export it "
                        "without --target tensorrt for ONNX Runtime")
    if blocked := sorted(lin for lin, s in specs.items() if s.w_bits == 8 and s.w_block):
        raise DitqError(f"INT8 weights in blocks ({blocked[0]}, --w-block) have no TensorRT form (block "
                        "quantization is INT4/FP8/FP4 only); re-calibrate INT8 per channel or with --w-bits 4")
    return frozenset(lin for lin, s in specs.items() if s.w_bits == 4)


def export_reference(model: LoadedModel, opset: int = DEFAULT_OPSET, precision: str = "fp32") -> onnx.ModelProto:
    """The unquantized transformer as ONNX (dynamic batch); module scopes stay in node metadata.

    ``fp16`` exports the model in half precision end to end (I/O included): TensorRT 11 builds strongly typed
    networks only, so the graph itself must carry FP16 wherever it is not INT8.
    """
    dtype = PRECISIONS[precision]
    # .eval() (make_denoiser): DiT's label dropout must not be traced; a half-precision copy only for fp16
    denoiser = model.denoiser() if dtype == torch.float32 else copy.deepcopy(model.denoiser()).to(dtype)
    args = tuple(a.to(dtype) if a.is_floating_point() else a for a in dummy_inputs(model))
    names = input_names(model)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        # torch.export first, then ONNX from the ExportedProgram: torch.onnx.export's own capture (deferred
        # runtime asserts) fails on PixArt's caption reshape where plain torch.export succeeds
        exported = torch.export.export(denoiser, args, dynamic_shapes=tuple(dynamic_axes(n) for n in names))
        program = torch.onnx.export(exported, args, dynamo=True, opset_version=opset, input_names=list(names),
                                    output_names=[OUTPUT], verbose=False)
        del exported
    assert program is not None
    proto = program.model_proto
    del program
    for node in proto.graph.node:  # keep the module scopes; drop stack traces (local paths, most of the bytes)
        keep = [p for p in node.metadata_props if p.key == SCOPE_KEY]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    remove_noop_squeezes(proto)
    return proto


def remove_noop_squeezes(proto: onnx.ModelProto) -> int:
    """Drop ``Squeeze`` nodes that cannot remove an axis (DESIGN §6: PixArt's ``hidden_states.squeeze(1)`` on a
    [B, N, C] tensor, N > 1): torch's squeeze of a non-1 axis is a no-op, ONNX's Squeeze fails at load or run.

    A Squeeze is a no-op when the exporter's value info gives its input a static, non-1 size on every axis it
    names; its consumers are rewired to its input. Returns how many were removed.
    """
    graph = proto.graph
    shapes = {vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
              for vi in (*graph.value_info, *graph.input)}
    wanted = {n.input[1] for n in graph.node if n.op_type == "Squeeze" and len(n.input) > 1}
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer if t.name in wanted}
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] in wanted and node.attribute[0].name == "value":
            consts[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    keep = []
    for node in graph.node:
        if node.op_type == "Squeeze" and len(node.input) > 1 and node.input[1] in consts:
            shape = shapes.get(node.input[0])
            axes = [int(a) for a in np.atleast_1d(consts[node.input[1]])]
            if shape and all(shape[a] not in (None, 1) for a in axes) and node.output[0] not in outputs:
                rename[node.output[0]] = rename.get(node.input[0], node.input[0])
                continue
        keep.append(node)
    if not rename:
        return 0
    for node in keep:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del graph.node[:]
    graph.node.extend(keep)
    return len(rename)


class SharedData:
    """One external-data file for every graph of a set; each distinct large tensor is written once.

    Graphs are externalized one at a time and saved small, so a model above protobuf's 2 GB limit never has to
    exist as one serialized message, and the per-group graphs share the reference's bytes wherever equal.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.fh = open(self.path, "wb")
        self.offsets: dict[str, tuple[int, int]] = {}

    def externalize(self, proto: onnx.ModelProto) -> None:
        for tensor in proto.graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                continue
            if not tensor.HasField("raw_data"):
                tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor), tensor.name))
            raw = tensor.raw_data
            if len(raw) < EXTERNAL_MIN_BYTES:
                continue
            key = sha256_bytes(raw + bytes(str((tensor.data_type, list(tensor.dims))), "utf8"))
            if key not in self.offsets:
                self.fh.write(b"\0" * ((-self.fh.tell()) % 64))
                self.offsets[key] = (self.fh.tell(), len(raw))
                self.fh.write(raw)
            offset, length = self.offsets[key]
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            del tensor.external_data[:]
            for k, v in (("location", DATA_FILE), ("offset", str(offset)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = k, v

    def save(self, proto: onnx.ModelProto, path: Path) -> None:
        self.externalize(proto)
        onnx.save_model(proto, str(path))

    def close(self) -> None:
        self.fh.close()


def model_info(model: LoadedModel) -> dict[str, object]:
    """What an ONNX set records about its model: identity, shapes, conditioning (see ``conditioning_from_info``)."""
    info: dict[str, object] = {
        "source": model.source, "sha256": model.sha256, "kind": model.kind, "class": type(model.transformer).__name__,
        "sample_shape": list(model.sample_shape), "num_train_timesteps": model.num_train_timesteps,
        "conditioning": model.conditioning.kind, "num_conditions": model.num_conditions,
        "inputs": {k: v["shape"] for k, v in model.conditioning.inputs().items()},
        "config": {k: v for k, v in dict(model.config).items() if not k.startswith("_")},
    }
    if model.kind == "dit":
        info.update(num_classes=model.num_classes, null_class=model.null_class)
    return info


def check_lint(artifact: OnnxArtifact, out: Path) -> None:
    """Lint the staged set as its readers will (:func:`ditq.artifacts.lint.lint_onnx_set`); CheckFailed if broken."""
    from ditq.artifacts.lint import format_violations, lint_onnx_set

    results = lint_onnx_set(artifact)
    if any(results.values()):
        log.error("%s", format_violations(results))
        count = sum(len(v) for v in results.values())
        raise CheckFailed(f"the exported graphs break TensorRT's QDQ rules ({count} violation(s), listed above); "
                          f"{out} was left as it was")


def export_onnx(model: LoadedModel, recipe: Recipe, out: Path, *, recipe_dir: Path | None = None,
                opset: int = DEFAULT_OPSET, precision: str = "fp32", force: bool = False,
                progress: bool = True, reference: onnx.ModelProto | None = None, lint: bool = True,
                target: str = "onnxruntime", single_graph: bool = False) -> OnnxArtifact:
    """Write ``out/``: ``group_{g}.onnx`` per group, ``reference.onnx``, ``weights.bin``, ``io.json``, manifest.

    ``precision`` is the float type of everything that is not INT8 (Q/DQ scales included). ``reference``: the
    ``export_reference(model, opset, precision)`` graph, when the caller exports several recipes of one model
    (the dynamo export dominates the time); it is copied, not modified. ``lint``: check TensorRT's QDQ rules on the
    staged set and raise ``CheckFailed`` before it replaces anything (:func:`check_lint`). ``target``: one of
    :data:`TARGETS` (``tensorrt``: INT4 as W4A16, recorded in the manifest's ``weight_only``). ``single_graph``:
    also ``single_graph.onnx`` + ``single_graph_feeds.safetensors``, one graph for all groups whose shifts and
    activation-scale ratios are runtime inputs (``ditq.export.single_graph``; ONNX Runtime then holds the weights
    once); the group graphs are written as always.
    """
    weight_only = weight_only_linears(recipe, target)
    if precision not in PRECISIONS:
        raise DitqError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if opset < 19:
        raise DitqError(f"--opset must be >= 19 (FP16 Q/DQ scales and the dynamo exporter need it), got {opset}")
    blocked = [lin for site in recipe.sites for lin in site.linears
               if recipe.linear_spec(lin).w_bits == 4 or recipe.linear_spec(lin).w_block]
    if blocked and opset < 21:
        raise DitqError(f"INT4 or block-quantized weights ({blocked[0]}) need DequantizeLinear with block_size, "
                        f"opset >= 21; got --opset {opset}")
    check_recipe_model(model, recipe, recipe_dir)
    start = time.perf_counter()
    out = Path(out)
    inputs = [p for p in (recipe_dir, None if model.source == "demo" else model.source) if p is not None]
    check_output(out, kind=OnnxArtifact.KIND, force=force, inputs=inputs)  # before the long work
    sites = quant_sites(model.transformer)
    if [s.name for s in sites] != [s.name for s in recipe.sites]:
        raise DitqError("the recipe's quantized sites do not match the model's; re-run `ditq calibrate`")
    state = model.transformer.state_dict()
    if reference is None:
        reference = export_reference(model, opset, precision)
    else:
        wanted = {"fp32": onnx.TensorProto.FLOAT, "fp16": onnx.TensorProto.FLOAT16}[precision]
        if reference.graph.input[0].type.tensor_type.elem_type != wanted:
            raise DitqError(f"the reference graph passed to export_onnx is not {precision}; export it with "
                            "export_reference(model, opset, precision)")
        reference = copy.deepcopy(reference)
    gemms = find_gemms(reference, {lin for s in sites for lin in s.linears})
    params = find_params(reference, foldable_params(sites), state)
    names = input_names(model)
    with staging_dir(out, kind=OnnxArtifact.KIND, force=force, inputs=inputs) as tmp:
        data = SharedData(tmp / DATA_FILE)
        try:  # the reference first: its weights go to weights.bin and the graph becomes small
            data.save(reference, tmp / "reference.onnx")
            for g in tqdm(range(recipe.num_groups), desc="export", disable=not progress, leave=False):
                # weight-only Linears quantize no activation: their bias corrections stay out
                folded, pre = recipe.fold(state, sites, g, uncorrected=weight_only)
                changed = {k for k, v in folded.items() if v is not state[k] and not torch.equal(v, state[k])}
                graph = apply_group(reference, gemms, sites, recipe, g, folded, pre, changed, params, weight_only)
                del folded
                data.save(graph, tmp / f"group_{g}.onnx")
                del graph
        finally:
            data.close()
        for name in ("reference.onnx", *(f"group_{g}.onnx" for g in range(recipe.num_groups))):
            onnx.checker.check_model(str(tmp / name), full_check=True)
        if model.kind != "dit":
            model.conditioning.save(tmp / CAPTIONS_FILE)
        ftype = {"fp32": "float32", "fp16": "float16"}[precision]
        cond_io = {k: {"dtype": ftype if v["dtype"] == "float" else v["dtype"],
                       "shape": ["batch", *(["caption_length", *v["shape"][1:]] if k in CAPTION_INPUTS
                                            else v["shape"])]}
                   for k, v in model.conditioning.inputs().items()}
        write_json(tmp / "io.json", {
            "inputs": {"hidden_states": {"dtype": ftype, "shape": ["batch", *model.sample_shape]},
                       "timestep": {"dtype": ftype, "shape": ["batch"]}, **cond_io},
            "outputs": {OUTPUT: {"dtype": ftype, "shape": ["batch", *model.sample_shape]}},
            "dynamic_axes": {name: {"0": "batch", **({"1": "caption_length"} if name in CAPTION_INPUTS else {})}
                             for name in (*names, OUTPUT)},
        })
        artifact = OnnxArtifact(
            root=tmp, precision=precision, opset=opset,
            groups=tuple(OnnxGroup(g.group_id, g.interval, f"group_{g.group_id}.onnx",
                                   sha256_file(tmp / f"group_{g.group_id}.onnx")) for g in recipe.groups),
            reference_sha256=sha256_file(tmp / "reference.onnx"),
            data_sha256=sha256_file(tmp / DATA_FILE),
            model=model_info(model),
            scheduler_config=dict(model.scheduler_config),
            recipe={"dir": os.path.relpath(Path(recipe_dir).resolve(), out.resolve()) if recipe_dir else None,
                    "method": recipe.method,
                    "w_bits": recipe.w_bits, "a_bits": recipe.a_bits,
                    "dynamic_activations": recipe.dynamic_activations,
                    # run-time activation quantizers exported as float ops (not Q/DQ): no TensorRT INT8 form
                    "float_quantized_activations": bool(recipe.float_quantized_linears),
                    "weight_formats": sorted({("FP8E4M3" if s.fmt == "fp8_e4m3" else f"INT{s.w_bits}")
                                              + (f"/block{s.w_block}" if s.w_block else "/channel")
                                              for s in (recipe.linear_spec(lin) for site in recipe.sites
                                                        for lin in site.linears)})},
            parent_sha256=manifest_sha256(recipe_dir) if recipe_dir else None,
            seconds=round(time.perf_counter() - start, 3),
            target=target, weight_only=tuple(sorted(weight_only)),
        )
        if single_graph:
            from ditq.artifacts.single_graph import feeds_path
            from ditq.export.single_graph import save_single_graph
            from ditq.export.single_graph import single_graph as merge_groups

            save_single_graph(merge_groups(artifact), tmp / "single_graph.onnx")
            feeds = feeds_path(tmp / "single_graph.onnx").name
            artifact = dataclasses.replace(artifact, single_graph={
                "file": "single_graph.onnx", "sha256": sha256_file(tmp / "single_graph.onnx"),
                "feeds": feeds, "feeds_sha256": sha256_file(tmp / feeds)})
        artifact.save()
        if lint:  # before the set replaces anything: a graph TensorRT would reject never becomes the output
            check_lint(artifact, out)
    log.info("exported %d groups in %.1f s", recipe.num_groups, artifact.seconds)
    return OnnxArtifact.load(out)
