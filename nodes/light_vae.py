"""Light VAE: decode (and encode) with the TAESD family from models/vae_approx, decoder-only.

ComfyUI's VAELoader offers a TAESD only when both halves are installed and keeps the full VAE's
memory estimate; here one file is enough, the variant follows the model or the latent, and the
memory manager is told what a tiny decoder really needs.
"""
import logging
import os

import torch
from comfy_api.latest import io

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths

from ..engines import taehv, taesd
from . import common

log = logging.getLogger("sprint")

FOLDER = "vae_approx"
VARIANTS = ["auto", *taesd.VARIANTS, *taehv.VARIANTS]   # TAEHV: the Wan-VAE latent space, decode only
PRECISIONS = ["auto", "fp32", "bf16", "fp16"]
AUTO_TILES = [128, 96, 64, 48, 32]          # latent cells per tile side, tried when memory is short
MIN_TILE = 8                                # latent cells (64 px, the widget's step); at least the halo too
# Latent channels -> variants sharing that latent shape, most used first (a MODEL settles it).
BY_CHANNELS = {4: ["taesd", "taesdxl"], 16: ["taef1", "taesd3", "taew2_1"], 32: ["taef2"], 128: ["taef2"],
               48: ["taew2_2"]}
# Latent formats ComfyUI 0.3.64 names no tiny decoder for (Qwen-Image samples in Wan 2.1's space).
BY_LATENT_FORMAT = {"Wan21": "taew2_1", "Wan22": "taew2_2"}


def family(variant):
    return (taehv.VARIANTS.get(variant) or taesd.VARIANTS[variant]).family


def spatial(variant):
    """Pixels per latent cell of a variant's images."""
    return taehv.VARIANTS[variant].spatial if variant in taehv.VARIANTS else taesd.SPATIAL

_loaded = {}     # (path, mtime_ns) -> ModelPatcher around the network


def find_file(variant, part):
    """Full path of <variant>_<part>.{pth,safetensors,...} in models/vae_approx, or None."""
    stems = {f"{variant}_{part}"} | ({variant} if variant in taehv.VARIANTS else set())   # taew2_1.pth: both halves
    for name in folder_paths.get_filename_list(FOLDER):
        if os.path.splitext(os.path.basename(name))[0] in stems:
            return folder_paths.get_full_path(FOLDER, name)
    return None


def require_file(variant, part):
    path = find_file(variant, part)
    if path is None:
        folders = ", ".join(folder_paths.get_folder_paths(FOLDER))
        raise FileNotFoundError(
            f"{variant}_{part}.pth (or .safetensors) is not in models/{FOLDER} ({folders}). Download it from "
            f"github.com/madebyollin/{'taehv' if variant in taehv.VARIANTS else 'taesd'} ({family(variant)} latents) "
            f"into that folder, or pick another variant.")
    return path


def pick_variant(latents, model, override, part):
    """The variant to use: explicit, else the model's latent format, else the latent's channels
    (latents None: encoding, where there is no latent to look at)."""
    if override != "auto":
        return override
    if model is not None:
        latent_format = model.get_model_object("latent_format")
        name = (getattr(latent_format, "taesd_decoder_name", None) or "").removesuffix("_decoder")
        name = name or BY_LATENT_FORMAT.get(type(latent_format).__name__, "")
        if name not in VARIANTS[1:]:
            raise ValueError(f"the model's latent format ({type(latent_format).__name__}) has no TAESD-family "
                             f"model; choose a variant explicitly")
        return name
    if latents is None:
        raise ValueError("connect the MODEL or choose a variant: an image alone does not say which latent space to encode to")
    candidates = [v for v in BY_CHANNELS.get(latents.shape[1], ()) if latents.ndim == 4 or v in taehv.VARIANTS]
    if latents.ndim not in (4, 5) or not candidates:
        raise ValueError(f"no tiny decoder for latents of shape {tuple(latents.shape)} (image latents [B, C, H, W] "
                         f"with 4, 16, 32 or 128 channels; Wan-VAE latents [B, C, T, H, W] with 16 or 48)")
    installed = [v for v in candidates if find_file(v, part)]
    choice = (installed or candidates)[0]
    if len(candidates) > 1:
        log.warning("Sprint light VAE: %d-channel latents could be %s; using %s — connect the MODEL or set variant",
                    latents.shape[1], " / ".join(f"{v} ({family(v)})" for v in candidates), choice)
    return choice


def load(variant, part):
    """The network as a ModelPatcher (cached per file and modification time)."""
    path = require_file(variant, part)
    tag = (path, os.stat(path).st_mtime_ns)
    if tag not in _loaded:
        if variant in taehv.VARIANTS:
            net = taehv.load_decoder(path)
        else:
            net = taesd.load_decoder(path) if part == "decoder" else taesd.load_encoder(path)
        _loaded[tag] = comfy.model_patcher.ModelPatcher(net, load_device=mm.vae_device(), offload_device=mm.vae_offload_device())
    return _loaded[tag]


def pick_precision(precision, device):
    """auto on a GPU: the half type ComfyUI's own VAE would use there (its vae_dtype: bf16 where
    the device has it, e.g. Ampere/Hopper, and --fp16-vae/--bf16-vae/--fp32-vae respected), else
    fp16 where ComfyUI runs fp16 (TAESD is safe in fp16, unlike the SD VAE), else fp32."""
    if precision != "auto":
        return precision
    if device.type != "cpu":
        dtype = mm.vae_dtype(device, [torch.bfloat16, torch.float16])
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "bf16"      # native bf16 (AVX512-BF16/AMX): ~2.5x faster, PSNR within 0.1 dB (README)
    return "fp32"


def run_video(variant, x, tile, precision):
    """TAEHV decode of [B, C, T, h, w] (or [B, C, h, w]) latents, one sample at a time through the
    memory manager, tiled when a whole sample does not fit; frames come back flattened into the
    batch, as ComfyUI's VAEDecode returns video: [B * T', 3, H, W]."""
    patcher = load(variant, "decoder")
    device = patcher.load_device
    precision = pick_precision(precision, device)
    decoder = taehv.VideoDecoder(variant, patcher.model, precision)
    frames, (rows, cols) = (x.shape[2] if x.ndim == 5 else 1), x.shape[-2:]

    def need(t):
        return taehv.working_memory(rows, cols, frames, t, decoder.halo, 4 if precision == "fp32" else 2,
                                    decoder.variant.patch)

    mm.load_models_gpu([patcher], memory_required=need(tile))
    if tile == 0 and need(0) > mm.get_free_memory(device):
        tile = next((t for t in AUTO_TILES if need(t) <= mm.get_free_memory(device)), AUTO_TILES[-1])
    bar = common.Progress(x.shape[0] * taesd.tile_count(rows, cols, tile))
    out = torch.cat([decoder.decode(x[i:i + 1].to(device), tile, bar.update) for i in range(x.shape[0])])
    log.info("Sprint light VAE: %s decoded %d latent frame(s) to %d", variant, frames, out.shape[1])
    return out.flatten(0, 1).to(mm.intermediate_device())


def run(variant, part, x, tile, precision):
    """Decode or encode x through the memory manager: honest per-sample estimate, the batch
    chunked to what is free, tiles when one whole sample does not fit (or when asked)."""
    if variant in taehv.VARIANTS:
        if part != "decoder":
            raise ValueError(f"{variant} ({family(variant)} latents): Sprint has the TAEHV decoder only; encode "
                             f"with the model's VAE (VAE Encode)")
        return run_video(variant, x, tile, precision)
    patcher = load(variant, part)
    device = patcher.load_device
    precision = pick_precision(precision, device)
    vae = taesd.TinyVAE(variant, **{part: patcher.model}, precision=precision)
    runner = getattr(vae, part)
    minimum = max(runner.halo, MIN_TILE)
    if 0 < tile < minimum:       # each tile computes its halo too: tiny tiles multiply the work (8 px: 255x)
        log.warning("Sprint light VAE: tile_size %d px is below the minimum %d px (the %s's receptive halo); "
                    "using %d px", tile * taesd.SPATIAL, minimum * taesd.SPATIAL, part, minimum * taesd.SPATIAL)
        tile = minimum
    rows, cols = x.shape[-2:] if part == "decoder" else (x.shape[-2] // taesd.SPATIAL, x.shape[-1] // taesd.SPATIAL)
    if part == "decoder" and vae.variant.packed and x.shape[1] == 4 * vae.variant.latent_channels:
        rows, cols = 2 * rows, 2 * cols
    act_bytes = 4 if precision == "fp32" else 2

    def need(t):
        return taesd.working_memory(rows, cols, t, runner.halo, act_bytes)

    mm.load_models_gpu([patcher], memory_required=need(tile))
    log.info("Sprint light VAE: %s %s", variant, part)
    free = mm.get_free_memory(device)
    if tile == 0 and need(0) > free:
        tile = next((t for t in AUTO_TILES if need(t) <= free), AUTO_TILES[-1])
    batch = max(1, min(x.shape[0], int(free // need(tile))))
    chunks = -(-x.shape[0] // batch)
    bar = common.Progress(chunks * taesd.tile_count(rows, cols, tile))
    x = x.to(device)
    code = vae.decode if part == "decoder" else vae.encode
    return code(x, tile=tile, batch_size=batch, progress=bar.update).to(mm.intermediate_device())


def variant_input(part):
    return io.Combo.Input("variant", options=VARIANTS, default="auto", optional=True,
                          tooltip=f"Which tiny {part}: auto follows the MODEL's latent format (Wan 2.1 / Qwen-Image: "
                                  "taew2_1, Wan 2.2-5B: taew2_2), else the latent's channels (4: taesd, 16: taef1, "
                                  "32/128: taef2, video [B, C, T, H, W]: taew2_1 / taew2_2; ambiguous ones are "
                                  "warned about: connect MODEL for SDXL, SD3 or Qwen-Image).")


def common_inputs():
    return [
        io.Int.Input("tile_size", default=0, min=0, max=16384, step=64, optional=True,
                     tooltip="Tile side in pixels for huge images (0: automatic, tiles only when memory is short). "
                             "Tiles overlap by the network's receptive field, so the result equals a whole decode."),
        io.Combo.Input("precision", options=PRECISIONS, default="auto", optional=True,
                       tooltip="auto: on a GPU the half type ComfyUI's VAE uses there (bf16 on Ampere/Hopper, else fp16), "
                               "bf16 on CPUs with native bf16, else fp32."),
    ]


class SprintLightVAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SprintLightVAEDecode",
            display_name="Sprint Light VAE Decode",
            category="Sprint/latent",
            description="Decodes latents with a tiny TAESD-family decoder (taesd, taesdxl, taesd3, taef1, taef2; "
                        "taew2_1 / taew2_2 for Wan and Qwen-Image latents, video frames included) from "
                        "models/vae_approx: tens of times faster than the full VAE, slightly softer. Only the "
                        "decoder file is needed.",
            inputs=[
                io.Latent.Input("samples", tooltip="The latent to decode."),
                io.Model.Input("model", optional=True, tooltip="The diffusion model the latent belongs to: picks the decoder."),
                variant_input("decoder"),
                *common_inputs(),
            ],
            outputs=[io.Image.Output(tooltip="The decoded image.")],
        )

    @classmethod
    def execute(cls, samples, model=None, variant="auto", tile_size=0, precision="auto") -> io.NodeOutput:
        common.check_inputs(cls, locals())
        latents = samples["samples"]
        common.check_latent(latents, "samples")
        variant = pick_variant(latents, model, variant, "decoder")
        if variant not in taehv.VARIANTS:             # 5-D (video, Qwen-Image) latents: TAEHV decoders only
            common.check_latent(latents, "samples", ranks=(4,))
        images = run(variant, "decoder", latents, tile_size // spatial(variant), precision)
        return io.NodeOutput(images.movedim(1, -1))


class SprintLightVAEEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SprintLightVAEEncode",
            display_name="Sprint Light VAE Encode",
            category="Sprint/latent",
            description="Encodes images with a tiny TAESD-family encoder from models/vae_approx (for img2img drafts "
                        "and previews; the full VAE encodes more faithfully).",
            inputs=[
                io.Image.Input("pixels", tooltip="The image to encode (cropped to a multiple of 8 px, 16 for taef2)."),
                io.Model.Input("model", optional=True, tooltip="The diffusion model the latent is for: picks the encoder."),
                io.Combo.Input("variant", options=VARIANTS, default="auto", optional=True,
                               tooltip="Which TAESD encoder: auto follows the MODEL's latent format (then MODEL is needed)."),
                *common_inputs(),
            ],
            outputs=[io.Latent.Output(tooltip="The encoded latent (unscaled, like VAEEncode's).")],
        )

    @classmethod
    def execute(cls, pixels, model=None, variant="auto", tile_size=0, precision="auto") -> io.NodeOutput:
        common.check_inputs(cls, locals())
        common.check_latent(pixels, "pixels", ranks=(4,))
        variant = pick_variant(None, model, variant, "encoder")
        if variant in taehv.VARIANTS:
            run(variant, "encoder", None, 0, precision)        # refuses, naming the family
        multiple = taesd.SPATIAL * (2 if taesd.VARIANTS[variant].packed else 1)
        images = pixels[..., :3].movedim(-1, 1)
        for dim in (2, 3):   # centre crop, as ComfyUI's VAEEncode does
            keep = images.shape[dim] // multiple * multiple
            images = images.narrow(dim, (images.shape[dim] - keep) // 2, keep)
        return io.NodeOutput({"samples": run(variant, "encoder", images, tile_size // taesd.SPATIAL, precision)})


NODES = [SprintLightVAEDecode, SprintLightVAEEncode]
