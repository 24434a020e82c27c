"""SprintDynamicCFG: guidance scale as a function of sigma that skips the unconditional pass where
the scale is 1 (engines/guidance.py holds the math).

Three keyed hooks, so the patch composes with itself, other Sprint patches and core guidance nodes:
- PREDICT_NOISE wrapper: sets the guider's cfg to the scheduled scale for this call only. Every
  downstream hook (APG's pre-CFG, PerpNeg's and RescaleCFG's cfg function, CFGZeroStar's post-CFG,
  PerpNegGuider) then sees the scheduled scale as the run's cfg. At exactly 1.0 ComfyUI's own cfg1
  path leaves the uncond out of the batch (samplers.py sampling_function).
- CALC_COND_BATCH wrapper: where the uncond was left out, returns the cond result in both slots, so
  every mix downstream reproduces the conditional prediction (not cond*scale, not cond + APG(cond)).
  It also keeps core EasyCache from reusing a cache the returning uncond never filled.
- post-CFG function (only when rescale or thresholding is on): CFG rescale and dynamic
  thresholding of the guided x0, skipped where the scale is 1.
"""
import functools
import logging
import math

import comfy.model_sampling
import comfy.patcher_extension
from comfy_api.latest import io

from ..engines import guidance
from .common import check_inputs, send_event

log = logging.getLogger("sprint")
KEY = "sprint.dynamic_cfg"
STATS = "sprint_dynamic_cfg_stats"


def is_flow(model_sampling):
    return isinstance(model_sampling, comfy.model_sampling.CONST)


def resolve_schedule(settings, model_sampling):
    """The engine schedule for a model: the window is the sigma window intersected with the percent
    window (ComfyUI's timestep percentages), in noise-to-signal units; a ramp's open low end is
    taken at the model's sigma_min."""
    flow = is_flow(model_sampling)
    nsr = lambda s: guidance.noise_to_signal(float(s), flow)  # noqa: E731
    high = min(settings["sigma_high"] or default_sigma_high(flow),
               nsr(model_sampling.percent_to_sigma(settings["start_percent"])))
    low = max(settings["sigma_low"], nsr(model_sampling.percent_to_sigma(settings["end_percent"])))
    if settings["schedule"] in ("linear", "cosine"):    # ramps run in log sigma: finite ends on the model's range
        low = max(low, nsr(model_sampling.sigma_min))
        high = min(high, nsr(model_sampling.percent_to_sigma(RAMP_TOP_PERCENT)))
    if not low < high:
        raise ValueError(f"SprintDynamicCFG: the guidance window is empty: sigma ({settings['sigma_low']}, "
                         f"{settings['sigma_high']}] and percent [{settings['start_percent']}, {settings['end_percent']}] "
                         f"leave ({low:.4g}, {high:.4g}] on this model")
    return guidance.GuidanceSchedule(settings["schedule"], high, low, settings["strength_high"],
                                     settings["strength_mid"], settings["strength_low"])


RAMP_TOP_PERCENT = 0.001     # a flow model's sigma at t = 1 is an infinite noise-to-signal ratio


def default_sigma_high(flow):
    """The window's top when sigma_high is 0 (auto), from the model's own sampling type. EPS/V
    models: the interval of Kynkaanniemi et al. (5.42). Flow models (SD3, Flux, Qwen-Image, Wan,
    Lumina 2, HiDream) sample on shifted schedules that spend half their steps above t/(1-t) = 5.42,
    where they lay out the image: there the window is open at the top (guidance from the first step)
    and only the low-noise end (t <= 0.22) runs without the negative."""
    return math.inf if flow else guidance.INTERVAL_SIGMA_HIGH


class Schedule:
    """A node's settings and the engine schedule they resolve to on the model last sampled (once
    per model, not once per model call)."""

    def __init__(self, settings):
        self.settings, self.model_sampling, self.resolved = settings, None, None

    def on(self, model_sampling):
        if model_sampling is not self.model_sampling:
            self.model_sampling, self.resolved = model_sampling, resolve_schedule(self.settings, model_sampling)
        return self.resolved


def predict_noise_wrapper(schedule, executor, x, timestep, model_options, seed=None, **kwargs):
    guider = executor.class_obj
    cfg = getattr(guider, "cfg", None)
    if not isinstance(cfg, (int, float)):     # a guider without a single cfg (DualCFGGuider ...)
        return executor(x, timestep, model_options, seed, **kwargs)
    model_sampling = guider.model_patcher.get_model_object("model_sampling")
    # ComfyUI treats a step's sigma as one value for the batch (calc_cond_batch reads timestep[0]).
    sigma = guidance.noise_to_signal(float(timestep.reshape(-1)[0]), is_flow(model_sampling))
    guider.cfg = schedule.on(model_sampling).scale(cfg, sigma)
    stats = model_options.get("transformer_options", {}).get(STATS)
    if stats is not None and guider.cfg == 1.0 and not math.isclose(cfg, 1.0) \
            and not model_options.get("disable_cfg1_optimization", False):
        stats.skipped += 1
    try:
        return executor(x, timestep, model_options, seed, **kwargs)
    finally:
        guider.cfg = cfg


def easycache_computes_returning_conds(conds, model_options):
    """Core EasyCache caches one output per conditioning and, on a step it skips, applies them all: a
    negative prompt that returns after steps without it has no cache there (KeyError). Such a step
    is made to compute: its accumulated change is set past any threshold (EasyCache resets it)."""
    holder = model_options.get("transformer_options", {}).get("easycache")
    cached = getattr(holder, "uuid_cache_diffs", None)
    if cached and any(c.get("uuid") not in cached for cond in conds if cond is not None for c in cond):
        holder.cumulative_change_rate = math.inf


def calc_cond_batch_wrapper(executor, model, conds, x_in, timestep, model_options):
    easycache_computes_returning_conds(conds, model_options)
    out = executor(model, conds, x_in, timestep, model_options)
    if len(conds) == 2 and conds[0] is not None and conds[1] is None:   # sampling_function's cfg1 path
        out = [out[0], out[0]]
    return out


class _Stats:
    """Per-run counter; an object, not a dict, so model_options copies share it."""
    skipped = 0


def outer_sample_wrapper(executor, *args, **kwargs):
    """Counts the unconditional passes the schedule left out in this run; logs them, tells the frontend."""
    options = executor.class_obj.model_options.setdefault("transformer_options", {})   # the guider's per-run copy
    stats = options[STATS] = _Stats()
    try:
        return executor(*args, **kwargs)
    finally:
        options.pop(STATS, None)
        log.info("Sprint dynamic CFG: left out %d unconditional passes", stats.skipped)
        send_event("dynamic_cfg", {"uncond_skipped": stats.skipped})


def post_cfg(settings, args):
    """CFG rescale, then dynamic thresholding, of the guided x0 (only where the scale is not 1)."""
    denoised = args["denoised"]
    if args["cond_scale"] == 1.0:
        return denoised
    x, sigma = guidance.edm_state(args["input"], args["sigma"], is_flow(args["model"].model_sampling))
    denoised = guidance.rescale_cfg(denoised, args["cond_denoised"], x, sigma, settings["rescale"])
    return guidance.dynamic_threshold(denoised, args["cond_denoised"], settings["threshold_percentile"])


def patch(model, **settings):
    """A clone of `model` with the dynamic CFG hooks; settings as SprintDynamicCFG's inputs."""
    if settings["schedule"] not in guidance.KINDS:
        raise ValueError(f"SprintDynamicCFG: unknown schedule {settings['schedule']!r}; one of {', '.join(guidance.KINDS)}")
    if not ((settings["sigma_high"] == 0 or 0 <= settings["sigma_low"] < settings["sigma_high"]) and 0 <= settings["start_percent"] < settings["end_percent"] <= 1):
        raise ValueError("SprintDynamicCFG: need sigma_low < sigma_high and start_percent < end_percent, got "
                         f"sigmas ({settings['sigma_low']}, {settings['sigma_high']}], "
                         f"percents [{settings['start_percent']}, {settings['end_percent']}]")
    m = model.clone()
    WrappersMP = comfy.patcher_extension.WrappersMP
    m.add_wrapper_with_key(WrappersMP.PREDICT_NOISE, KEY, functools.partial(predict_noise_wrapper, Schedule(settings)))
    for kind, fn in ((WrappersMP.CALC_COND_BATCH, calc_cond_batch_wrapper), (WrappersMP.OUTER_SAMPLE, outer_sample_wrapper)):
        if not m.get_wrappers(kind, KEY):       # once per model, however many schedules are stacked
            m.add_wrapper_with_key(kind, KEY, fn)
    if settings["rescale"] > 0 or settings["threshold_percentile"] > 0:
        m.set_model_sampler_post_cfg_function(functools.partial(post_cfg, settings))
    return m


class SprintDynamicCFG(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SprintDynamicCFG",
            display_name="Sprint Dynamic CFG",
            category="Sprint/guidance",
            description="Makes the sampler's cfg a function of the noise level. Where the scheduled scale is 1 "
                        "(e.g. outside the guidance interval) the negative prompt is not evaluated: one model "
                        "call instead of two, and the result is exactly the positive prediction. The "
                        "'constant' schedule is plain CFG, bit for bit. Optional CFG rescale and dynamic "
                        "thresholding. Works with KSampler, SamplerCustom(Advanced) and any sampler.",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (it is cloned, never changed)."),
                io.Combo.Input("schedule", options=list(guidance.KINDS), default="interval",
                               tooltip="interval: full cfg inside the sigma window, no guidance outside "
                                       "(Kynkaanniemi et al. 2024; saves the negative pass outside). "
                                       "constant: plain CFG. phases: strength_high / strength_mid / "
                                       "strength_low above / inside / below the window. linear, cosine: "
                                       "strength_high at the window's top to strength_low at its bottom."),
                io.Float.Input("sigma_high", default=0.0, min=0.0, max=1000.0, step=0.01,
                               round=False, tooltip="Top of the guidance window, as a noise-to-signal sigma (the "
                                                    "KSampler sigma of SD1.x/SDXL models; t/(1-t) for flow models). "
                                                    "0 = by the model's sampling type: 5.42 on EPS/V-prediction "
                                                    "models (SD1.x, SD2, SDXL); open (guidance from the first step) "
                                                    "on flow models (SD3, Flux, Qwen-Image, Wan, Lumina 2, HiDream), "
                                                    "whose shifted schedules spend half their steps above 5.42."),
                io.Float.Input("sigma_low", default=guidance.INTERVAL_SIGMA_LOW, min=0.0, max=1000.0, step=0.01,
                               round=False, tooltip="Bottom of the guidance window (exclusive), a sigma in the same units as sigma_high (default 0.28)."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="The window also ends above this point of the model's timestep range "
                                       "(0 = start, as in ConditioningSetTimestepRange); intersected with the sigmas."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="The window also ends below this point of the timestep range (1 = end)."),
                io.Float.Input("strength_high", default=0.0, min=0.0, max=10.0, step=0.01,
                               tooltip="phases/linear/cosine: fraction of the guidance (cfg - 1) applied above the "
                                       "window; 0 means scale 1 there (no negative pass for phases)."),
                io.Float.Input("strength_mid", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="phases: fraction of the guidance applied inside the window (1 = the cfg)."),
                io.Float.Input("strength_low", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="phases/linear/cosine: fraction of the guidance applied below the window."),
                io.Float.Input("rescale", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="CFG rescale phi (Lin et al. 2024; 0.7 in the paper, 0 = off): pulls the "
                                       "guided prediction's spread back to the positive one's, against over-exposure."),
                io.Float.Input("threshold_percentile", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Dynamic thresholding percentile (Imagen: 0.995; 0 = off): clamps the guided "
                                       "x0 to the range the positive prediction has at that percentile."),
            ],
            outputs=[io.Model.Output(tooltip="The model with the guidance schedule.")],
        )

    @classmethod
    def execute(cls, model, **settings) -> io.NodeOutput:
        check_inputs(cls, settings)
        return io.NodeOutput(patch(model, **settings))


NODES = [SprintDynamicCFG]
