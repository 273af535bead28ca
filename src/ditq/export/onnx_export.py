"""``export_onnx(model, recipe, out) -> OnnxArtifact``: one QDQ graph per timestep group + the FP reference.

The transformer is exported once (torch dynamo exporter, dynamic batch); each group's graph is that graph with
the group's folded parameters grafted in and Q/DQ inserted (``export.qdq``). Tensors that are identical across
graphs (the folded weights: smoothing is per site, not per group) are written once to ``weights.bin``; only
what differs per group (biases carrying the shift, activation scales) lives inside ``group_{g}.onnx``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import time
import warnings
from pathlib import Path

import onnx
import torch
from tqdm.auto import tqdm

from ditq.artifacts import manifest_sha256, sha256_bytes, sha256_file, staging_dir, write_json
from ditq.calibration.recipe import Recipe
from ditq.errors import DitqError
from ditq.export.artifact import OnnxArtifact, OnnxGroup
from ditq.export.fold import fold_state
from ditq.export.qdq import SCOPE_KEY, apply_group, find_gemms
from ditq.models.dit import LoadedModel, quant_sites

log = logging.getLogger(__name__)

INPUTS = ("hidden_states", "timestep", "class_labels")
OUTPUT = "sample"
DATA_FILE = "weights.bin"
EXTERNAL_MIN_BYTES = 1024
DEFAULT_OPSET = 21


def dummy_inputs(model: LoadedModel, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.randn(batch, *model.sample_shape), torch.linspace(0, model.num_train_timesteps - 1, batch),
            torch.arange(batch) % (model.num_classes + 1))


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


def export_reference(model: LoadedModel, opset: int = DEFAULT_OPSET, precision: str = "fp32") -> onnx.ModelProto:
    """The unquantized transformer as ONNX (dynamic batch); module scopes stay in node metadata.

    ``fp16`` exports the model in half precision end to end (I/O included): TensorRT 11 builds strongly typed
    networks only, so the graph itself must carry FP16 wherever it is not INT8.
    """
    dtype = PRECISIONS[precision]
    denoiser = copy.deepcopy(model.denoiser()).to(dtype)  # .eval(): DiT's label dropout must not be traced
    x, t, y = dummy_inputs(model)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            denoiser, (x.to(dtype), t.to(dtype), y), dynamo=True, opset_version=opset, input_names=list(INPUTS),
            output_names=[OUTPUT], dynamic_shapes=({0: batch}, {0: batch}, {0: batch}), verbose=False,
        )
    assert program is not None
    proto = program.model_proto
    for node in proto.graph.node:  # keep the module scopes; drop stack traces (local paths, most of the bytes)
        keep = [p for p in node.metadata_props if p.key == SCOPE_KEY]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    return proto


def _externalize(models: dict[str, onnx.ModelProto], out: Path) -> None:
    """Move large initializers of all ``models`` to one shared file, each distinct tensor stored once."""
    offsets: dict[str, tuple[int, int]] = {}
    with open(out / DATA_FILE, "wb") as fh:
        for proto in models.values():
            for tensor in proto.graph.initializer:
                if not tensor.HasField("raw_data"):
                    tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor), tensor.name))
                raw = tensor.raw_data
                if len(raw) < EXTERNAL_MIN_BYTES:
                    continue
                key = sha256_bytes(raw + bytes(str((tensor.data_type, list(tensor.dims))), "utf8"))
                if key not in offsets:
                    pad = (-fh.tell()) % 64
                    fh.write(b"\0" * pad)
                    offsets[key] = (fh.tell(), len(raw))
                    fh.write(raw)
                offset, length = offsets[key]
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
                del tensor.external_data[:]
                for k, v in (("location", DATA_FILE), ("offset", str(offset)), ("length", str(length))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = k, v
    for name, proto in models.items():
        onnx.save_model(proto, str(out / name))


def export_onnx(model: LoadedModel, recipe: Recipe, out: Path, *, recipe_dir: Path | None = None,
                opset: int = DEFAULT_OPSET, precision: str = "fp32", force: bool = False,
                progress: bool = True, reference: onnx.ModelProto | None = None) -> OnnxArtifact:
    """Write ``out/``: ``group_{g}.onnx`` per group, ``reference.onnx``, ``weights.bin``, ``io.json``, manifest.

    ``precision`` is the float type of everything that is not INT8 (Q/DQ scales included). ``reference``: the
    ``export_reference(model, opset, precision)`` graph, when the caller exports several recipes of one model
    (the dynamo export dominates the time); it is copied, not modified.
    """
    if precision not in PRECISIONS:
        raise DitqError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if opset < 19:
        raise DitqError(f"--opset must be >= 19 (FP16 Q/DQ scales and the dynamo exporter need it), got {opset}")
    blocked = [lin for site in recipe.sites for lin in site.linears
               if recipe.linear_spec(lin).w_bits == 4 or recipe.linear_spec(lin).w_block]
    if blocked and opset < 21:
        raise DitqError(f"INT4 or block-quantized weights ({blocked[0]}) need DequantizeLinear with block_size, "
                        f"opset >= 21; got --opset {opset}")
    if model.sha256 != recipe.model_sha256:
        raise DitqError(f"the model {model.source} (sha256 {model.sha256[:12]}) is not the one the recipe was "
                        f"calibrated on ({recipe.model_sha256[:12]}); re-run `ditq calibrate`")
    start = time.perf_counter()
    out = Path(out)
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
    smooth = {s.name: recipe.smooth(s.name) for s in sites}
    graphs: dict[str, onnx.ModelProto] = {"reference.onnx": reference}
    for g in tqdm(range(recipe.num_groups), desc="export", disable=not progress, leave=False):
        folded, pre = fold_state(state, sites, {s.name: recipe.shift(s.name, g) for s in sites}, smooth)
        changed = {k for k, v in folded.items() if not torch.equal(v, state[k])}
        graphs[f"group_{g}.onnx"] = apply_group(reference, gemms, sites, recipe, g, folded, pre, changed)
    with staging_dir(out, force=force) as tmp:
        _externalize(graphs, tmp)
        for name in graphs:
            onnx.checker.check_model(str(tmp / name), full_check=True)
        ftype = {"fp32": "float32", "fp16": "float16"}[precision]
        write_json(tmp / "io.json", {
            "inputs": {"hidden_states": {"dtype": ftype, "shape": ["batch", *model.sample_shape]},
                       "timestep": {"dtype": ftype, "shape": ["batch"]},
                       "class_labels": {"dtype": "int64", "shape": ["batch"]}},
            "outputs": {OUTPUT: {"dtype": ftype, "shape": ["batch", *model.sample_shape]}},
            "dynamic_axes": {name: {"0": "batch"} for name in (*INPUTS, OUTPUT)},
        })
        artifact = OnnxArtifact(
            root=tmp, precision=precision, opset=opset,
            groups=tuple(OnnxGroup(g.group_id, g.interval, f"group_{g.group_id}.onnx",
                                   sha256_file(tmp / f"group_{g.group_id}.onnx")) for g in recipe.groups),
            reference_sha256=sha256_file(tmp / "reference.onnx"),
            data_sha256=sha256_file(tmp / DATA_FILE),
            model={"source": model.source, "sha256": model.sha256, "sample_shape": list(model.sample_shape),
                   "num_classes": model.num_classes, "null_class": model.null_class,
                   "num_train_timesteps": model.num_train_timesteps},
            scheduler_config=dict(model.scheduler_config),
            recipe={"dir": os.path.relpath(Path(recipe_dir).resolve(), out.resolve()) if recipe_dir else None,
                    "method": recipe.method,
                    "w_bits": recipe.w_bits, "a_bits": recipe.a_bits,
                    "dynamic_activations": recipe.dynamic_activations,
                    "weight_formats": sorted({f"INT{s.w_bits}" + (f"/block{s.w_block}" if s.w_block else "/channel")
                                              for s in (recipe.linear_spec(lin) for site in recipe.sites
                                                        for lin in site.linears)})},
            parent_sha256=manifest_sha256(recipe_dir) if recipe_dir else None,
            seconds=round(time.perf_counter() - start, 3),
        )
        artifact.save()
    log.info("exported %d groups in %.1f s", recipe.num_groups, artifact.seconds)
    return OnnxArtifact.load(out)
