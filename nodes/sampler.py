"""Sprint adaptive sampler: the engine's sample_adaptive as a ComfyUI SAMPLER, and a KSampler-like
node that stops each image once it has settled and reports the model calls it saved.

The step count (the schedule's sigmas) is a budget, never exceeded: an image stops early when its
denoised prediction no longer moves, and jumps from there to sigma = 0.
"""
import comfy.model_management
import comfy.model_sampling
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io, ui

from ..engines import sampling
from . import common

PRESETS = list(sampling.PRESETS)


def _per_row(conds):
    """Whether any of the guider's processed conds holds one row per image (a batch of prompts,
    per-image masks or ControlNet hints) rather than one row for all."""
    def rows(t):
        return t.shape[0] if isinstance(t, torch.Tensor) and t.ndim > 0 else 1
    for entries in conds.values():
        for c in entries:
            tensors = [getattr(v, "cond", None) for v in c.get("model_conds", {}).values()] + [c.get("mask")]
            control = c.get("control")
            while control is not None:
                tensors.append(getattr(control, "cond_hint_original", None))
                control = getattr(control, "previous_controlnet", None)
            if any(rows(t) > 1 for t in tensors):
                return True
    return False


def _sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
    """sample_adaptive on ComfyUI's k-diffusion model wrapper: picks the flow (CONST) form from
    the model, the eta noise seed from the prompt's seed, checks Cancel before every model call,
    and keeps the whole batch in each call when anything is indexed by batch row: a denoise mask
    (inpainting) or per-row conds. ComfyUI fits a cond to a call's batch by repeating or cutting its
    rows (comfy.utils.repeat_to_batch_size), so a call on the unsettled rows only would pair them
    with the first rows' prompts."""
    extra_args = {} if extra_args is None else extra_args
    model_sampling = model.inner_model.inner_model.model_sampling
    options.setdefault("flow", isinstance(model_sampling, comfy.model_sampling.CONST))
    options.setdefault("seed", extra_args.get("seed") or 0)
    if extra_args.get("denoise_mask") is not None or _per_row(getattr(model.inner_model, "conds", {})):
        options["drop_finished"] = False

    def checked(x, sigma, **kwargs):
        comfy.model_management.throw_exception_if_processing_interrupted()
        return model(x, sigma, **kwargs)
    return sampling.sample_adaptive(checked, x, sigmas, extra_args, callback, disable, **options)


def adaptive_sampler(preset="balanced", **options):
    """The adaptive sampler as a comfy.samplers.KSAMPLER; `options` override the preset
    (sampling.ADAPTIVE_DEFAULTS names them, e.g. tol, eta, min_fraction, info)."""
    if preset not in sampling.PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return comfy.samplers.KSAMPLER(_sample, extra_options={**sampling.PRESETS[preset], **options})


def _options(preset, tolerance, eta=0.0):
    options = {"tol": tolerance} if tolerance > 0 else {}
    if eta > 0:
        options["eta"] = eta
    return preset, options


PRESET_TOOLTIP = ("Model calls spread evenly along the schedule's shape, at most its steps: "
                  + ", ".join(f"{name} {p['calls']}" for name, p in sampling.PRESETS.items())
                  + ". Fewer steps than that: every step is a call. Calls that would lower sigma more than an e-fold "
                  "from one to the next end higher, skipping at most the tolerance's worth of detail.")
TOLERANCE_TOOLTIP = ("Expert: an image stops early once the calls it has left could change its result by less "
                     "than this (RMS, latent units); 0 uses the preset's ("
                     + ", ".join(f"{name} {p['tol']:g}" for name, p in sampling.PRESETS.items())
                     + "). Larger stops earlier, but never where the calls saved would have cut the error "
                     "by more than stopping adds.")


class SprintAdaptiveSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SprintAdaptiveSampler",
            display_name="Sprint Adaptive Sampler",
            category="Sprint/sampling",
            description=("An adaptive multistep sampler (Adams predictor-corrector: 4th order, 3rd on flow models) "
                         "for SamplerCustom / SamplerCustomAdvanced. "
                         "The SIGMAS are a budget: the preset's model calls are spread along the schedule's own "
                         "shape, each image stops once the calls it has left could change it by less than the "
                         "tolerance, and none uses more model calls than the schedule's step count."),
            inputs=[
                io.Combo.Input("preset", options=PRESETS, default="balanced", tooltip=PRESET_TOOLTIP),
                io.Float.Input("tolerance", default=0.0, min=0.0, max=1.0, step=0.0005,
                               tooltip=TOLERANCE_TOOLTIP),
                io.Float.Input("eta", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fresh noise per step (SDE steps, seeded by the sampling seed); 0 is "
                                       "the deterministic ODE, the only setting whose early stop is exact."),
            ],
            outputs=[io.Sampler.Output(tooltip="The adaptive sampler, for SamplerCustom / SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, preset, tolerance, eta) -> io.NodeOutput:
        common.check_inputs(cls, locals())
        preset, options = _options(preset, tolerance, eta)
        return io.NodeOutput(adaptive_sampler(preset, **options))


def _sigmas(model, scheduler, steps, denoise):
    """The schedule KSampler.set_steps builds: the whole one (ddim_uniform can give more than
    `steps` steps), or for denoise < 1 the last steps + 1 sigmas of a longer one."""
    if denoise <= 0:
        return torch.zeros(0)           # nothing to sample: the latent comes back unchanged, as in KSampler
    ms = model.get_model_object("model_sampling")
    if denoise > 0.9999:
        return comfy.samplers.calculate_sigmas(ms, scheduler, steps).cpu()
    return comfy.samplers.calculate_sigmas(ms, scheduler, int(steps / denoise)).cpu()[-(steps + 1):]


def report(info):
    """Stats of one run for the UI text and the frontend event."""
    budget, calls = info["nfe_budget"], info["nfe_batch"]
    return {"calls": calls, "budget": budget, "saved": budget - calls,
            "sample_calls": info["nfe"].tolist(), "stop_step": int(info["stop_step"].max()),
            "est_error": float(info["est_error"].max())}


def report_text(stats):
    """The run in one sentence (web/sprint.js's badge words it the same way): an early stop names
    its step; a run that saved nothing says its budget bound it, since then there was no stop."""
    head = f"{stats['calls']} of {stats['budget']} model calls"
    if stats["saved"] > 0:
        head += f" ({stats['saved']} saved), settled at step {stats['stop_step']}"
    else:
        head += f": spent its whole {stats['budget']}-call budget (more steps let it stop early)"
    return f"{head}, estimated error {stats['est_error']:.2g}"


class SprintKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SprintKSampler",
            display_name="Sprint Adaptive KSampler",
            category="Sprint/sampling",
            description=("KSampler with Sprint's adaptive sampler: same seed, noise, scheduler and denoise as "
                         "KSampler, but `steps` is a maximum: each image stops once it has settled. Shows the "
                         "model calls used and saved."),
            inputs=[
                io.Model.Input("model", tooltip="The model used for denoising the input latent."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="The random seed used for creating the noise (any integer, 0 to 2^64-1; the same noise as KSampler)."),
                io.Int.Input("steps", default=20, min=1, max=10000,
                             tooltip="The most steps (model calls per image) to spend; images that settle "
                                     "earlier stop there."),
                io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale, 0-100, as in KSampler (1 = no guidance, one model call per step)."),
                io.Combo.Input("preset", options=PRESETS, default="balanced", tooltip=PRESET_TOOLTIP),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="karras",
                               tooltip="The noise schedule the step budget is laid on."),
                io.Conditioning.Input("positive", tooltip="What to include in the image."),
                io.Conditioning.Input("negative", tooltip="What to exclude from the image."),
                io.Latent.Input("latent_image", tooltip="The latent image to denoise."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="How much of the schedule to run (below 1: img2img from the input latent)."),
            ],
            outputs=[io.Latent.Output(tooltip="The denoised latent.")],
        )

    @classmethod
    def execute(cls, model, seed, steps, cfg, preset, scheduler, positive, negative, latent_image,
                denoise) -> io.NodeOutput:
        common.check_inputs(cls, locals())
        common.check_latent(latent_image["samples"], "latent_image")
        latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
        out = dict(latent_image)
        sigmas = _sigmas(model, scheduler, steps, denoise)
        if len(sigmas) < 2:
            out["samples"] = latent
            return io.NodeOutput(out, ui=ui.PreviewText("denoise 0: nothing to sample"))
        noise = comfy.sample.prepare_noise(latent, seed, latent_image.get("batch_index"))
        info = {}
        callback = latent_preview.prepare_callback(model, len(sigmas) - 1)
        out["samples"] = comfy.sample.sample_custom(
            model, noise, cfg, adaptive_sampler(preset, info=info), sigmas, positive, negative, latent,
            noise_mask=latent_image.get("noise_mask"), callback=callback,
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        stats = report(info)
        common.send_event("sampler", stats)
        return io.NodeOutput(out, ui=ui.PreviewText(report_text(stats)))


NODES = [SprintAdaptiveSampler, SprintKSampler]
