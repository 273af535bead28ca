"""HTG (DESIGN §3): timestep groups, per-group channel shifts, per-site smoothing with a searched alpha.

Groups (``groups="auto"``): the knee of the exact-DP cost curve; with static INT8 activations, raised to one group
per ``timesteps_per_group`` (16) calibration timesteps when the knee is above 1, so 6 groups at the default 100-step
calibration. The cost curve always falls with more groups; estimation (few calibration timesteps per group) is what
limits them. 3 -> 6 groups at the full protocol: step SQNR +0.2..+0.35 dB on three models at W8A8 and W4A8, PSNR
never lower (docs/static_levers.md §6.3). Per-token (``act="token"``) and FP8 activations gained no step SQNR from
them and keep the knee. DESIGN §3 has the knee alone.

Per site, the candidates are alpha in ``alphas`` (or no smoothing), each with the mid-range shift and, with
``shift_choice``, without it. ``alpha_criterion`` picks among them by what the model output sees:
- "auto" (default): "output" where its estimated cost (sites x candidates whole-model runs on the probes) is
  within ``site_probe.OUTPUT_CRITERION_BUDGET_MACS`` (about 15 minutes on one CPU core; every testbed of ditq's),
  else "fisher" (full-size models: DiT-XL/2 would take 112 x 28 whole-model runs); the choice is logged and
  recorded in the recipe (``calibration.method.alpha_criterion``).
- "output": per site, the best model-output SQNR on the calibration probes with only that site
  quantized (``site_probe.SiteScorer``; sites x candidates evaluations).
- "fisher": the same figure to first order (``site_probe.FisherScorer``): one forward and two backward passes per
  probe, then per candidate only the site's own weights and inputs (docs/fisher_criterion.md). Full protocol,
  3 seeds, against "output": step SQNR −0.15 dB (demo DiT) and −0.1 (patches DiT) at W8A8, −0.6 at W4A8; PSNR
  global −0.04 / −0.49 dB (demo, 100 / 25 steps), −1.4 / +0.3 (patches, 50 / 25), +0.3 / +0.4 (demo W4A8);
  calibration 8-14x faster.
- "global": one (shift on/off, alpha) for the whole model, the best output SQNR with every site quantized
  (2 x len(alphas) evaluations: 5-10x cheaper).
- "local": per site, the quantized Linear's own output error on the reservoir (the original criterion).
Demo DiT, mean of three calibration seeds, final-image PSNR global/mean (docs/quality_probe.md): W8A8 output
46.2/47.1, global 46.3/47.3, local 45.6/46.8; W4A8 output 32.0/33.3, global 31.6/32.7 (local 31.4/32.6, one
seed). The local error weighs every output channel alike and ignores what the rest of the network does with it.

``rotation`` (block size, a power of two; 0 off; default "auto": 64 with integer activations, 0 with FP8 ones):
static rotation, a TensorRT-static form of ViDiT-Q's online Hadamard. After the folded shift
and smoothing, each quantized input is rotated online by a block-diagonal Hadamard R, ``((x - z_g) / s) @ R``,
before one static per-tensor scale (weights quantized as ``W diag(s) R``, exact in float: R is orthogonal). The
candidates' scores, the weight clip search and GPTQ all see the rotated tensors. A rotated input's scale is the
amax of its group's reservoir rows (``rotation_ranges="reservoir"``; the default "auto" chooses between it and
exact ranges by sampling, see ``rotation_shift`` below): the per-channel statistics do not bound a
rotated tensor, and its exact amax over a second run of the calibration loop (``"exact"``) measured 0.5-0.7 dB
lower step SQNR, the near-Gaussian rotated tensor losing more to a coarser step than to clipping its rarest values.
A site whose channel count the block does not divide takes the largest power of two that does (1: unrotated;
logged). ``rotation_choice`` (default on) also tries every site unrotated under the alpha criterion: about half to
two thirds of the sites keep the rotation. Export: one FP ``MatMul`` per site (Reshape to rows of the block,
``MatMul(H_block)``, Reshape back) before each Linear's own Q/DQ pair. Measured with the full protocol (3 seeds,
paired with the unrotated 6-group grids; docs/static_rotation.md): W8A8 PSNR global +1.0 / +0.1 / +0.45 dB (demo,
100 / 50 / 25 steps), +1.64 dB (patches, 48 images), +0.99 dB (tiny PixArt), step SQNR +0.14..0.61 dB in every
row; W4A8 +0.03 / +0.34 (demo), +1.7 / +1.05 (patches). The older passes there (MSE clip search, 25 x 8
calibration) had read a loss. Costs: calibration about 1.7x as long; ONNX Runtime CPU latency +6-8 % for the sites
a short calibration rotated, +25-27 % with every site rotated (one thread, batch 16).

``rotation_signs`` (default on; ``rotation_seed`` 0): random channel signs d before the block-Hadamard,
``(((x - z_g) / s) * d) @ H``, QuaRot's randomized form, folded into the smoothing vector (the recipe stores
``s * d``), so the graph is unchanged. The plain Sylvester block's all-ones first column sums a common channel
offset into coordinate 0 of each block: fc2's shifted post-GELU input had 6-7.6x the median coordinate's range
there, and random signs halve its rotated amax (``scripts/probes/rotation_coherence.py``). With the signs the
criterion rotates fc2 everywhere and more sites overall. Full protocol, 3 seeds (docs/static_rotation.md, ninth
pass): step SQNR +0.2..0.65 dB in every row and for every sign draw tried (demo and patches DiTs); pooled PSNR
+0.6..0.9 dB at 25 steps on the demo DiT, +1.1 dB at 50 steps on the patches DiT, but −2.2..+0.6 dB over five
draws at 100 steps on the demo DiT, where a few trajectories drift with some draws (seed 0 among them).

``rotation_shift`` (default "rotated"): a rotated candidate's shift centres each coordinate of the rotated input,
``z_g = s * (c_g R^T)`` with ``c_g`` the mid-range of ``(x / s) R`` over the group's reservoir rows; "channel" takes
the channel mid-range of x, as unrotated candidates do. After a channel shift, an offset common to the tokens
(fc2's post-GELU bulk sits near the bottom of its range) is summed into every rotated coordinate, and the static
scale must cover it; the criterion had kept fc2 unshifted for that reason. Locally (``scripts/probes/token_gap.py``)
+6.9 dB on fc2, +1.1-1.6 dB on fc1 / to_q; full protocol (3 seeds; docs/static_rotation.md, tenth pass): step SQNR
+0.5-0.8 dB in every row on the demo and patches DiTs, PSNR mean +0.3..0.7 dB in four rows of six, pooled PSNR a
tie except the demo DiT at 100 steps (−1.9 dB with 48 images), where a few trajectories drift. That drift is the
reservoir ranges' clipping: ``rotation_ranges="exact"`` removes it there (+4.4 dB) and loses 0.5-2.3 dB elsewhere.
Widening one group's ranges at a time (``scripts/probes/drift_groups.py``) puts the drift in the middle groups
(t = 116-475): a clipping error keeps its sign over the many consecutive steps a group serves, and builds up along
the trajectory where rounding noise averages out. ``rotation_ranges="exact_but_final"`` takes the exact amax in
every group but group 0, whose error reaches the image directly: +5.4 dB pooled / +1.3 dB per-image PSNR on the
demo DiT at 100 steps, but −0.1..−1.7 / −0.2..−1.8 dB in the other rows (patches DiT, tiny PixArt, demo at 25
steps; docs/static_rotation.md, eleventh pass). No per-layer statistic predicted which models drift: a rule
weighing each range's clipping as building up over the steps a group serves fixed the demo but cost 1-2 dB on the
patches DiT (twelfth pass, ``scripts/probes/range_rules.py``). So the default, ``rotation_ranges="auto"``, decides
end to end: calibrate samples its own trajectories (its conditions, steps, CFG and noise) with both recipes,
fake-quantized, and keeps the one whose samples are closer to FP (mean per-sample PSNR; recorded in the recipe).
It picked the evaluation's winner on 7 of 8 (model, seed) pairs (demo DiT 3/3 exact-but-final, patches DiT 3/3
reservoir, tiny PixArt 1/2, where the miss cost 0.2 dB): against the reservoir, pooled PSNR +2.0..+8.0 dB at 100
steps on the demo DiT, −1.0..+0.6 at 25, unchanged on the patches DiT. Cost: the second calibration run and two
fake-quantized samplings of the calibration set (its FP samples come from that run): the demo DiT's calibration
takes 75 s instead of 58 s on an idle 2-core Xeon. With one group, no rotated static site, or a custom forward
loop (nothing to sample), it is the reservoir.

``invariant_dither`` (default on): a static input that the calibration saw identical at every timestep (ditq's
test is exact equality of its per-timestep channel ranges; in practice PixArt's caption key/value input, which is
the same caption embedding at every step) is rounded the same way at every step of a trajectory, so its error does
not average out over the steps: it builds up coherently. On the tiny PixArt (100 steps, calibration seed 1),
leaving only those Linears in float gains +4.7 dB pooled PSNR for +0.2 dB of step SQNR, more than leaving fc1 or
all of self-attention in float (``scripts/probes/fp_fallback.py``). Each group's shift is free (folded into the
bias), so each group rounds the input differently: ``z_g += s * (d_g R)`` with ``d_g`` uniform in [-step/2,
step/2) per coordinate (seeded by ``dither_seed``), the group's scale widened by 128/127 so that nothing new
clips. The groups' errors are then independent and add in power. One draw of one dither for every group is a
lottery (pooled PSNR 48.5-54.6 dB over four draws); a draw per group gave 54.4-55.7 against 51.5 undithered
(``scripts/probes/group_dither.py``). Class-conditioned DiTs have no such input and are unchanged.

``act="token"``: not a static recipe. The same groups, folded shifts, smoothing and GPTQ weights, but every input
is quantized per token at run time (the criterion scores the candidates that way). The export writes TensorRT's
explicit form: a constant-scale Q/DQ on ``x / s_token`` and the GEMM rows times ``s_token``, with one ReduceMax
per GEMM input at run time. Against ViDiT-Q (docs/bench_quality/README.md, per-token section; W8A8, 3 seeds,
PSNR global / mean, paired 95 % intervals): demo DiT +0.88 / +0.76 dB at 100 steps (intervals above 0), +0.28 /
+0.48 at 25; patches DiT a tie (−0.55 / +0.34 at 50 steps, intervals spanning 0); step SQNR +0.9..1.1 dB on both.
Those figures are without rotation; the default rotation adds +1.0 / +1.9 dB PSNR global and +1.85 dB step SQNR on
the demo DiT (100 / 25 steps; docs/static_rotation.md). With the random signs and the rotated shift, against
ViDiT-Q with the same signs: +0.94 / +1.14 dB global, +1.02 / +1.09 mean (demo DiT, 100 / 25 steps, intervals
above 0; docs/bench_quality/README.md, tenth pass).

Activation scales: each group's calibration amax (``act_clip_search=False``, the default since issue 13's fourth
pass). The MSE clip search (``act_clip_search=True``) picks, per site and group, the clip with the least relative
output error of the site's Linears on the reservoir rows; that fits the bulk of the tokens and clips the rare large
inputs (our reading: a few trajectories depend on them, and the pooled PSNR gains most). Probe (25 steps,
calibration 25 x 8; docs/act_clip.md), W8A8, amax minus searched clip, PSNR global / mean: demo DiT +2.0 / +1.5 dB
(3 seeds), patches DiT +2.9 / +1.6 dB (2 seeds); W4A8 (weight error dominates) +0.1 / +0.05 dB; FP8 +0.3 / +0.2
dB. Full protocol (100 x 16, 3 seeds): +0.6 to +2.2 dB global. Letting the per-site criterion choose between the
two (tried, not kept) picks the clip where one site's output SQNR likes it and loses 1-3.6 dB end to end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from ditq.artifacts.recipe import LinearSpec
from ditq.calibration.groups import Grouping, SiteRange, group_timesteps
from ditq.calibration.methods.base import (
    Context,
    MethodConfig,
    Solution,
    act_scales_for,
    check_rotation,
    folded_group_inputs,
    pooled_range,
    register_method,
    site_rotations,
)
from ditq.calibration.methods.site_probe import FisherScorer, SiteScorer, auto_criterion
from ditq.calibration.methods.smoothquant import smoothing_scale
from ditq.core.quantizers import rotate, rotation_signs
from ditq.core.sites import Site
from ditq.errors import DitqError

log = logging.getLogger(__name__)
# rotation="auto" with integer activations (static or per token): the block-Hadamard size (channel counts not
# divisible by it take their largest power-of-two divisor)
ROTATION_AUTO = 64
# a rotated input's static range: its group's reservoir rows, the exact amax over a second calibration run, the
# exact amax in every group but the one that ends sampling, or whichever of the first and the last samples the
# calibration trajectories closer to FP (see HTGConfig.rotation_ranges)
RANGE_MODES = ("reservoir", "exact", "exact_but_final", "auto")
# the criterion's probes (calibration calls x rows) where the configured ones would take the "auto" criterion over
# the output criterion's budget: the set every criterion was measured with before issue 13's fourteenth pass
SMALL_PROBES = (6, 8)


@register_method("htg")
@dataclass(frozen=True)
class HTGConfig(MethodConfig):
    needs_model: ClassVar[bool] = True  # "global"/"output" run the model on the calibration probes

    groups: int | str = "auto"  # an int, or "auto": the knee of the optimal-cost curve, raised by timesteps_per_group
    max_groups: int = 8
    # "auto" with static INT activations takes at least one group per this many calibration timesteps (up to
    # max_groups; 0: the knee alone). The cost curve always falls with more groups; what limits them is how well each
    # group's ranges are estimated. With the default 100-step calibration this gives 6 groups where the knee gave 3:
    # +0.3 dB step SQNR and +0.3 to +0.9 dB PSNR on the demo and patches DiTs (docs/static_levers.md §6.3); with 25
    # calibration steps 6 groups lost (docs/static_levers.md §3), and the rule keeps the knee there. act="token" and
    # FP8 keep the knee: 6 groups gained them no step SQNR (+0.02, +0.03 dB on the demo)
    timesteps_per_group: int = 16
    grouping: str = "dp"  # "dp" (exact) or "greedy" (agglomerative merge)
    group_window: int = 1  # odd: the grouping cost sees per-timestep channel ranges as a moving median over this many
    alphas: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    # False: each group's activation scale is the calibration amax (no clipping). The MSE clip search (True) fits the
    # reservoir's bulk and clips its rare large inputs: -2.0 / -1.5 dB PSNR global / mean on the demo DiT, -2.9 /
    # -1.6 dB on the patches DiT at W8A8 in the probe (neutral at W4A8); see the module docstring
    act_clip_search: bool = False
    explicit_shift: bool = True  # shift/scale sites without a linear producer (fc2) with an explicit Sub/Mul
    table_scale: bool = True  # PixArt adaLN-single sites: smooth with an explicit Mul (their shift is free anyway)
    # "auto" (default): "output" where its estimated cost fits site_probe.OUTPUT_CRITERION_BUDGET_MACS, else "fisher";
    # "output" | "fisher" (per site) | "global" | "local": see the module docstring
    alpha_criterion: str = "auto"
    shift_choice: bool = True  # also try each site without its mid-range shift (same criterion)
    # "output" criterion: after each site's choice with only that site quantized, this many sweeps of coordinate
    # descent re-choose every site (in model order) with every other site quantized as chosen so far, by the
    # output SQNR of the whole quantized model on the same probes (sites x candidates more runs per sweep)
    joint_sweeps: int = 0
    # the criterion's probes: calibration calls (spread over the trajectory) and rows of each. 12 x 16 (4x the
    # earlier 6 x 8) chose steadier recipes: PSNR global +0.82 / +0.32 dB (demo DiT, 100 / 25 steps), +0.63 (tiny
    # PixArt, 100 steps, before invariant_dither; with it, -0.38 dB there), seed spread 0.2 dB where it was 1.1-2.8
    # (3 seeds each; docs/bench_quality/README.md, fourteenth pass); -0.33 dB on the patches DiT, a tie (fifteenth
    # pass). With alpha_criterion "auto", a model whose output criterion would exceed its budget with them takes
    # SMALL_PROBES instead (full-size models)
    probe_timesteps: int = 12
    probe_batch: int = 16
    # online block-Hadamard size before each activation quantizer (0: none; "auto": ROTATION_AUTO with integer
    # activations, static or per token; 0 with FP8, which has no rotated form in ditq); see the module docstring
    rotation: int | str = "auto"
    rotation_choice: bool = True  # also try each site unrotated (same criterion as alpha)
    # random channel signs before the block-Hadamard (a randomized Hadamard, folded into the smoothing vector, so
    # no extra op): a plain Sylvester block piles a common channel offset into its coordinate 0 (fc2's shifted
    # post-GELU input: 7x the median coordinate's range on the demo DiT); see the module docstring
    rotation_signs: bool = True
    rotation_seed: int = 0  # seed of those signs
    # a rotated site's shift: "rotated" centres every coordinate of the rotated input, z_g = s (c_g R^T) with c_g
    # the mid-range of (x / s) R over the group's reservoir rows (exact: the shift folds like any other); "channel":
    # the channel mid-range of x, as unrotated sites. A channel-centred input still carries a common offset (fc2's
    # post-GELU bulk sits at one end of its range), which the rotation adds into every coordinate; see the module
    # docstring
    rotation_shift: str = "rotated"
    # a rotated input's static scale: the amax of the group's "reservoir" rows (the sampled rows the searches use;
    # it clips the rarest large values of the near-Gaussian rotated tensor) or its "exact" amax over a second run
    # of the calibration loop, which measured 0.5-0.7 dB lower step SQNR (docs/static_rotation.md); with the
    # rotated shift, "exact" stops the demo DiT's 100-step drift but costs 0.5-2.3 dB PSNR elsewhere (tenth pass).
    # "exact_but_final": exact in every group but group 0 (t = 0's, whose error has no later steps to build up in);
    # the demo's drift comes from the middle groups' clipping, and this mode beats "exact" in 14 of 16 seed-rows,
    # but it loses 0.1-1.8 dB to the reservoir on the patches DiT and the tiny PixArt (eleventh pass). "auto"
    # (default): "reservoir" or "exact_but_final", whichever samples the calibration's own trajectories closer to FP
    # (twelfth pass; see the module docstring)
    rotation_ranges: str = "auto"
    # a static input the calibration saw identical at every timestep (PixArt's caption key/value input) is rounded
    # the same way at every step, and its error builds up over the trajectory coherently: with this on, each group's
    # (free, folded) shift adds its own uniform dither of one quantization step per channel, so the groups' errors
    # are independent and add in power (the scale widens by 128/127 so nothing new clips; see the module docstring)
    invariant_dither: bool = True
    dither_seed: int = 0
    # "static" (per tensor, per group: the TensorRT-static recipe) or "token": the same groups, shifts, smoothing and
    # weights with activations quantized per token at run time (exported as constant-scale Q/DQ around a row
    # rescale, TensorRT's explicit form; a ReduceMax per GEMM input at run time); see the module docstring
    act: str = "static"

    def __post_init__(self) -> None:
        if self.groups != "auto" and not (isinstance(self.groups, int) and self.groups >= 1):
            raise DitqError(f"--groups must be a positive integer or 'auto', got {self.groups!r}")
        if self.grouping not in ("dp", "greedy"):
            raise DitqError(f"grouping must be 'dp' or 'greedy', got {self.grouping!r}")
        if any(not 0.0 < a < 1.0 for a in self.alphas):
            raise DitqError(f"alphas must lie in (0, 1), got {self.alphas}")
        if self.group_window < 1 or self.group_window % 2 == 0:
            raise DitqError(f"group_window must be an odd number >= 1 of calibration timesteps, got "
                            f"{self.group_window}")
        if self.alpha_criterion not in ("auto", "output", "fisher", "global", "local"):
            raise DitqError(f"alpha_criterion must be 'auto', 'output', 'fisher', 'global' or 'local', got "
                            f"{self.alpha_criterion!r}")
        if self.timesteps_per_group < 0 or self.max_groups < 1:
            raise DitqError(f"timesteps_per_group must be >= 0 and max_groups >= 1, got {self.timesteps_per_group}, "
                            f"{self.max_groups}")
        if self.joint_sweeps < 0:
            raise DitqError(f"htg joint_sweeps must be >= 0, got {self.joint_sweeps}")
        if self.probe_timesteps < 1 or self.probe_batch < 1:
            raise DitqError(f"probe_timesteps and probe_batch must be >= 1, got {self.probe_timesteps}, "
                            f"{self.probe_batch}")
        if self.rotation != "auto":
            if not isinstance(self.rotation, int) or isinstance(self.rotation, bool):
                raise DitqError(f"htg rotation must be 'auto' or a block size (0: off), got {self.rotation!r}")
            check_rotation("htg", self.rotation)
        if self.act not in ("static", "token"):
            raise DitqError(f"htg act must be 'static' or 'token', got {self.act!r}")
        if self.rotation_shift not in ("rotated", "channel"):
            raise DitqError(f"htg rotation_shift must be 'rotated' or 'channel', got {self.rotation_shift!r}")
        if self.rotation_ranges not in RANGE_MODES:
            raise DitqError(f"htg rotation_ranges must be one of {', '.join(map(repr, RANGE_MODES))}, got "
                            f"{self.rotation_ranges!r}")

    def rotation_for(self, fmt: str) -> int:
        """The rotation block this config uses on a calibration of quantizer format ``fmt``."""
        if self.rotation != "auto":
            return int(self.rotation)
        return ROTATION_AUTO if fmt == "int" else 0

    def solve(self, ctx: Context) -> Solution:
        token = self.act == "token"
        if token and ctx.fmt != "int":
            raise DitqError(f"htg act='token' quantizes activations per token at run time, which has no {ctx.fmt} "
                            "form in ditq; use --format int, or act='static' for FP8")
        if token and (self.alpha_criterion == "local" or ctx.transformer is None or not ctx.probes):
            raise DitqError("htg act='token' chooses its options by the model output (alpha_criterion 'auto', "
                            "'output', 'fisher' or 'global', with the model's recorded calls); the local criterion "
                            "models static scales")
        rotation = self.rotation_for(ctx.fmt)
        blocks = site_rotations(ctx, rotation)
        # more groups pay where each group's static INT8 activation scale gets finer; per-token scales (act="token")
        # and FP8's logarithmic grid measured no step-SQNR gain from them, so those keep the knee (fewer engines)
        dense = bool(self.timesteps_per_group) and not token and ctx.fmt == "int"
        ranges = [SiteRange(ctx.stats[s.name].ch_max.numpy(), ctx.stats[s.name].ch_min.numpy(),
                            max(ctx.stats[s.name].power, 1e-12)) for s in ctx.sites]
        grouping = group_timesteps(
            ctx.timesteps, ranges, self.groups if self.groups == "auto" else int(self.groups),
            num_train_timesteps=ctx.num_train_timesteps, bits=ctx.a_bits,
            max_groups=min(self.max_groups, len(ctx.timesteps)), method=self.grouping,  # type: ignore[arg-type]
            window=self.group_window,
            min_groups=max(1, len(ctx.timesteps) // self.timesteps_per_group) if dense else 1,
        )
        use_model = self.alpha_criterion != "local" and ctx.transformer is not None and bool(ctx.probes)
        if self.alpha_criterion != "local" and not use_model:
            log.warning("htg: no recorded model calls to score alphas end to end (a custom forward loop that "
                        "does not pass timestep= by keyword?); using the local criterion")
        # per site: (shifted, alpha, rotation) -> (shifts [G, C], smooth [C], act scales [G], local error). The
        # local error (a clip search per candidate and group) is only needed by the local criterion and the clip
        # search itself: the model-output criteria skip it (on DiT-XL/2 it was most of the calibration time)
        search = not token and (not use_model or self.act_clip_search)
        options = {site.name: self._candidates(ctx, site, grouping, blocks[site.name], search=search)
                   for site in ctx.sites}
        criterion = self.alpha_criterion if use_model else "local"
        probes = (self.probe_timesteps, self.probe_batch)
        if criterion == "auto":  # the configured probes, else SMALL_PROBES, for the output criterion; else Fisher's
            small = (min(probes[0], SMALL_PROBES[0]), min(probes[1], SMALL_PROBES[1]))
            criterion, probes = auto_criterion(ctx, sum(map(len, options.values())), probes, small)
        scorer: SiteScorer | FisherScorer | None = None
        joint_trace: list[float] = []  # whole-model output SQNR on the probes before and after each joint sweep
        if criterion in ("output", "global"):
            scorer = SiteScorer(ctx, grouping, n_timesteps=probes[0], batch=probes[1],
                                per_token=token, keep_modules=criterion == "output" and self.joint_sweeps > 0)
        elif criterion == "fisher":
            scorer = FisherScorer(ctx, grouping, n_timesteps=probes[0], batch=probes[1], per_token=token)
        if scorer is None:
            chosen = {name: min(opts, key=lambda k: opts[k][3]) for name, opts in options.items()}
        elif isinstance(scorer, FisherScorer):
            scores = scorer.scores({name: {k: (*opts[k][:3], k[2]) for k in opts} for name, opts in options.items()})
            chosen = {name: max(by_key, key=by_key.__getitem__) for name, by_key in scores.items()}
        elif criterion == "output":
            from tqdm.auto import tqdm

            chosen = {}
            for site in tqdm(ctx.sites, desc="htg output criterion", disable=not ctx.progress, leave=False):
                opts = options[site.name]
                chosen[site.name] = max(opts, key=lambda k: scorer.score(site, *opts[k][:3], rotation=k[2]))
            if self.joint_sweeps:
                chosen = self._joint_sweeps(ctx, scorer, options, chosen, joint_trace)
        else:  # "global": one (shift on/off, alpha, rotation on/off) for the model, by the output SQNR, all quantized
            rots = [True, False] if rotation and self.rotation_choice else [bool(rotation)]
            alphas = self.alphas or (None,)  # no alphas: rotation (or nothing) in place of smoothing
            keys = [(sh, al, r) for sh in ([True, False] if self.shift_choice else [True]) for al in alphas
                    for r in rots]
            score = {}
            for key in keys:
                picks = {name: _nearest(opts, key, blocks[name]) for name, opts in options.items()}
                score[key] = scorer.score_all({name: options[name][k][:3] for name, k in picks.items()},
                                              {name: k[2] for name, k in picks.items()})
            best = max(score, key=score.__getitem__)
            chosen = {name: _nearest(opts, best, blocks[name]) for name, opts in options.items()}
        if self.joint_sweeps and criterion != "output":
            log.warning("htg: joint_sweeps needs the 'output' criterion (this calibration uses %r); no sweep run",
                        criterion)
        shifts, smooth, scales, alphas = {}, {}, {}, {}
        specs: dict[str, LinearSpec] = {}
        for site in ctx.sites:
            name, key = site.name, chosen[site.name]
            shifts[name], smooth[name], scales[name], _ = options[name][key]
            alphas[name] = key[1]
            if key[2] or token:
                base = replace(ctx.default_spec(site), rotation=key[2], act="dynamic_token" if token else "static")
                specs.update({lin: base for lin in site.linears})
        dithered = self._dither(ctx, chosen, shifts, smooth, scales) if (
            self.invariant_dither and not token and ctx.fmt == "int" and len(grouping.segments) > 1) else []
        info: dict = {"alpha_criterion": criterion, "act": self.act}
        if scorer is not None:
            info["probes"] = list(probes)
        if dithered:
            info["dithered_sites"] = dithered
        if joint_trace:
            info["joint_sqnr_db"] = joint_trace
        if self.shift_choice:
            info["unshifted_sites"] = [name for name, key in chosen.items() if not key[0]]
        if rotation:
            info["rotated_sites"] = {name: key[2] for name, key in chosen.items() if key[2]}
        # "exact_but_final": group 0 holds t = 0 (the groups tile the timestep axis from 0 upwards); with one group
        # nothing is left to measure, and the second calibration run is skipped
        groups = (tuple(range(1, len(grouping.segments))) if self.rotation_ranges in ("exact_but_final", "auto")
                  else None)
        exact = (self.rotation_ranges != "reservoir" and groups != () and not token and not self.act_clip_search)
        return Solution(grouping, shifts, smooth, scales, alphas, info=info, linear_specs=specs,
                        exact_range_sites=tuple(name for name, key in chosen.items()
                                                if key[2] and exact and name not in dithered),
                        exact_range_groups=groups, exact_range_select=self.rotation_ranges == "auto")

    def _dither(self, ctx: Context, chosen: dict[str, Any], shifts: dict[str, torch.Tensor],
                smooth: dict[str, torch.Tensor], scales: dict[str, torch.Tensor]) -> list[str]:
        """Dither the timestep-invariant sites in place (``invariant_dither``); returns their names.

        A site is invariant when its calibration ranges are identical at every timestep. Group g's quantizer sees
        ``((x - z_g) / s) R``; with ``z_g += s * (d_g R)``, ``d_g = step_g * u_g``, ``u_g`` uniform in [-1/2, 1/2)
        per coordinate, it sees the same minus ``d_g`` (R is a symmetric orthogonal block-Hadamard: ``R R = I``).
        The shift folds into the bias, so the float model is unchanged."""
        gen = torch.Generator().manual_seed(self.dither_seed)
        done = []
        for site in ctx.sites:
            st = ctx.stats[site.name]
            if not (torch.equal(st.ch_max, st.ch_max[:1].expand_as(st.ch_max))
                    and torch.equal(st.ch_min, st.ch_min[:1].expand_as(st.ch_min))):
                continue
            name, rot = site.name, chosen[site.name][2]
            step = scales[name].double() * 128 / 127  # amax + step / 2 fits in 127.5 old steps < 127 new ones
            u = torch.rand(len(step), smooth[name].numel(), generator=gen, dtype=torch.float64) - 0.5
            shifts[name] = (shifts[name].double()
                            + smooth[name].double() * rotate(step[:, None] * u, rot)).to(shifts[name].dtype)
            scales[name] = step.to(scales[name].dtype)
            done.append(name)
        if done:
            log.info("htg: %d timestep-invariant site(s) dithered per group: %s", len(done), ", ".join(done[:4]))
        return done

    def _joint_sweeps(self, ctx: Context, scorer: SiteScorer, options: dict[str, dict[Any, Any]],
                      chosen: dict[str, Any], trace: list[float]) -> dict[str, Any]:
        """``joint_sweeps`` rounds of coordinate descent from ``chosen``: each site in turn takes the candidate with
        the best output SQNR of the model with every site quantized (the others as chosen so far). ``trace`` gets
        that SQNR before the first sweep and after each (it never falls: the current choice is a candidate)."""
        from tqdm.auto import tqdm

        def total(picks: dict[str, Any]) -> float:
            return scorer.score_all({n: options[n][k][:3] for n, k in picks.items()},
                                    {n: k[2] for n, k in picks.items()})

        chosen = dict(chosen)
        trace.append(round(total(chosen), 3))
        for sweep in range(self.joint_sweeps):
            changed = 0
            for site in tqdm(ctx.sites, desc=f"htg joint sweep {sweep + 1}", disable=not ctx.progress, leave=False):
                opts = options[site.name]
                scores = {key: total({**chosen, site.name: key}) for key in opts}
                best = max(scores, key=scores.__getitem__)
                changed += best != chosen[site.name]
                chosen[site.name] = best
            trace.append(round(scores[best], 3))
            log.info("htg: joint sweep %d changed %d of %d sites; whole-model output SQNR on the probes %.2f -> "
                     "%.2f dB", sweep + 1, changed, len(ctx.sites), trace[-2], trace[-1])
            if not changed:
                break
        return chosen

    def _candidates(self, ctx: Context, site: Site, grouping: Grouping, block: int = 0, *, search: bool = True
                    ) -> dict[tuple[bool, float | None, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]]:
        """Every (shifted, alpha, rotation) candidate of ``site`` (alpha None: no smoothing; rotation ``block`` or
        0, both with ``rotation_choice``) with its activation scales and local error; without ``shift_choice`` (or
        a zero mid-range) only the shifted ones. ``search=False``: amax scales, no clip search and no local error
        (per-token activations and the model-output criteria need neither)."""
        st = ctx.stats[site.name]
        n_groups = len(grouping.segments)
        bounds = [pooled_range(st, ctx.rows_of(grouping, g)) for g in range(n_groups)]
        mid = torch.stack([(hi + lo) / 2 for hi, lo in bounds])
        if not site.free_shift and not self.explicit_shift:
            mid = torch.zeros_like(mid)
        w = torch.cat(ctx.weights[site.name]).abs().amax(0)
        smoothable = site.free_scale or (self.explicit_shift if site.fold == "explicit" else self.table_scale)
        out = {}
        # FP8's grid is logarithmic: finest near 0, where the mid-range shift may move the bulk of a one-sided input
        # (post-GELU): FP8 always tries each site unshifted too, its local error measured absolutely
        fp8 = ctx.fmt == "fp8_e4m3"
        for shifted in ([True, False] if (self.shift_choice or fp8) and bool(mid.any()) else [True]):
            z = mid if shifted else torch.zeros_like(mid)
            a = torch.stack([torch.maximum(hi - z[g], z[g] - lo) for g, (hi, lo) in enumerate(bounds)]).amax(0)
            candidates: list[tuple[float | None, torch.Tensor]] = [(None, torch.ones_like(a))]
            if smoothable:
                candidates += [(al, smoothing_scale(a, w, al)) for al in self.alphas]
            # the signs ride on the smoothing vector: only where the site takes one
            signed = block and self.rotation_signs and smoothable
            signs = rotation_signs(a.numel(), self.rotation_seed) if signed else None
            for alpha, s in candidates:
                for rot in ([0, block] if block and self.rotation_choice else [block]):
                    # rotated with signs d: ((x - z) / (s d)) @ H = (((x - z) / s) * d) @ H, the randomized form
                    sr = s * signs if rot and signs is not None else s
                    zr = rotated_midrange(ctx, site, grouping, sr, rot) if (
                        rot and shifted and self.rotation_shift == "rotated") else z
                    sc, err = act_scales_for(ctx, site, grouping, zr, sr, search=search, absolute=fp8, rotation=rot)
                    if search and not self.act_clip_search:
                        sc, _ = act_scales_for(ctx, site, grouping, zr, sr, search=False, rotation=rot)
                    out[(shifted, alpha, rot)] = (zr, sr, sc, err)
        return out


def rotated_midrange(ctx: Context, site: Site, grouping: Grouping, smooth: torch.Tensor, block: int) -> torch.Tensor:
    """Per-group shifts [G, C] that centre each coordinate of the rotated input: ``((x - z_g) / s) R`` spans
    ``[-r, r]`` coordinate by coordinate over group g's reservoir rows, i.e. ``z_g = s * (c_g R^T)`` with ``c_g`` the
    mid-range of ``(x / s) R``. The block-Hadamard is symmetric (``R^T = R``)."""
    zero = torch.zeros(len(grouping.segments), smooth.numel())
    return torch.stack([centring_shift(rows, smooth, block)
                        for rows in folded_group_inputs(ctx, site, grouping, zero, smooth)]).float()


def centring_shift(rows: torch.Tensor, smooth: torch.Tensor, block: int) -> torch.Tensor:
    """The shift z [C] that centres ``((x - z) / s) R`` coordinate by coordinate over ``rows`` = ``x / s`` [n, C]."""
    u = rotate(rows.double(), block)
    return rotate(((u.amax(0) + u.amin(0)) / 2)[None], block)[0] * smooth.double()


def _nearest(options: dict[tuple[bool, float | None, int], Any], key: tuple[bool, float | None, bool | int],
             block: int) -> tuple[bool, float | None, int]:
    """``key`` (its rotation on/off as the site's ``block`` or 0) if the site has it, else its fallback: no
    smoothing (unsmoothable sites), shifted (no shift choice), unrotated (sites whose block is 0)."""
    for rot in (block if key[2] else 0, 0):
        for k in ((key[0], key[1], rot), (key[0], None, rot), (True, key[1], rot), (True, None, rot)):
            if k in options:
                return k
    raise AssertionError(f"no candidate for {key}")
