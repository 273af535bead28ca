"""The public Python API: calibrate -> save -> export_onnx -> build_engines -> QuantizedTransformer.

Everything here is re-exported lazily by ``import ditq``; the CLI commands are thin layers over these calls.

Example::

    import ditq
    from diffusers import PixArtSigmaPipeline

    pipe = PixArtSigmaPipeline.from_pretrained("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS")
    recipe = ditq.calibrate(pipe, ditq.W8A8_HTG, prompts=["a red fox in the snow", "a lighthouse at dusk"])
    recipe.save("recipe")
    onnx_set = ditq.export_onnx(recipe, "onnx", precision="fp16", model=pipe)
    engines = ditq.build_engines(onnx_set, "engines")  # TensorRT, where present
    pipe.transformer = ditq.QuantizedTransformer.from_pretrained("engines", backend="tensorrt")
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ditq.errors import DitqError

if TYPE_CHECKING:
    import torch

    from ditq.artifacts.captions import Conditioning
    from ditq.artifacts.engines import EngineArtifact
    from ditq.artifacts.onnx import OnnxArtifact
    from ditq.artifacts.recipe import Recipe
    from ditq.config import QuantConfig
    from ditq.models.loading import LoadedModel

log = logging.getLogger(__name__)
ModelLike = Any  # a diffusers pipeline, a DiT/PixArt transformer, a model directory or a hub id
# how a recipe's model is found again (recipe.json "calibration" -> "model_loader"): ``load_model`` on a ditq model
# directory, or the transformer class's from_pretrained (a pipeline's ``transformer`` subfolder, or a bare one)
DIRECTORY, PIPELINE, TRANSFORMER = "directory", "pipeline", "transformer"


def calibrate(model: ModelLike, config: QuantConfig | str | None = None, *,
              prompts: Sequence[str] | Sequence[int] | None = None,
              forward_loop: Callable[[Any], Any] | None = None, scheduler: Any = None,
              captions: Conditioning | str | Path | None = None, progress: bool = False,
              **load_kwargs: Any) -> Recipe:
    """Calibrate a DiT or PixArt model and return its recipe (timestep groups, shifts, scales).

    Args:
        model: a diffusers ``DiTPipeline`` / ``PixArtAlphaPipeline`` / ``PixArtSigmaPipeline``; an in-memory
            ``DiTTransformer2DModel`` / ``PixArtTransformer2DModel`` (float32); a ditq model directory (what
            ``ditq calibrate`` takes, ``"demo"`` included); or a Hugging Face hub id (loaded by diffusers, as is).
        config: a ``QuantConfig`` or a preset name (default ``W8A8_HTG``).
        prompts: PixArt: the calibration prompts, encoded by the pipeline's own ``encode_prompt`` into the caption
            table the default loop samples (and the exported set carries). DiT: class ids or label names.
        forward_loop: your own calibration data, Model Optimizer style: called once with the model you passed
            (the pipeline, or the transformer), it runs the model; ditq records activations keyed on the
            ``timestep`` each transformer call passes. Default: ditq samples the FP model itself
            (``config.calibration``: steps, samples, CFG scale, seed).
        scheduler: the scheduler whose training schedule defines the timestep axis (a diffusers scheduler, its
            config, or a ``scheduler_config.json`` path). Required for a bare transformer; a pipeline's own
            scheduler is used otherwise. ditq never guesses it.
        captions: PixArt without a pipeline: a caption table (``ditq.models.save_caption_table`` file, or a
            ``Conditioning``).
        progress: show a progress bar.
        load_kwargs: passed to diffusers' ``from_pretrained`` for a hub id (``cache_dir=``, ``revision=``...).

    Returns:
        The ``Recipe``; ``recipe.save(dir)`` writes it.

    Example::

        recipe = ditq.calibrate(pipe, ditq.W8A8_HTG, prompts=["a red fox in the snow"])
        recipe = ditq.calibrate(pipe.transformer, ditq.W8A8_HTG, scheduler=pipe.scheduler,
                                forward_loop=lambda tr: pipe(["a red fox"], num_inference_steps=20))
    """
    from ditq.calibration.calibrate import calibrate as run_calibration
    from ditq.calibration.calibrate import sampler_forward_loop
    from ditq.config import W8A8_HTG, QuantConfig, preset

    config = W8A8_HTG if config is None else preset(config) if isinstance(config, str) else config
    if not isinstance(config, QuantConfig):
        raise DitqError(f"config must be a QuantConfig or a preset name such as 'W8A8_HTG', got "
                        f"{type(config).__name__}")
    if forward_loop is not None and not callable(forward_loop):
        raise DitqError(f"forward_loop must be a callable taking the model, got {type(forward_loop).__name__}")
    loaded, target, loader = _load_for_calibration(model, prompts=prompts, scheduler=scheduler, captions=captions,
                                                   load_kwargs=load_kwargs)
    calib = config.calib_config(progress=progress, num_train_timesteps=loaded.num_train_timesteps)
    user_loop = forward_loop
    loop: Callable[[Any], Any] = (sampler_forward_loop(loaded, calib, _dit_rows(target, loaded, prompts))
                                  if user_loop is None else lambda _transformer: user_loop(target))
    recipe = run_calibration(loaded, config.method, calib, loop)
    recipe.calibration.update({"model_loader": loader, "model_class": type(loaded.transformer).__name__,
                               "config": config.to_dict(), **({"forward_loop": "user"} if forward_loop else {})})
    if loader != DIRECTORY and loaded.kind == "pixart":
        recipe.captions = loaded.captions  # saved with the recipe: the model hash covers it
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe directory (``recipe.save`` / ``ditq calibrate`` output).

    Args:
        path: the recipe directory.

    Example::

        recipe = ditq.load_recipe("recipe")
        print(recipe.method, [g.interval for g in recipe.groups])
    """
    from ditq.artifacts.recipe import Recipe

    return Recipe.load(Path(path))


def export_onnx(recipe: Recipe | str | Path, out: str | Path, *, precision: str = "fp32", model: ModelLike = None,
                opset: int | None = None, force: bool = False, progress: bool = False,
                **load_kwargs: Any) -> OnnxArtifact:
    """Fold the recipe into the model and write one QDQ ONNX graph per timestep group (``ditq export``).

    Args:
        recipe: a ``Recipe`` (from ``calibrate`` or ``load_recipe``) or a recipe directory.
        out: the ONNX directory to write (ditq's output rule: an existing non-empty one needs ``force``).
        precision: ``"fp32"`` or ``"fp16"`` (TensorRT 11 builds strongly typed graphs: FP16 for GPUs).
        model: the model the recipe was calibrated on, when it cannot be loaded again from the source the recipe
            records (an in-memory model): a pipeline, a transformer, a directory or a hub id.
        opset: ONNX opset (default: ditq's).
        force: replace an existing ONNX directory.
        progress: show a progress bar.
        load_kwargs: passed to diffusers' ``from_pretrained`` when the model is loaded from a hub id.

    Returns:
        The ``OnnxArtifact`` (``.root`` is ``out``).

    Example::

        onnx_set = ditq.export_onnx("recipe", "onnx", precision="fp16")
        onnx_set = ditq.export_onnx(recipe, "onnx", model=pipe)  # a recipe of an in-memory model
    """
    from ditq.artifacts.recipe import Recipe
    from ditq.export.onnx_export import DEFAULT_OPSET
    from ditq.export.onnx_export import export_onnx as run_export

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    loaded = model_of_recipe(recipe, model, load_kwargs)
    return run_export(loaded, recipe, Path(out), recipe_dir=recipe.root, opset=opset or DEFAULT_OPSET,
                      precision=precision, force=force, progress=progress)


def build_engines(onnx_set: OnnxArtifact | str | Path, out: str | Path, *, config: Any = None,
                  force: bool = False, progress: bool = False) -> EngineArtifact:
    """Build one TensorRT engine per timestep group (``ditq build``); needs ``tensorrt`` and an NVIDIA GPU.

    Args:
        onnx_set: an ``OnnxArtifact`` (from ``export_onnx``) or an ONNX directory.
        out: the engine directory to write.
        config: a ``ditq.engines.build.BuildConfig`` (batch profile, workspace, optimisation level).
        force: replace an existing engine directory.
        progress: show a progress bar.

    Returns:
        The ``EngineArtifact``.

    Example::

        engines = ditq.build_engines("onnx", "engines")
        pipe.transformer = ditq.QuantizedTransformer.from_pretrained("engines", backend="tensorrt")
    """
    from dataclasses import replace

    from ditq.artifacts.onnx import OnnxArtifact
    from ditq.engines.build import BuildConfig
    from ditq.engines.build import build_engines as run_build

    art = onnx_set if isinstance(onnx_set, OnnxArtifact) else OnnxArtifact.load(Path(onnx_set))
    config = replace(config or BuildConfig(), force=force or (config.force if config else False))
    return run_build(art, Path(out), config, progress=progress)


class Sampler:
    """A grouped backend opened on an artifact, ready to sample (``ditq.sample`` in two steps: the CLI checks
    its flags against the opened artifact between them)."""

    def __init__(self, artifact: str | Path, *, backend: str = "onnxruntime", scheduler: str | None = None,
                 scheduler_config: Any = None, fp: bool = False, threads: int | None = None,
                 exact_qdq: bool | None = None) -> None:
        from ditq.core.sampler import make_scheduler
        from ditq.runtime.backends import open_backend

        self.backend, self.info = open_backend(Path(artifact), backend, fp=fp, threads=threads,
                                               fuse=None if exact_qdq is None else not exact_qdq,
                                               scheduler=scheduler_config)
        self.scheduler = make_scheduler(self.info["scheduler_config"], scheduler)
        self.conditioning = self.info["conditioning"]

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def __call__(self, rows: Sequence[int], *, steps: int = 50, cfg_scale: float = 3.0, seed: int = 0
                 ) -> torch.Tensor:
        from ditq.core.sampler import sample as run_sampler

        if not 1 <= steps <= self.num_train_timesteps:
            raise DitqError(f"steps must lie in [1, {self.num_train_timesteps}] (the model's training timesteps), "
                            f"got {steps}")
        return run_sampler(self.backend, self.scheduler, self.conditioning.cond(list(rows)), steps=steps,
                           cfg_scale=cfg_scale, null_cond=self.conditioning.null(),
                           sample_shape=tuple(self.info["sample_shape"]), seed=seed)


def sample(artifact: str | Path, classes_or_prompt_rows: Sequence[int], *, steps: int = 50,
           backend: str = "onnxruntime", cfg_scale: float = 3.0, seed: int = 0, scheduler: str | None = None,
           scheduler_config: Any = None, fp: bool = False, threads: int | None = None,
           exact_qdq: bool | None = None) -> torch.Tensor:
    """Sample with a quantized artifact and ditq's grouped sampler (``ditq sample``, without the PNG).

    Args:
        artifact: an ONNX set (``backend="onnxruntime"``), an engine set (``"tensorrt"``) or a recipe / ONNX set
            (``"torch"``: fake quantization).
        classes_or_prompt_rows: class labels (DiT) or rows of the artifact's caption table (PixArt).
        steps: sampler steps.
        backend: ``"onnxruntime"``, ``"tensorrt"`` or ``"torch"``.
        cfg_scale: classifier-free guidance scale.
        seed: the noise seed (the same seed gives the same noise as an FP run).
        scheduler: swap the sampler class (``ddpm``, ``ddim``, ``dpmsolver``); the training schedule stays.
        scheduler_config: a scheduler (config) to sample with; its training schedule must be the artifact's.
        fp: run the unquantized reference graph instead.
        threads: ONNX Runtime intra-op threads.
        exact_qdq: ONNX Runtime exact Q/DQ (True) or fused integer kernels (False); None: ditq's default.

    Returns:
        The final samples (latents for latent models), a float tensor [B, C, H, W].

    Example::

        images = ditq.sample("onnx", [3, 7], steps=50)
    """
    return Sampler(artifact, backend=backend, scheduler=scheduler, scheduler_config=scheduler_config, fp=fp,
                   threads=threads, exact_qdq=exact_qdq)(classes_or_prompt_rows, steps=steps, cfg_scale=cfg_scale,
                                                         seed=seed)


def validate(onnx_dir: OnnxArtifact | str | Path, out: str | Path | None = None, *, model: ModelLike = None,
             steps: int = 50, thresholds: Mapping[str, Any] | None = None, trt: str | Path | None = None,
             force: bool = False, **load_kwargs: Any) -> dict[str, Any]:
    """Compare every group's QDQ graph with the FP model on its own sampling trajectory (``ditq validate``).

    Args:
        onnx_dir: the ONNX set (a directory or an ``OnnxArtifact``).
        out: the report directory (default ``onnx_dir/validation``, replaced on every run).
        model: the model, where it cannot be loaded from the source the set records (an in-memory model).
        steps: sampler steps of the validation trajectory.
        thresholds: per graph name (``onnxrt-fp``, ``onnxrt-qdq``), a ``ditq.validation.compare.Thresholds``
            replacing the default gate.
        trt: an engine directory to compare too (needs TensorRT).
        force: replace an existing ``out``.
        load_kwargs: passed to diffusers' ``from_pretrained`` when the model is loaded from a hub id.

    Returns:
        The report dict (``report["passed"]``, per-group metrics); ``validation.json`` is written in ``out``.

    Example::

        report = ditq.validate("onnx")
        assert report["passed"], ditq.validate_failures(report)
    """
    from ditq.artifacts.onnx import OnnxArtifact
    from ditq.artifacts.outputs import check_output, staging_dir
    from ditq.validation.run import ValidateConfig, default_thresholds
    from ditq.validation.run import validate as run_validate

    kind = "ditq.validation"
    art = onnx_dir if isinstance(onnx_dir, OnnxArtifact) else OnnxArtifact.load(Path(onnx_dir))
    recipe = art.load_parent_recipe()  # None when the recipe is gone: the set is validated alone
    target = Path(out) if out is not None else art.root / "validation"
    force = force or out is None  # the default report directory is validate's own
    inputs = [p for p in (art.root, trt) if p]
    check_output(target, kind=kind, force=force, inputs=inputs)
    gates = {**default_thresholds(art.precision), **dict(thresholds or {})}
    loaded = _model_of_artifact(art, recipe, model, load_kwargs)
    engines = None
    if trt:  # fail before the ONNX validation if the engines cannot run here or come from another set
        from ditq.validation.trt import open_engines

        engines = open_engines(Path(trt), art)
    with staging_dir(target, kind=kind, force=force, inputs=inputs) as tmp:
        report = run_validate(art, loaded, recipe, tmp, ValidateConfig(steps=steps, thresholds=gates))
        if engines is not None:
            from ditq.validation.trt import validate_trt

            report = validate_trt(engines, art, report, tmp, gates["onnxrt-qdq"])
    return report


def validate_failures(report: Mapping[str, Any], flags: Mapping[tuple[str, str], str] | None = None) -> str:
    """One line naming every failed gate of a ``validate`` report ("" when it passed); ``flags`` maps a gate
    ``(graph, metric)`` to the CLI flag that sets its floor, named in the line."""
    from ditq.validation.run import failure_lines

    return "; ".join(f"group {g['group']}: {', '.join(failure_lines(g, dict(flags) if flags else None))}"
                     for g in report["groups"] if not g["passed"])


# -- models ----------------------------------------------------------------------------------------------------

def _is_pipeline(obj: Any) -> bool:
    return hasattr(obj, "transformer") and hasattr(obj, "scheduler") and hasattr(obj, "components")


def _is_transformer(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module) and not _is_pipeline(obj)


def _load_for_calibration(model: ModelLike, *, prompts: Any, scheduler: Any, captions: Any,
                          load_kwargs: dict[str, Any]) -> tuple[LoadedModel, Any, str]:
    """(the LoadedModel, what a user forward_loop receives, how the model is found again)."""
    from ditq.models.loading import LoadedModel, load_model

    if isinstance(model, LoadedModel):  # what ``load_model`` returns (the CLI loads it to check its flags first)
        return model, model.transformer, DIRECTORY
    if isinstance(model, (str, Path)):
        local = Path(str(model)).expanduser()
        if str(model) == "demo" or (local.is_dir() and not (prompts and (local / "model_index.json").is_file())):
            if captions is not None:
                raise DitqError(f"a model directory brings its own caption table: put it in {model} as "
                                "captions.safetensors (ditq.models.save_caption_table) instead of captions=")
            loaded = load_model(model, scheduler=scheduler)
            return loaded, loaded.transformer, DIRECTORY
        model, loader = _from_pretrained(str(model), load_kwargs)
        if loader == TRANSFORMER:
            return _from_memory(model, scheduler, prompts, captions, loader)
        return _from_memory(model, scheduler, prompts, captions, PIPELINE)
    if _is_pipeline(model):
        return _from_memory(model, scheduler, prompts, captions, PIPELINE)
    if _is_transformer(model):
        return _from_memory(model, scheduler, prompts, captions, TRANSFORMER)
    raise DitqError(f"cannot calibrate a {type(model).__name__}; pass a diffusers DiT/PixArt pipeline, its "
                    "transformer, a model directory or a hub id")


def _from_memory(obj: Any, scheduler: Any, prompts: Any, captions: Any, loader: str
                 ) -> tuple[LoadedModel, Any, str]:
    from ditq.models.conditioning import pipeline_caption_table
    from ditq.models.loading import model_kind
    from ditq.models.memory import from_transformer, source_of

    pipe = obj if _is_pipeline(obj) else None
    transformer = pipe.transformer if pipe is not None else obj
    kind = model_kind(transformer)
    table = _captions(captions) if captions is not None else None
    if kind == "pixart" and table is None and prompts:
        if pipe is None:
            raise DitqError("prompts need the pipeline's text encoder: pass the PixArt pipeline, or a caption table "
                            "as captions=")
        table = pipeline_caption_table(pipe, [str(p) for p in prompts])
    sched = scheduler if scheduler is not None else getattr(pipe, "scheduler", None)
    source = source_of(pipe if pipe is not None else transformer)
    return from_transformer(transformer, sched, captions=table, source=source), obj, loader


def _captions(captions: Any) -> Conditioning:
    from ditq.artifacts.captions import Conditioning, load_caption_table

    if isinstance(captions, Conditioning):
        return captions
    if isinstance(captions, (str, Path)):
        return load_caption_table(Path(captions))
    if isinstance(captions, Mapping):
        return Conditioning.captions(captions)
    raise DitqError(f"captions must be a caption table file, a mapping of tensors or a Conditioning, got "
                    f"{type(captions).__name__}")


def _from_pretrained(name: str, load_kwargs: dict[str, Any]) -> tuple[Any, str]:
    """A hub id (or a pipeline directory) as diffusers loads it: the pipeline, else the bare transformer."""
    import diffusers

    try:
        return diffusers.DiffusionPipeline.from_pretrained(name, **load_kwargs), PIPELINE
    except Exception as err:  # no model_index.json (a bare transformer repo), or nothing there at all
        first = err
    try:
        return _transformer_from_pretrained(name, None, load_kwargs), TRANSFORMER
    except DitqError:
        raise
    except Exception:
        raise DitqError(f"could not load {name!r} with diffusers (as a pipeline: "
                        f"{str(first).splitlines()[0] if str(first) else type(first).__name__}); pass a local "
                        "model directory, a diffusers DiT/PixArt pipeline or hub id") from first


def _transformer_from_pretrained(name: str, subfolder: str | None, load_kwargs: Mapping[str, Any],
                                 cls_name: str | None = None) -> Any:
    import diffusers

    from ditq.models.loading import SUPPORTED

    kw = {**load_kwargs, **({"subfolder": subfolder} if subfolder else {})}
    if cls_name is None:
        config = diffusers.DiTTransformer2DModel.load_config(name, **kw)
        cls_name = config.get("_class_name")
    if cls_name not in SUPPORTED:
        raise DitqError(f"{name} holds a {cls_name!r}; ditq supports {' and '.join(SUPPORTED)}")
    return getattr(diffusers, cls_name).from_pretrained(name, **kw).eval().float()


def model_of_recipe(recipe: Recipe, model: ModelLike, load_kwargs: Mapping[str, Any]) -> LoadedModel:
    """The model a recipe was calibrated on: ``model`` when given, else loaded again from the recorded source."""
    info = recipe.calibration
    return _reload(recipe.model_source, info.get("model_loader", DIRECTORY), info.get("model_class"),
                   recipe.scheduler_config, recipe.captions, model, load_kwargs, f"the recipe {recipe.root or ''}")


def _model_of_artifact(art: Any, recipe: Recipe | None, model: ModelLike, load_kwargs: Mapping[str, Any]
                       ) -> LoadedModel:
    from ditq.artifacts.captions import conditioning_from_info

    info = recipe.calibration if recipe is not None else {}
    captions = conditioning_from_info(art.model, art.root) if art.model.get("kind") == "pixart" else None
    return _reload(art.model["source"], info.get("model_loader", DIRECTORY), art.model.get("class"),
                   art.scheduler_config, captions, model, load_kwargs, f"the ONNX set {art.root}")


def _reload(source: str, loader: str, cls_name: str | None, scheduler_config: dict[str, Any] | None,
            captions: Conditioning | None, model: ModelLike, load_kwargs: Mapping[str, Any], what: str
            ) -> LoadedModel:
    from ditq.models.loading import load_model
    from ditq.models.memory import IN_MEMORY, from_transformer

    if model is None and loader == DIRECTORY:
        return load_model(source, expected_scheduler=scheduler_config, expected_as=what)
    if model is None and source == IN_MEMORY:
        raise DitqError(f"{what} was calibrated on an in-memory model; pass it again as model=")
    if isinstance(model, (str, Path)) and loader == DIRECTORY:
        return load_model(model, expected_scheduler=scheduler_config, expected_as=what)
    if model is None or isinstance(model, (str, Path)):
        name = str(model if model is not None else source)
        transformer = _transformer_from_pretrained(name, "transformer" if loader == PIPELINE else None,
                                                   load_kwargs, cls_name)
    else:
        transformer = model.transformer if _is_pipeline(model) else model
    if scheduler_config is None:
        raise DitqError(f"{what} records no scheduler; re-run calibrate")
    from ditq.models.schedule import check_schedule, scheduler_config_of

    if _is_pipeline(model):
        check_schedule(scheduler_config, scheduler_config_of(model.scheduler), recorded_as=what,
                       actual_as=f"the pipeline's {type(model.scheduler).__name__}")
    return from_transformer(transformer, scheduler_config, captions=captions, source=source)


def _dit_rows(target: Any, loaded: LoadedModel, prompts: Any) -> list[int] | None:
    """DiT ``prompts``: class ids, or label names through the pipeline's ``get_label_ids``."""
    if loaded.kind != "dit" or not prompts:
        return None
    if all(isinstance(p, int) for p in prompts):
        return [int(p) for p in prompts]
    if not hasattr(target, "get_label_ids"):
        raise DitqError("DiT prompts must be class ids (label names need a DiTPipeline with id2label)")
    try:
        return list(target.get_label_ids(list(prompts)))
    except (ValueError, AttributeError, TypeError) as err:
        raise DitqError(f"unknown DiT label in {list(prompts)[:4]}: {str(err).splitlines()[0]}") from err
