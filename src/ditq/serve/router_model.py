"""The router: a Triton Python-backend model with the transformer's signature (``hidden_states``, ``timestep``,
conditioning) that sends each row to its timestep group's model through BLS.

``ditq triton`` copies this file into the model repository as ``NAME/1/model.py``, next to ``route.py`` (a copy of
``ditq.runtime.route``), so it runs in a stock ``tritonserver`` with only numpy: it imports neither ditq nor torch.
Its ``config.pbtxt`` parameters name the groups' timestep intervals, their models, the float type of their inputs
and the number of classes.

Triton's dynamic batcher hands ``execute`` several requests at once, from different clients at different timesteps.
Each request is checked on its own (a NaN, a timestep outside the training axis, an unknown class label): a bad one
gets a one-line error and the others go on. The good ones are concatenated (those whose non-batch shapes agree),
their rows split by group (``route``), each group's rows sent to its model in one BLS call, and the rows put back.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

_DTYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT64": np.int64, "TYPE_INT32": np.int32}


def _router() -> Any:
    """``route.py`` beside this file in a model repository; ``ditq.runtime.route`` inside the package."""
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.isfile(os.path.join(here, "route.py")) and here not in sys.path:
        sys.path.insert(0, here)
    try:
        import route  # type: ignore[import-not-found]
    except ImportError:
        from ditq.runtime import route
    return route


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


class BadRequest(ValueError):
    """A request the model cannot serve; its message goes back to the client as one line."""


class TritonPythonModel:
    """Triton's Python-backend entry points: ``initialize(args)`` and ``execute(requests)``."""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

        self.pb = pb_utils
        self.route = _router()
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.intervals = [tuple(iv) for iv in json.loads(params["intervals"])]
        self.group_models = json.loads(params["group_models"])
        self.group_inputs = {k: _DTYPES[v] for k, v in json.loads(params["group_inputs"]).items()}
        self.num_classes = int(params.get("num_classes", "0"))
        self.output = config["output"][0]["name"]
        self.batches = 0
        self.mixed_batches = 0
        self.stats_path = params.get("stats_path") or None  # optional: counters for `ditq bench serve`

    # -- one request ----------------------------------------------------------------------------------------------
    def read(self, request: Any) -> dict[str, np.ndarray]:
        feeds = {}
        for name in self.group_inputs:
            tensor = self.pb.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise BadRequest(f"input {name} is missing; send {', '.join(self.group_inputs)}")
            feeds[name] = tensor.as_numpy()
        n = feeds["hidden_states"].shape[0]
        for name in ("timestep", "class_labels"):
            if name in feeds:
                feeds[name] = feeds[name].reshape(n, -1)[:, 0] if feeds[name].size == n else feeds[name]
        for name, value in feeds.items():
            if value.shape[0] != n:
                raise BadRequest(f"input {name} has {value.shape[0]} rows but hidden_states has {n}; send one row "
                                 "per sample")
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise BadRequest(f"input {name} holds NaN or infinite values; send finite values")
        try:
            self.route.group_ids(feeds["timestep"].tolist(), self.intervals)
        except self.route.RouteError as err:
            raise BadRequest(str(err)) from None
        labels = feeds.get("class_labels")
        if labels is not None and self.num_classes and ((labels < 0) | (labels > self.num_classes)).any():
            bad = int(labels[(labels < 0) | (labels > self.num_classes)][0])
            raise BadRequest(f"class label {bad} is out of range for this {self.num_classes}-class model: labels lie "
                             f"in [0, {self.num_classes - 1}] and {self.num_classes} is the unconditional label")
        return feeds

    # -- BLS to one group -----------------------------------------------------------------------------------------
    def group_fn(self, g: int) -> Any:
        def run(x: np.ndarray, t: np.ndarray, cond: dict[str, np.ndarray]) -> np.ndarray:
            feeds = {"hidden_states": x, "timestep": t, **cond}
            inputs = []
            for name, dtype in self.group_inputs.items():
                value = np.ascontiguousarray(feeds[name].astype(dtype, copy=False))
                if value.ndim == 1:
                    value = value.reshape(-1, 1)  # [batch] tensors travel as [batch, 1] (dims [1], reshape [])
                inputs.append(self.pb.Tensor(name, value))
            request = self.pb.InferenceRequest(model_name=self.group_models[g], inputs=inputs,
                                               requested_output_names=[self.output])
            response = request.exec()
            if response.has_error():
                raise RuntimeError(f"group model {self.group_models[g]}: {response.error().message()}")
            out = self.pb.get_output_tensor_by_name(response, self.output).as_numpy()
            return out.astype(np.float32, copy=False)

        return run

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        buckets: dict[tuple[Any, ...], list[tuple[int, dict[str, np.ndarray]]]] = {}
        for i, request in enumerate(requests):
            try:
                feeds = self.read(request)
            except BadRequest as err:
                responses[i] = self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(one_line(err)))
                continue
            key = tuple((k, v.shape[1:]) for k, v in feeds.items())
            buckets.setdefault(key, []).append((i, feeds))
        fns = [self.group_fn(g) for g in range(len(self.group_models))]
        for members in buckets.values():
            feeds = {k: np.concatenate([f[k] for _, f in members]) for k in members[0][1]}
            cond = {k: v for k, v in feeds.items() if k not in ("hidden_states", "timestep")}
            self.batches += 1
            self.mixed_batches += int(self.route.mixed(feeds["timestep"].tolist(), self.intervals))
            try:
                out = self.route.route(fns, self.intervals, feeds["hidden_states"], feeds["timestep"], cond)
            except Exception as err:  # a group model failed: every request of this batch gets the one line
                for i, _ in members:
                    responses[i] = self.pb.InferenceResponse(output_tensors=[],
                                                             error=self.pb.TritonError(one_line(err)))
                continue
            start = 0
            for i, f in members:
                n = f["hidden_states"].shape[0]
                responses[i] = self.pb.InferenceResponse(output_tensors=[self.pb.Tensor(self.output,
                                                                                        out[start:start + n])])
                start += n
        if self.stats_path:
            self.write_stats()
        return responses

    def write_stats(self) -> None:
        tmp = f"{self.stats_path}.tmp"
        with open(tmp, "w") as f:
            json.dump({"batches": self.batches, "mixed_batches": self.mixed_batches}, f)
        os.replace(tmp, self.stats_path)

    def finalize(self) -> None:
        pb = getattr(self, "pb", None)
        if pb is not None and hasattr(pb, "Logger"):
            pb.Logger.log_info(f"ditq router: {self.batches} batches, {self.mixed_batches} with rows from several "
                               "timestep groups")
