"""The folded model of one timestep group, fake-quantized as a recipe says: the numerical reference every backend
and export is checked against, and what calibration samples with when it compares candidate recipes end to end.
(The runtime's ``fake-quant`` backend serves these per group.)"""

from __future__ import annotations

import copy

from torch import nn

from ditq.artifacts.recipe import Recipe
from ditq.core.fold import PreAffine
from ditq.core.qlinear import QLinear
from ditq.core.sites import Denoiser, Site
from ditq.models.loading import LoadedModel, make_denoiser, quant_sites


def folded_transformer(model: LoadedModel, recipe: Recipe, group_id: int, *, corrected: bool = True
                       ) -> tuple[nn.Module, PreAffine, list[Site]]:
    """A copy of the transformer with group ``group_id``'s shifts and the recipe's smoothing folded in (exact),
    the explicit pre-affines still to apply, and the quantized sites. ``corrected``: with the group's bias
    corrections (they compensate the quantizers' mean error; without quantizers the fold alone is exact)."""
    sites = quant_sites(model.transformer)
    folded, pre = recipe.fold(model.transformer.state_dict(), sites, group_id, corrected=corrected)
    transformer = copy.deepcopy(model.transformer)
    transformer.load_state_dict(folded)
    return transformer, pre, sites


def group_denoiser(model: LoadedModel, recipe: Recipe, group_id: int, *, quantize: bool = True) -> Denoiser:
    """The model with group ``group_id``'s shifts and scales folded in, fake-quantized unless ``quantize=False``.

    Each Linear follows its recipe spec (weight bits and blocks, static or dynamic activations, rotation); with
    ``quantize=False`` only the exact re-parameterisations remain (folding and rotations).
    """
    transformer, pre, sites = folded_transformer(model, recipe, group_id, corrected=quantize)
    modules = dict(transformer.named_modules())
    for site in sites:
        for lin in site.linears:
            parent, _, attr = lin.rpartition(".")
            spec = recipe.linear_spec(lin)
            q = QLinear(
                modules[lin],  # type: ignore[arg-type]
                w_scale=recipe.w_scale(lin) if quantize else None,
                w_codes=recipe.weight_codes(lin, modules[lin].weight.detach()) if quantize else None,
                act_scale=float(recipe.act_scale(site.name, group_id)) if quantize and not spec.dynamic else None,
                pre=pre.get(site.name), w_bits=spec.w_bits, a_bits=spec.a_bits,
                dynamic_group=spec.a_group if quantize and spec.dynamic else None, rotation=spec.rotation,
                fmt=spec.fmt,
            )
            setattr(modules[parent], attr, q)
    return make_denoiser(transformer)
