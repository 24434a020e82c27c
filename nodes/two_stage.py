"""SprintTwoStageUpscale: a finished stage-1 latent is upscaled (in latent space, or in pixel space
through the VAE and an optional upscale model) and refined with only the tail of the schedule.

Refining at denoise d runs the last round(steps * d) steps of the `steps`-step schedule, so it costs
about steps * d model calls (KSampler's denoise instead stretches the schedule and still runs all
`steps`). Above `tile_size` the refinement runs through SprintTiledDiffusion's tiling.
"""
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy_api.latest import io

from . import common
from .tiled_diffusion import TiledConfig, apply_tiling

UPSCALE_METHODS = ("latent bislerp", "latent bicubic", "latent bilinear", "pixel lanczos", "pixel bicubic", "pixel bilinear")


def default_sampler():
    """Sprint's adaptive early-stop sampler (nodes/sampler.py), balanced preset."""
    from .sampler import adaptive_sampler
    return adaptive_sampler(preset="balanced")


def tail_sigmas(model, scheduler, steps, denoise):
    """The last round(steps * denoise) steps (at least one) of the `steps`-step schedule."""
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)
    return sigmas[-(max(1, round(steps * denoise)) + 1):]


def upscale(samples, height, width, method, vae=None, upscale_model=None):
    """Latent samples resized to height x width latent pixels, in latent or pixel space."""
    space, method = method.split(" ", 1)
    if space == "latent":
        if upscale_model is not None:
            raise ValueError("an upscale model works in pixel space: choose a 'pixel ...' upscale_method")
        return comfy.utils.common_upscale(samples, width, height, method, "disabled")
    if vae is None:
        raise ValueError("pixel-space upscaling needs the VAE connected (or choose a 'latent ...' upscale_method)")
    image = vae.decode(samples)
    if upscale_model is not None:
        from comfy_extras.nodes_upscale_model import ImageUpscaleWithModel
        image = ImageUpscaleWithModel.execute(upscale_model, image)[0]
    scale = vae.spacial_compression_encode()
    image = comfy.utils.common_upscale(image.movedim(-1, 1), width * scale, height * scale, method, "disabled")
    return vae.encode(image.movedim(1, -1)[..., :3])


class SprintTwoStageUpscale(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SprintTwoStageUpscale",
            display_name="Sprint Two-Stage Upscale",
            category="Sprint/upscale",
            description="Upscales a finished low-resolution latent and refines it with only the tail of the "
                        "schedule: about steps x denoise model calls instead of a full high-resolution run. "
                        "Large results are refined in tiles. Default sampler: Sprint's adaptive sampler.",
            inputs=[
                io.Model.Input("model", tooltip="The model that refines the upscaled latent."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning for the refinement."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning for the refinement."),
                io.Latent.Input("latent", tooltip="The stage-1 result (a finished latent) to upscale."),
                io.Sampler.Input("sampler", optional=True,
                                 tooltip="Sampler for the refinement; Sprint's adaptive sampler when not connected."),
                io.Vae.Input("vae", optional=True, tooltip="Needed by the 'pixel ...' upscale methods."),
                io.UpscaleModel.Input("upscale_model", optional=True,
                                      tooltip="Optional pixel-space upscale model (ESRGAN & co), applied before "
                                              "resizing to the exact target size; needs a 'pixel ...' method."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the refinement noise (any integer, 0 to 2^64-1)."),
                io.Int.Input("steps", default=20, min=1, max=10000,
                             tooltip="Steps of the full schedule; the refinement runs its last steps x denoise."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale, 0-100 (1 = no guidance)."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="simple",
                               tooltip="Noise schedule the tail is taken from."),
                io.Float.Input("denoise", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the schedule re-run at the high resolution: its last "
                                       "round(steps x denoise) steps (0: upscale only). 0.2 of the simple schedule "
                                       "restarts SD1.5 at sigma 0.6."),
                io.Float.Input("scale_by", default=2.0, min=1.0, max=8.0, step=0.05,
                               tooltip="Upscale factor of each side, 1-8 (2 = twice the width and height)."),
                io.Combo.Input("upscale_method", options=list(UPSCALE_METHODS), default="latent bislerp",
                               tooltip="Latent-space resize (no VAE pass), or pixel space: VAE decode, optional "
                                       "upscale model, resize, VAE encode."),
                io.Int.Input("tile_size", default=1024, min=0, max=16384, step=8,
                             tooltip="Refine in tiles of at most this many pixels when the result is larger "
                                     "(0: never tile)."),
                io.Int.Input("tile_overlap", default=64, min=0, max=4096, step=8,
                             tooltip="Least overlap between refinement tiles in pixels."),
            ],
            outputs=[io.Latent.Output(tooltip="The upscaled, refined latent.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, seed, steps, cfg, scheduler, denoise, scale_by,
                upscale_method, tile_size, tile_overlap, sampler=None, vae=None, upscale_model=None) -> io.NodeOutput:
        common.check_inputs(cls, locals())
        common.check_latent(latent["samples"], "latent")
        samples = latent["samples"]
        height, width = round(samples.shape[-2] * scale_by), round(samples.shape[-1] * scale_by)
        upscaled = upscale(samples, height, width, upscale_method, vae, upscale_model)
        out = dict(latent, samples=upscaled)
        if denoise == 0:
            return io.NodeOutput(out)
        if tile_size:
            config = TiledConfig.from_pixels(tile_size, tile_size, tile_overlap)
            if len(config.plan(height, width).tiles) > 1:
                model = apply_tiling(model, config)
        sigmas = tail_sigmas(model, scheduler, steps, denoise)
        upscaled = comfy.sample.fix_empty_latent_channels(model, upscaled)
        noise = comfy.sample.prepare_noise(upscaled, seed, latent.get("batch_index"))
        callback = latent_preview.prepare_callback(model, len(sigmas) - 1)
        out["samples"] = comfy.sample.sample_custom(
            model, noise, cfg, sampler or default_sampler(), sigmas, positive, negative, upscaled,
            noise_mask=latent.get("noise_mask"), callback=callback,
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        return io.NodeOutput(out)


NODES = [SprintTwoStageUpscale]
