"""Loading a model (diffusers ``DiTTransformer2DModel``, ``PixArtTransformer2DModel``) and dispatching to its
family file (``models.dit``, ``models.pixart``) for what ditq quantizes.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ditq.artifacts.captions import CAPTIONS_FILE, Conditioning, load_caption_table
from ditq.core.cond import Cond
from ditq.core.sites import Denoiser, Site
from ditq.errors import DitqError
from ditq.models.dit import DiTDenoiser, dit_sites
from ditq.models.pixart import PixArtDenoiser, pixart_sites
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
DEMO_DIR = Path(__file__).parent / "demo_weights"  # the bundled demo model (trained by ``ditq.testbed.demo``)
DEFAULT_SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000}  # random-weight models only
log = logging.getLogger(__name__)


def model_kind(transformer: nn.Module) -> str:
    name = type(transformer).__name__
    if name not in SUPPORTED:
        raise DitqError(f"a {name} is not supported; ditq quantizes {' and '.join(SUPPORTED)}")
    return SUPPORTED[name]


def quant_sites(transformer: nn.Module) -> list[Site]:
    """The quantized sites, block by block (DESIGN §2): DiT qkv, out-projection, fc1, fc2 (``models.dit``); PixArt
    adds cross-attention (``models.pixart``)."""
    return (pixart_sites if model_kind(transformer) == "pixart" else dit_sites)(transformer)


def make_denoiser(transformer: nn.Module) -> Denoiser:
    """The denoiser of ``transformer``'s family, in eval mode (DiT's label dropout must not run or be traced)."""
    return (PixArtDenoiser if model_kind(transformer) == "pixart" else DiTDenoiser)(transformer).eval()


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
        return DEMO_DIR
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


def check_recipe_model(model: LoadedModel, recipe: Any, root: Path | None = None) -> None:
    """Refuse a recipe calibrated on another model (sha256) or for another training schedule (one line each)."""
    recipe.check_model(model, root)
    check_schedule(recipe.scheduler_config, model.scheduler_config, recorded_as="the recipe",
                   actual_as=f"the model's scheduler ({model.scheduler_source or model.source})")
