"""SprintTiledDiffusion: every model call on a large latent runs tile by tile, blended with
MultiDiffusion or Mixture of Diffusers weights (engines/tiling.py), through keyed wrappers only.

- CALC_COND_BATCH: the latent is cut into tiles; each batch of tiles goes through the rest of
  ComfyUI's calc_cond_batch (area/mask composition, hooks, ControlNet, APPLY_MODEL and
  DIFFUSION_MODEL wrappers, model_function_wrapper) with its conditioning cropped to the tiles:
  area and mask weights (made explicit, so ComfyUI's area feathering is kept exactly), concat
  latents (inpainting models), ControlNet/T2I-Adapter hints. ControlNets run per tile on the cropped
  hint, so their residuals are born tile-sized and their memory is bounded like the UNet's.
  Guidance, samplers and every wrapper outside this one see whole latents.
- PREPARE_SAMPLING: ComfyUI frees memory and loads the model for the noise shape it is given;
  the wrapper gives it one batch of tiles (what a model call will really hold).
- OUTER_SAMPLE: one cache per sampling run of the ControlNets re-targeted at each tile.

Latents are image [B, C, H, W] or video / Qwen-Image [B, C, T, H, W]: tiles are spatial, every
frame of a tile runs together. Transformers see patches, so tiles start on multiples of the
patch size too, and where a model gives patches positions relative to the image and the text
(rotary ids, absolute embeddings) each tile is given its true place in the whole latent (see
`true_positions`), one tile per model call.
"""
import contextlib
import copy
import dataclasses
import functools
import logging
import math
import uuid

import comfy.model_management
import comfy.patcher_extension
import comfy.samplers
import comfy.utils
from comfy.conds import CONDNoiseShape
from comfy_api.latest import io

from ..engines import tiling
from . import common

log = logging.getLogger("sprint")

KEY = "sprint.tiled_diffusion"
RUN_KEY = "sprint_tiled_diffusion_run"
LATENT_SCALE = 8   # pixels per latent pixel of SD-family VAEs (as LatentUpscale assumes)
ALIGN = 8          # tile starts on multiples of the UNet's total downsampling (SD1.x: 8)
METHODS = {"Mixture of Diffusers": "gaussian", "MultiDiffusion": "uniform"}
# tile side in pixels when the node's tile size is 0 (auto). A transformer attends over every patch
# of its input in every block, so one evaluation's memory follows the tile's token count: a tile
# as large as the image saves nothing (Qwen-Image, 1024 px image: peak 95.9 % of untiled in
# 1024 px tiles, 24.4 % in 512 px ones; bench-tiling). A UNet attends at full resolution in its
# first blocks only, and SDXL-class UNets were trained at 1024 px.
AUTO_TILE = {"unet": 1024, "transformer": 512}
RUNS = {}          # run id -> TileControls, alive while a sampling run lasts
_said = set()      # messages logged once per process


@dataclasses.dataclass(frozen=True)
class TiledConfig:
    """Tiling settings in latent pixels (plain data: model_options stays deep-copyable)."""
    tile_height: int
    tile_width: int
    overlap: int
    blend: str = "gaussian"
    margin: int = 0
    tile_batch: int = 1

    @classmethod
    def from_pixels(cls, tile_height, tile_width, overlap, blend="gaussian", margin=0, tile_batch=1):
        config = cls(tile_height // LATENT_SCALE, tile_width // LATENT_SCALE, overlap // LATENT_SCALE,
                     blend, margin // LATENT_SCALE, tile_batch)
        if min(config.tile_height, config.tile_width) - config.overlap < 2 * ALIGN:   # so aligned plans exist
            raise ValueError(f"tiles ({tile_width} x {tile_height} px) must exceed the overlap ({overlap} px) by at "
                             f"least {2 * ALIGN * LATENT_SCALE} px")
        if 2 * config.margin > config.overlap:
            raise ValueError(f"margin ({margin} px) must be at most half the overlap ({overlap} px)")
        return config

    def plan(self, height, width, align=ALIGN):
        return tiling.plan_tiles(height, width, self.tile_height, self.tile_width, self.overlap, align)

    def tiles_shape(self, shape):
        """The input shape of one model call on a batch of tiles of a latent `shape`."""
        if len(shape) not in (4, 5):
            return shape
        plan = self.plan(*shape[-2:])
        if len(plan.tiles) == 1:
            return shape
        return [shape[0] * min(self.tile_batch, len(plan.tiles)), *shape[1:-2], plan.tile_height, plan.tile_width]


def apply_tiling(model, config):
    """A clone of MODEL whose model calls run in tiles (re-applying replaces earlier settings)."""
    model = model.clone()
    for kind, wrapper in ((comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, calc_cond_batch_wrapper),
                          (comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, prepare_sampling_wrapper),
                          (comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, outer_sample_wrapper)):
        model.remove_wrappers_with_key(kind, KEY)
        model.add_wrapper_with_key(kind, KEY, functools.partial(wrapper, config))
    return model


def outer_sample_wrapper(config, executor, noise, *args, **kwargs):
    guider = executor.class_obj
    if noise.ndim == 4 and len(config.plan(*noise.shape[-2:]).tiles) > 1 and \
            any("gligen" in c for group in guider.conds.values() for c in group):
        log.warning("Sprint tiled diffusion: GLIGEN boxes are not re-targeted at tiles")
    options = guider.model_options["transformer_options"]   # the guider's copy for this run
    run = options[RUN_KEY] = uuid.uuid4().hex
    RUNS[run] = TileControls()
    try:
        return executor(noise, *args, **kwargs)
    finally:
        RUNS.pop(run, None)
        options.pop(RUN_KEY, None)


def prepare_sampling_wrapper(config, executor, model, noise_shape, conds, model_options=None):
    return executor(model, config.tiles_shape(list(noise_shape)), conds, model_options=model_options)


def say_once(message):
    if message not in _said:
        _said.add(message)
        log.warning("Sprint tiled diffusion: %s", message)


def patch_align(diffusion_model):
    """Tile starts: multiples of the UNet's downsampling (ALIGN) and of a transformer's patch."""
    patch = getattr(diffusion_model, "patch_size", None) or 1
    patch = patch[-2:] if isinstance(patch, (tuple, list)) else (patch,)
    return math.lcm(ALIGN, *map(int, patch))


def calc_cond_batch_wrapper(config, executor, model, conds, x_in, timestep, model_options):
    family = type(model.model_config).__name__
    if x_in.ndim not in (4, 5):
        say_once(f"{family} latents of shape {tuple(x_in.shape)} are not tiled (image or video latents only)")
        return executor(model, conds, x_in, timestep, model_options)
    plan = config.plan(*x_in.shape[-2:], patch_align(model.diffusion_model))
    if len(plan.tiles) == 1:       # one tile covers the latent: exactly the untiled call
        return executor(model, conds, x_in, timestep, model_options)
    if x_in.ndim == 5 and any("area" in c for group in conds if group for c in group):
        say_once(f"{family}: area conditioning on video latents is not tiled; this run samples untiled")
        return executor(model, conds, x_in, timestep, model_options)
    positions = true_positions(model.diffusion_model, x_in.shape[-2:])
    if positions is None and family in TILE_LOCAL_POSITIONS:
        say_once(f"{family} gives no way to place a tile in the image: each tile sees positions of its own")
    conds = [None if group is None else [c for c in (explicit_mult(c, x_in, timestep) for c in group) if c is not None]
             for group in conds]
    has_area = any("area" in c for group in conds if group for c in group)
    controls = RUNS.get(model_options.get("transformer_options", {}).get(RUN_KEY)) or TileControls()
    rows = x_in.shape[0]

    def denoise(x_tiles, tiles):
        comfy.model_management.throw_exception_if_processing_interrupted()
        tile_conds = [None if group is None else
                      [c for c in (for_tiles(c, tiles, rows, x_in.shape[-2:], controls) for c in group) if c is not None]
                      for group in conds]
        with positions(tiles[0]) if positions else contextlib.nullcontext():
            return executor(model, tile_conds, x_tiles, timestep.repeat(len(tiles)), model_options)

    weights = tiling.blend_weights(plan, config.blend, config.margin, x_in.device, x_in.dtype)
    # tiles of one batch share one cond entry (an area differs per tile) and one set of positions
    return tiling.tiled_apply(denoise, x_in, plan, weights, 1 if has_area or positions else config.tile_batch)


# Transformers whose patch positions ComfyUI 0.3.64 builds inside forward with no offset: a tile
# is evaluated as if it were the whole image (said once). Wan needs none: its text enters by
# cross-attention and rotary attention between patches depends only on their distance.
TILE_LOCAL_POSITIONS = {"Lumina2", "HiDream"}


def true_positions(diffusion_model, latent_hw):
    """For models that place patches relative to the image and the text, a context manager
    factory tile -> (the model sees that tile at its place in the whole latent), else None.

    Flux: rotary image ids count rows/columns from 0 (text ids are 0): shift them by the tile's
    offset. Qwen-Image: ids centred on the image, text ids after the image's half side: the tile's
    ids are moved so that every image-image and text-image difference is the whole image's (the
    rotary embedding depends on nothing else). SD3: the tile's crop of the whole image's absolute
    position embedding instead of a centred crop of its own size."""
    import comfy.ldm.flux.model
    import comfy.ldm.modules.diffusionmodules.mmdit
    import comfy.ldm.qwen_image.model
    H, W = latent_hw
    if isinstance(diffusion_model, comfy.ldm.qwen_image.model.QwenImageTransformer2DModel):
        def place(tile, x, index, h_offset, w_offset):
            p = diffusion_model.patch_size
            half = lambda n: ((n + p // 2) // p) // 2   # noqa: E731  (the model's own rounding)
            delta = max(half(tile.h), half(tile.w)) - max(half(H), half(W))
            return index + delta, p * (tile.y // p - half(H) + half(tile.h) + delta), \
                p * (tile.x // p - half(W) + half(tile.w) + delta)
        return functools.partial(_process_img_shifted, diffusion_model, place)
    if isinstance(diffusion_model, comfy.ldm.flux.model.Flux):
        return functools.partial(_process_img_shifted, diffusion_model,
                                 lambda tile, x, index, h, w: (index, h + tile.y, w + tile.x))
    if isinstance(diffusion_model, comfy.ldm.modules.diffusionmodules.mmdit.MMDiT) and diffusion_model.pos_embed is not None:
        return functools.partial(_pos_embed_cropped, diffusion_model, H, W)
    return None


@contextlib.contextmanager
def _process_img_shifted(diffusion_model, place, tile):
    """process_img of the main latent (index 0; reference latents keep theirs) moved by place()."""
    original = diffusion_model.process_img

    def process_img(x, index=0, h_offset=0, w_offset=0):
        if index == 0:
            index, h_offset, w_offset = place(tile, x, index, h_offset, w_offset)
        return original(x, index=index, h_offset=h_offset, w_offset=w_offset)
    diffusion_model.process_img = process_img
    try:
        yield
    finally:
        del diffusion_model.process_img


@contextlib.contextmanager
def _pos_embed_cropped(diffusion_model, H, W, tile):
    original = diffusion_model.cropped_pos_embed
    p = diffusion_model.x_embedder.patch_size[0]

    def cropped_pos_embed(hw, device=None):
        whole = original((H, W), device=device)
        hp, wp = (H + 1) // p, (W + 1) // p
        th, tw = (hw[0] + 1) // p, (hw[1] + 1) // p
        grid = whole.reshape(1, hp, wp, -1)[:, tile.y // p:tile.y // p + th, tile.x // p:tile.x // p + tw]
        return grid.reshape(1, th * tw, -1)
    diffusion_model.cropped_pos_embed = cropped_pos_embed
    try:
        yield
    finally:
        del diffusion_model.cropped_pos_embed


def explicit_mult(cond, x_in, timestep):
    """cond with its area/mask weighting ("mult") as an explicit latent-sized mask, computed by
    ComfyUI itself (area feathering included), so that cropping it per tile changes no pixel;
    None when the cond is inactive at this timestep."""
    if "area" not in cond and "mask" not in cond:
        return cond
    p = comfy.samplers.get_area_and_mult(cond, x_in, timestep)
    if p is None:
        return None
    mask = x_in.new_zeros((x_in.shape[0],) + tuple(x_in.shape[2:]))     # [B, (T,) H, W]
    if p.area is None:
        mask[:] = p.mult[:, 0]
        area = {}
    else:
        h, w, y, x = p.area
        mask[:, y:y + h, x:x + w] = p.mult[:, 0]
        area = {"area": (h, w, y, x)}
    return {**cond, **area, "mask": mask, "mask_strength": 1.0, "strength": 1.0}


def for_tiles(cond, tiles, rows, latent_hw, controls):
    """cond restricted to a batch of tiles (stacked tile-major along the batch), or None where its
    area misses the tile (a cond with an area comes with one tile at a time)."""
    out = dict(cond)
    regions, frame = tiles, latent_hw      # where the tiles lie in the frame a ControlNet hint fills
    if "area" in cond:
        out["area"] = tiling.crop_area(cond["area"], tiles[0])
        if out["area"] is None:
            return None
        # ComfyUI fits the hint to the area an area cond is evaluated on: the tile's part of the
        # area takes the matching part of that fitted hint
        (h, w, y, x), (th, tw, ty, tx) = cond["area"], out["area"]
        regions, frame = (tiling.Tile(0, tiles[0].y + ty - y, tiles[0].x + tx - x, th, tw),), (h, w)
    if "mask" in cond:
        out["mask"] = tiling.stack_tiles(cond["mask"], tiles, rows=rows)
    out["model_conds"] = {k: v._copy_with(tiling.stack_tiles(v.cond, tiles, rows=rows)) if isinstance(v, CONDNoiseShape) else v
                          for k, v in cond["model_conds"].items()}
    if cond.get("control") is not None:
        out["control"] = controls.get(cond["control"], regions, rows, frame)
    out["uuid"] = uuid.uuid5(cond["uuid"], repr([t.index for t in tiles]))   # caches keyed by cond see each tile apart
    return out


class TileControls:
    """ControlNet / T2I-Adapter chains re-targeted at batches of tiles, for one sampling run.

    A re-targeted control is a shallow copy (it keeps the state pre_run gave the original and
    shares its model) whose hint is the full-latent hint, resized as the control itself would,
    cropped to the tiles; its own get_control then finds a hint of exactly the tile size."""

    def __init__(self):
        self.cache = {}

    def get(self, control, tiles, rows, frame):
        """`control` for a batch of `tiles` lying in a `frame` (height, width) of latent pixels."""
        key = (id(control), tiles, rows, tuple(frame))
        if key not in self.cache:
            self.cache[key] = (control, retarget(control, tiles, rows, frame))
        return self.cache[key][1]


def retarget(control, tiles, rows, frame):
    out = copy.copy(control)
    out.cond_hint = None
    vae_scale = control.vae.spacial_compression_encode() if getattr(control, "vae", None) is not None else 1
    out.cond_hint_original = crop_hint(control.cond_hint_original, control, tiles, rows, frame, control.compression_ratio * vae_scale)
    out.extra_concat_orig = [crop_hint(c, control, tiles, rows, frame, control.compression_ratio) for c in control.extra_concat_orig]
    if control.previous_controlnet is not None:
        out.previous_controlnet = retarget(control.previous_controlnet, tiles, rows, frame)
    return out


def crop_hint(hint, control, tiles, rows, frame, scale):
    """The hint fitted to the frame as the control itself would fit it, cropped to the tiles."""
    height, width = frame
    fitted = comfy.utils.common_upscale(hint, width * scale, height * scale, control.upscale_algorithm, "center")
    return tiling.stack_tiles(fitted, tiles, scale, rows)


class SprintTiledDiffusion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SprintTiledDiffusion",
            display_name="Sprint Tiled Diffusion",
            category="Sprint/upscale",
            description="Runs every model call of a large latent in overlapping tiles (MultiDiffusion or "
                        "Mixture of Diffusers blending), so memory follows the tile, not the image. Area, "
                        "mask and ControlNet conditioning are cropped per tile; ComfyUI reserves memory "
                        "for one batch of tiles. A latent that fits in one tile runs exactly as untiled.",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (it is cloned, never modified)."),
                io.Combo.Input("method", options=list(METHODS), default="Mixture of Diffusers",
                               tooltip="Mixture of Diffusers: Gaussian weights fading to zero at tile edges "
                                       "(no seams). MultiDiffusion: plain average of overlapping tiles."),
                io.Int.Input("tile_width", default=0, min=0, max=16384, step=8,
                             tooltip="Largest tile width in pixels; tiles shrink to the smallest size that "
                                     "covers the image with the fewest tiles. 0: auto, 1024 px for UNet models "
                                     "(SD1.x/SD2.x/SDXL), 512 px for transformers (SD3, Flux, Qwen-Image, Wan, ...), "
                                     "whose memory follows the tile's size."),
                io.Int.Input("tile_height", default=0, min=0, max=16384, step=8,
                             tooltip="Largest tile height in pixels (0: auto, as tile_width)."),
                io.Int.Input("overlap", default=64, min=0, max=4096, step=8,
                             tooltip="Least overlap between neighbouring tiles in pixels (more: smoother, "
                                     "more compute)."),
                io.Int.Input("margin", default=0, min=0, max=2048, step=8,
                             tooltip="Pixels at each inner tile edge whose prediction is discarded (they see "
                                     "the tile border instead of the image). At most half the overlap."),
                io.Int.Input("tile_batch_size", default=1, min=1, max=64,
                             tooltip="Tiles evaluated together per model call: faster on a large GPU, "
                                     "memory grows with it."),
            ],
            outputs=[io.Model.Output(tooltip="The model, sampling in tiles.")],
        )

    @classmethod
    def execute(cls, model, method, tile_width, tile_height, overlap, margin, tile_batch_size) -> io.NodeOutput:
        common.check_inputs(cls, locals())
        auto = AUTO_TILE["unet" if common.is_unet(model) else "transformer"]
        config = TiledConfig.from_pixels(tile_height or auto, tile_width or auto, overlap, METHODS[method], margin,
                                         tile_batch_size)
        return io.NodeOutput(apply_tiling(model, config))


NODES = [SprintTiledDiffusion]
