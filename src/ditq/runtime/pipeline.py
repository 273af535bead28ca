"""A drop-in ``pipe.transformer`` for diffusers' ``DiTPipeline``, ``PixArtAlphaPipeline`` and ``PixArtSigmaPipeline``.

``QuantizedTransformer.from_pretrained(path, backend=...)`` opens a ditq artifact the way diffusers opens a model
directory, with any backend of ``ditq.runtime.backends``: an ONNX set (``backend="onnxruntime"``), an engine set
(``"tensorrt"``) or a recipe (``"fake-quant"``: fake quantization; ``"torch-int8"``: real INT8 GEMMs; ``"torch"``
is a deprecated alias of ``"fake-quant"``). It accepts the transformer's call signature, picks the timestep group
from the timestep the pipeline passes (every row of a call must share it, as in every diffusers sampler), and
returns what the transformer returns, so the pipeline code stays unchanged::

    pipe = PixArtAlphaPipeline.from_pretrained("/models/PixArt-XL-2-512x512",
                                               transformer=QuantizedTransformer.from_pretrained("pixart-onnx"))
    image = pipe("a red fox in the snow").images[0]

The groups are intervals on the training timestep axis of the schedule the artifact was calibrated for, so the
pipeline's scheduler must have that training schedule (``num_train_timesteps``, betas, prediction type; the
sampler class and step count are free). At every call from a diffusers pipeline (``pipe(...)`` calls
``pipe.transformer``), the quantized transformer finds the calling pipeline's ``scheduler`` and refuses one with
another training schedule (DitqError naming both), e.g. ``DDIMScheduler.from_config(cfg, num_train_timesteps=500)``
against a 1000-step recipe, whose timesteps would otherwise all land, silently, in the wrong groups. Code that
calls the transformer outside a pipeline checks its scheduler with ``qt.check_scheduler(scheduler)``; a timestep
outside [0, T-1] (or not finite) is refused at every call, and so is a class label the model has no embedding for.

Learned-sigma models (DiT, PixArt: ``out_channels == 2 * in_channels``): the quantized graphs compute the noise
prediction only; the variance half is returned as zeros. diffusers' DiT and PixArt pipelines split that half off
and drop it before ``scheduler.step``, so their results do not depend on it; code that reads it would get zeros.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin

from ditq.errors import DitqError
from ditq.models.pixart import VAE_SCALE
from ditq.runtime.backends.base import GroupedBackend


class QuantizedTransformer(ModelMixin, ConfigMixin):  # type: ignore[misc]
    """Stands in for a ``DiTTransformer2DModel`` / ``PixArtTransformer2DModel`` inside a diffusers pipeline.

    A ``ModelMixin`` (holding no parameters) so that ``Pipeline.from_pretrained(dir, transformer=...)`` accepts
    it as it accepts any diffusers model; ``config`` is the original transformer's config.
    """

    config_name = "config.json"

    def __init__(self, backend: GroupedBackend, config: dict[str, Any], kind: str,
                 device: torch.device | str = "cpu", scheduler_config: dict[str, Any] | None = None) -> None:
        super().__init__()
        from diffusers.configuration_utils import FrozenDict

        self.backend = backend
        self.kind = kind
        self.scheduler_config = scheduler_config  # the schedule the artifact was calibrated for (None: unknown)
        self._checked_scheduler: Any = None  # the last pipeline scheduler found to match (checked once per object)
        self._internal_dict = FrozenDict(config)
        self._device = torch.device(device)
        self.learned_sigma = int(config["out_channels"]) == 2 * int(config["in_channels"])

    # what pipelines read from their transformer
    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return self._device

    @classmethod
    def from_pretrained(cls, path: str | Path, *, backend: str = "onnxruntime", threads: int | None = None,
                        exact_qdq: bool | None = None) -> QuantizedTransformer:
        """Open a ditq artifact directory with the backend named ``backend`` (``ditq.runtime.backends.registry``:
        fake-quant, onnxruntime, tensorrt, torch-int8). ``exact_qdq``: ONNX Runtime without fused integer kernels (the
        numerics TensorRT computes; slower); None (default): exact unless the CPU has VNNI, whose fused kernels
        compute the same (without VNNI they saturate; see ``ditq.runtime.cpu``)."""
        from ditq.runtime.backends.registry import get_backend, open_backend

        path = Path(path)
        entry = get_backend(backend)  # an unknown name fails before anything loads; an alias warns once
        grouped, info = open_backend(path, entry.name, threads=threads,
                                     fuse=None if exact_qdq is None else not exact_qdq)
        config, kind = info.get("config"), info.get("kind", "dit")
        if not config:
            raise DitqError(f"{path} does not record the transformer config; re-export it with this ditq version")
        return cls(grouped, dict(config), kind, entry.device, scheduler_config=info.get("scheduler_config"))

    def check_scheduler(self, scheduler: Any) -> None:
        """Refuse a scheduler (object or config) whose training schedule is not the artifact's: its timesteps
        would select the wrong groups. Pipelines calling this transformer are checked automatically."""
        from ditq.models.schedule import check_schedule, scheduler_config_of

        check_schedule(self.scheduler_config, scheduler_config_of(scheduler), recorded_as="the quantized transformer",
                       actual_as=f"the {type(scheduler).__name__}")

    def _check_calling_pipeline(self) -> None:
        """Check the scheduler of the diffusers pipeline whose ``__call__`` called this transformer, if any (the
        pipeline is a few frames up: its ``self`` holds this object as ``transformer``)."""
        if self.scheduler_config is None:
            return
        frame = sys._getframe(1)
        for _ in range(8):
            if frame is None:
                return
            owner = frame.f_locals.get("self")
            if owner is not None and owner is not self and getattr(owner, "transformer", None) is self:
                scheduler = getattr(owner, "scheduler", None)
                if scheduler is not None and scheduler is not self._checked_scheduler:
                    self.check_scheduler(scheduler)
                    self._checked_scheduler = scheduler
                return
            frame = frame.f_back

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor | float | None = None,
                class_labels: torch.Tensor | None = None, encoder_hidden_states: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None,
                added_cond_kwargs: dict[str, torch.Tensor | None] | None = None,
                cross_attention_kwargs: dict[str, Any] | None = None, attention_mask: torch.Tensor | None = None,
                return_dict: bool = True) -> Any:
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        if timestep is None:
            raise DitqError("the quantized transformer needs the timestep (it selects the group's engine)")
        self._check_calling_pipeline()
        if attention_mask is not None or cross_attention_kwargs:
            raise DitqError("attention_mask and cross_attention_kwargs are not supported by the exported graphs")
        batch = hidden_states.shape[0]
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1).cpu()
        t = t.expand(batch) if t.numel() == 1 else t
        if not bool(torch.isfinite(t).all()):  # refused, naming the value and the range, by the group lookup
            self.backend.group_of(float(t[~torch.isfinite(t)][0]))
        if t.numel() != batch or not bool((t == t[0]).all()):
            raise DitqError(f"every row of a call must share one timestep (got {t.tolist()})")
        cond = self._cond(batch, class_labels, encoder_hidden_states, encoder_attention_mask, added_cond_kwargs)
        eps = self.backend(hidden_states.detach().float().cpu(), t.contiguous(), cond)
        out = torch.cat([eps, torch.zeros_like(eps)], dim=1) if self.learned_sigma else eps
        out = out.to(device=hidden_states.device, dtype=hidden_states.dtype)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    def _cond(self, batch: int, class_labels: torch.Tensor | None, encoder_hidden_states: torch.Tensor | None,
              encoder_attention_mask: torch.Tensor | None,
              added_cond_kwargs: dict[str, torch.Tensor | None] | None) -> dict[str, torch.Tensor]:
        if self.kind == "dit":
            if class_labels is None:
                raise DitqError("a DiT transformer needs class_labels")
            return {"class_labels": torch.as_tensor(class_labels).reshape(-1).long().cpu()}
        if encoder_hidden_states is None:
            raise DitqError("a PixArt transformer needs encoder_hidden_states (the prompt embeddings)")
        if encoder_attention_mask is None:
            encoder_attention_mask = torch.ones(encoder_hidden_states.shape[:2])
        if encoder_attention_mask.dim() != 2:
            raise DitqError("encoder_attention_mask must be the [batch, tokens] 0/1 mask the pipeline builds")
        self._check_added_conditions(batch, added_cond_kwargs)
        return {"encoder_hidden_states": encoder_hidden_states.detach().float().cpu(),
                "encoder_attention_mask": encoder_attention_mask.detach().float().cpu()}

    def _check_added_conditions(self, batch: int, added: dict[str, torch.Tensor | None] | None) -> None:
        """PixArt-α 1024 conditions on resolution and aspect ratio; the graphs serve the native square size."""
        res = (added or {}).get("resolution")
        if res is None:
            return
        native = float(self.config["sample_size"] * VAE_SCALE)
        ratio = (added or {}).get("aspect_ratio")
        if not bool((torch.as_tensor(res).float() == native).all()) or (
                ratio is not None and not bool((torch.as_tensor(ratio).float() == 1.0).all())):
            raise DitqError(f"the exported graphs serve {int(native)}x{int(native)} images (resolution and aspect "
                            f"ratio are built in); got resolution {torch.as_tensor(res).tolist()[:1]}")

    def __repr__(self) -> str:
        return f"QuantizedTransformer({self.kind}, backend={self.backend.name}, groups={list(self.backend.intervals)})"

