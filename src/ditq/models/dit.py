"""Diffusion transformers (diffusers ``DiTTransformer2DModel``, ``PixArtTransformer2DModel``): loading a local
model directory and naming what ditq quantizes.

A model directory is laid out like a diffusers pipeline: ``transformer/`` (``save_pretrained`` output) and
``scheduler/scheduler_config.json``; any other components (vae, text_encoder, ...) are ignored. A bare transformer
directory (``config.json`` + weights) is accepted too, with its scheduler saved beside ``config.json`` (or in the
parent pipeline's ``scheduler/`` when the ``transformer/`` subfolder is given); where no scheduler is found the
caller must name one (``models.schedule``): ditq never guesses the training schedule. PixArt models also need
caption embeddings to calibrate on: ``captions.safetensors`` (``models.conditioning``) at the directory's root.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ditq.errors import DitqError
from ditq.models.conditioning import CAPTIONS_FILE, Cond, Conditioning, load_caption_table
from ditq.models.schedule import (
    SchedulerSpec,
    check_schedule,
    find_scheduler_config,
    read_scheduler_config,
    same_schedule,
    scheduler_candidates,
    scheduler_config_of,
)

DIT_CLASS = "DiTTransformer2DModel"
PIXART_CLASS = "PixArtTransformer2DModel"
SUPPORTED = {DIT_CLASS: "dit", PIXART_CLASS: "pixart"}
DEFAULT_SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000}  # random-weight models only
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Site:
    """One quantized activation: the input shared by ``linears``, and how its shift/scale fold away.

    fold = "adaln": into rows ``shift_chunk``/``scale_chunk`` of the modulation Linear ``producer``;
           "v_proj": into the value projection ``producer`` (softmax rows sum to one);
           "table": the shift into row ``shift_chunk`` of the block's ``scale_shift_table`` ``producer``
                    (PixArt's adaLN-single); the scale's time-dependent part comes from a Linear all blocks
                    share, so a channel scale needs an explicit Mul;
           "explicit": an explicit per-group Sub/Mul before the quantizer (no linear producer, e.g. after GELU).
    """

    name: str
    linears: tuple[str, ...]
    fold: str
    producer: str | None = None
    shift_chunk: int = -1
    scale_chunk: int = -1
    num_chunks: int = 0

    @property
    def free_shift(self) -> bool:
        """Whether a channel shift folds away exactly (no run-time op)."""
        return self.fold != "explicit"

    @property
    def free_scale(self) -> bool:
        """Whether a channel scale folds away exactly (no run-time op)."""
        return self.fold in ("adaln", "v_proj")


def model_kind(transformer: nn.Module) -> str:
    name = type(transformer).__name__
    if name not in SUPPORTED:
        raise DitqError(f"a {name} is not supported; ditq quantizes {' and '.join(SUPPORTED)}")
    return SUPPORTED[name]


def quant_sites(transformer: nn.Module) -> list[Site]:
    """The quantized sites, block by block (DESIGN §2): DiT qkv, out-projection, fc1, fc2; PixArt adds
    cross-attention (``models.pixart``)."""
    if model_kind(transformer) == "pixart":
        from ditq.models.pixart import pixart_sites

        return pixart_sites(transformer)
    sites: list[Site] = []
    for i, _ in enumerate(transformer.transformer_blocks):  # type: ignore[union-attr]
        b = f"transformer_blocks.{i}"
        sites += [
            Site(f"{b}.attn1.qkv", (f"{b}.attn1.to_q", f"{b}.attn1.to_k", f"{b}.attn1.to_v"), "adaln",
                 f"{b}.norm1.linear", shift_chunk=0, scale_chunk=1, num_chunks=6),
            Site(f"{b}.attn1.to_out.0", (f"{b}.attn1.to_out.0",), "v_proj", f"{b}.attn1.to_v"),
            Site(f"{b}.ff.net.0.proj", (f"{b}.ff.net.0.proj",), "adaln",
                 f"{b}.norm1.linear", shift_chunk=3, scale_chunk=4, num_chunks=6),
            Site(f"{b}.ff.net.2", (f"{b}.ff.net.2",), "explicit"),
        ]
    return sites


class Denoiser(nn.Module):
    """``(hidden_states, timestep, *conditioning) -> eps``: the forward that export and the runtime share.

    ``forward`` takes the conditioning tensors positionally, in ``cond_names`` order (the ONNX input order);
    ``predict(x, t, cond)`` takes them as a ``Cond`` mapping. Learned-sigma outputs are cut to the eps half.
    """

    cond_names: tuple[str, ...] = ()

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.m = transformer
        cfg = transformer.config  # type: ignore[union-attr]
        self.learned_sigma = cfg.out_channels == 2 * cfg.in_channels

    def _eps(self, out: torch.Tensor, channels: int) -> torch.Tensor:
        return out[:, :channels] if self.learned_sigma else out

    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        return self(x, t, *(cond[k] for k in self.cond_names))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``den(x, t, cond)`` with a ``Cond`` mapping is ``den.predict(x, t, cond)``; tensors go to ``forward``."""
        if len(args) == 3 and isinstance(args[2], Mapping) and not kwargs:
            return self.predict(*args)
        return super().__call__(*args, **kwargs)


class DiTDenoiser(Denoiser):
    cond_names = ("class_labels",)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        out = self.m(hidden_states, timestep=timestep, class_labels=class_labels, return_dict=False)[0]
        return self._eps(out, hidden_states.shape[1])


def make_denoiser(transformer: nn.Module) -> Denoiser:
    """The denoiser of ``transformer``'s family, in eval mode (DiT's label dropout must not run or be traced)."""
    if model_kind(transformer) == "pixart":
        from ditq.models.pixart import PixArtDenoiser

        return PixArtDenoiser(transformer).eval()
    return DiTDenoiser(transformer).eval()


@dataclass
class LoadedModel:
    transformer: nn.Module
    scheduler_config: dict[str, Any]
    source: str  # "demo" or the resolved model directory
    sha256: str
    captions: Conditioning | None = None  # PixArt: the caption table calibration and sampling use
    scheduler_source: str = ""  # where scheduler_config came from (a file, or what the caller passed)

    @property
    def config(self) -> Any:
        return self.transformer.config  # type: ignore[union-attr]

    @property
    def kind(self) -> str:
        return model_kind(self.transformer)

    @property
    def conditioning(self) -> Conditioning:
        if self.kind == "dit":
            return Conditioning.classes(int(self.config.num_embeds_ada_norm))
        if self.captions is None:
            raise DitqError(f"the PixArt model {self.source} has no caption table; put {CAPTIONS_FILE} (prompt "
                            "embeddings, see ditq.models.conditioning) in its directory")
        return self.captions

    def cond(self, ids: Any) -> Cond:
        """The conditioning of class labels (DiT) or caption-table rows (PixArt)."""
        return self.conditioning.cond(ids)

    def null_cond(self, n: int = 1) -> Cond:
        return self.conditioning.null(n)

    @property
    def num_conditions(self) -> int:
        return self.conditioning.num

    @property
    def num_classes(self) -> int:
        if self.kind != "dit":
            raise DitqError("this is a text-conditioned model; it has captions, not classes")
        return int(self.config.num_embeds_ada_norm)

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (int(c.in_channels), int(c.sample_size), int(c.sample_size))

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    def denoiser(self) -> Denoiser:
        return make_denoiser(self.transformer)


def _hash_dir(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in sorted(files):
        digest.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def resolve_source(source: str | Path) -> Path:
    if str(source) == "demo":
        from ditq.models.demo import demo_model_dir

        return demo_model_dir()
    return Path(source).expanduser().resolve()


def load_model(source: str | Path, *, scheduler: SchedulerSpec | None = None,
               expected_scheduler: dict[str, Any] | None = None, expected_as: str = "the recipe") -> LoadedModel:
    """Load ``demo`` or a local model directory; a one-line DitqError for anything ditq cannot quantize.

    The scheduler (its training schedule defines the timestep axis recipes are keyed on) is, in order:
    ``scheduler`` (a ``scheduler_config.json`` path or folder, a config mapping or a diffusers scheduler: what
    the user names, e.g. ``--scheduler-config``), the one the directory holds in any diffusers layout
    (``models.schedule``), or ``expected_scheduler`` (the config a recipe or ONNX set recorded: the one its
    calibration used); else DitqError. When both the model and ``expected_scheduler`` define a schedule, they
    must agree (DitqError naming both, ``expected_as`` naming the artifact).
    """
    root = resolve_source(source)
    if not root.is_dir():
        raise DitqError(f"model directory {root} does not exist; pass a diffusers DiT/PixArt directory or 'demo'")
    tdir = root / "transformer" if (root / "transformer" / "config.json").is_file() else root
    cfg_path = tdir / "config.json"
    if not cfg_path.is_file():
        raise DitqError(f"{root} has neither transformer/config.json nor config.json; it is not a diffusers model dir")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DitqError(f"{cfg_path} is not valid JSON; the model directory is damaged") from err
    cls = cfg.get("_class_name") if isinstance(cfg, dict) else None
    if cls not in SUPPORTED:
        raise DitqError(f"{cfg_path} describes a {cls!r}; ditq supports {' and '.join(SUPPORTED)}")
    weights = sorted(tdir.glob("*.safetensors"))
    if not weights:
        raise DitqError(f"{tdir} has no .safetensors weights; save the model with safe_serialization=True")
    scheduler_config, scheduler_source = _model_scheduler(root, tdir, scheduler, expected_scheduler)
    check_schedule(expected_scheduler, scheduler_config, recorded_as=expected_as,
                   actual_as=f"the model's scheduler ({scheduler_source})")
    import diffusers

    try:
        transformer = getattr(diffusers, cls).from_pretrained(tdir, low_cpu_mem_usage=False)
    except Exception as err:  # diffusers raises many types for damaged dirs
        raise DitqError(f"could not load the {cls} in {tdir}: {str(err).splitlines()[0]}") from err
    transformer.eval().float()
    captions, hashed = None, [cfg_path, *weights]
    if (root / CAPTIONS_FILE).is_file():
        captions = load_caption_table(root / CAPTIONS_FILE)
        hashed.append(root / CAPTIONS_FILE)
    return LoadedModel(
        transformer=transformer,
        scheduler_config=scheduler_config,
        source="demo" if str(source) == "demo" else str(root),
        sha256=_hash_dir(hashed),
        captions=captions,
        scheduler_source=scheduler_source,
    )


def _model_scheduler(root: Path, tdir: Path, named: SchedulerSpec | None, expected: dict[str, Any] | None
                     ) -> tuple[dict[str, Any], str]:
    """The scheduler config to use and where it came from (see ``load_model``)."""
    found = find_scheduler_config(root, tdir)
    if named is not None:
        config = scheduler_config_of(named)
        source = str(named) if isinstance(named, (str, Path)) else "the scheduler passed in"
        if found is not None and not same_schedule(config, read_scheduler_config(found)):
            log.warning("using the named scheduler (%s), whose training schedule differs from %s", source, found)
        return config, source
    if found is not None:
        return read_scheduler_config(found), str(found)
    if expected is not None:
        return dict(expected), "recorded at calibration"
    looked = ", ".join(str(p) for p in scheduler_candidates(root, tdir))
    raise DitqError(f"{root} has no scheduler config (looked for {looked}); ditq will not guess the training "
                    "schedule: pass --scheduler-config PATH (Python: load_model(..., scheduler=...)) with the "
                    "scheduler the model was trained with")
