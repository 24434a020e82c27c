"""Models that need no download: SD1.5-architecture networks with deterministic random weights,
and the exact Gaussian-mixture denoiser presented to ComfyUI as a model.

Used by the benchmark (timings do not depend on weight values) and by the host tests. Built from
ComfyUI's own config classes, so the code paths are the ones real checkpoints take.
"""
import contextlib
import copy
import dataclasses
import math
import pathlib

import torch

import comfy.latent_formats
import comfy.ldm.models.autoencoder
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.taesd.taesd
import comfy.text_encoders.llama
import comfy.text_encoders.qwen_vl
import comfy.utils

from ..engines import taehv, taesd
from ..engines.files import atomic_save
from ..engines.gmm import GaussianMixture


def init_weights_(module, seed=0):
    """Fan-in normal weights, zero biases, norms at 1/0 — deterministic for a seed.

    comfy.ops layers skip weight init; std 0.02 everywhere would drive CPU float denormals, and
    zeroed norms would make every output 0.
    """
    g = torch.Generator().manual_seed(seed)
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d)
    with torch.no_grad():
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                if p.numel() == 0:          # e.g. SDXL's empty label embedding placeholder
                    continue
                if isinstance(m, norms):
                    p.fill_(1.0 if name == "weight" else 0.0)
                elif p.ndim >= 2:
                    fan_in = p[0].numel() if not isinstance(m, torch.nn.Embedding) else 1
                    p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
                else:
                    p.zero_()
            # ComfyUI's MMDiT (SD3) allocates its positional table as a buffer with torch.empty, for
            # the checkpoint to fill: uninitialized memory made the stand-in's output NaN in some runs.
            pos = dict(m.named_buffers(recurse=False)).get("pos_embed")
            if pos is not None and pos.is_floating_point():
                pos.copy_(torch.randn(pos.shape, generator=g) / math.sqrt(pos.shape[-1]))
    return module


def sd15_unet_config(model_channels=32, levels=2, res_blocks=1, context_dim=768):
    """An SD1.5-family UNet config. (320, 4, 2) is real SD1.5 (~860 M params, no attention at the
    deepest level); (320, 2, 1) the shallow full-width one (~107 M) that still loads as SD15."""
    attn = [1 if level < min(levels, 3) else 0 for level in range(levels)]
    return {
        "model_channels": model_channels, "channel_mult": [1, 2, 4, 4][:levels],
        "num_res_blocks": [res_blocks] * levels,
        "transformer_depth": [a for a in attn for _ in range(res_blocks)],
        "transformer_depth_output": [a for a in attn for _ in range(res_blocks + 1)],
        "transformer_depth_middle": 1, "context_dim": context_dim, "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": None, "in_channels": 4, "out_channels": 4,
        "use_linear_in_transformer": False, "use_temporal_resblock": False,
        "use_temporal_attention": False, "use_checkpoint": False, "image_size": 32,
        "num_heads": 8, "num_head_channels": -1,
    }


# (model_channels, levels, res_blocks, context_dim); "tiny" pairs with the tiny CLIP (width 64).
UNET_SIZES = {"tiny": (32, 2, 1, 64), "shallow": (320, 2, 1, 768), "full": (320, 4, 2, 768)}


def inference_dtype(conf):
    """(weight dtype, manual-cast dtype) as ComfyUI's loader picks them for the load device: fp16/bf16
    on GPUs, like a real checkpoint gets; fp32 on CPU (where every CPU figure was measured)."""
    device = mm.get_torch_device()
    if device.type == "cpu":
        return torch.float32, None
    dtype = mm.unet_dtype(device, supported_dtypes=conf.supported_inference_dtypes)
    return dtype, mm.unet_manual_cast(dtype, device, conf.supported_inference_dtypes)


def sd15_model(size="tiny", seed=0):
    """A MODEL (ModelPatcher) of SD1.5 architecture with random weights; size in UNET_SIZES."""
    conf = comfy.supported_models.SD15(sd15_unet_config(*UNET_SIZES[size]))
    conf.set_inference_dtype(*inference_dtype(conf))
    base = init_weights_(conf.get_model({}), seed)
    return comfy.model_patcher.ModelPatcher(base, mm.get_torch_device(), mm.unet_offload_device())


def _unet(model_channels=32, context_dim=64, **extra):
    return dict(sd15_unet_config(model_channels, 2, 1, context_dim), **extra)


# Tiny configs of every family ComfyUI 0.3.64 samples with, in the keys model_detection produces
# from real checkpoints: family -> (supported_models class, unet_config, model type override).
FAMILIES = {
    "SD15": ("SD15", _unet(), None),
    "SD20-v": ("SD20", _unet(64, use_linear_in_transformer=True), "V_PREDICTION"),   # 64-channel heads
    "SDXL": ("SDXL", _unet(64, adm_in_channels=2816, num_classes="sequential", use_linear_in_transformer=True), None),
    "SD3": ("SD3", {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "input_size": None,
                    "adm_in_channels": 32, "num_patches": 64 * 64, "pos_embed_max_size": 64,
                    "pos_embed_scaling_factor": None, "x_block_self_attn_layers": [],
                    "context_embedder_config": {"target": "torch.nn.Linear",
                                                "params": {"in_features": 64, "out_features": 128}}}, None),
    "Flux": ("Flux", {"image_model": "flux", "in_channels": 16, "out_channels": 16, "patch_size": 2,
                      "vec_in_dim": 32, "context_in_dim": 64, "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2,
                      "depth": 1, "depth_single_blocks": 1, "axes_dim": [8, 12, 12], "theta": 10000,
                      "qkv_bias": True, "guidance_embed": True}, None),
    "QwenImage": ("QwenImage", {"image_model": "qwen_image", "in_channels": 64, "out_channels": 16, "num_layers": 1,
                                "attention_head_dim": 32, "num_attention_heads": 2, "joint_attention_dim": 64,
                                "axes_dims_rope": (8, 12, 12)}, None),
    "Wan21": ("WAN21_T2V", {"image_model": "wan2.1", "model_type": "t2v", "dim": 64, "ffn_dim": 128, "num_heads": 2,
                            "num_layers": 1, "in_dim": 16, "out_dim": 16, "text_dim": 64, "freq_dim": 256,
                            "patch_size": (1, 2, 2), "window_size": (-1, -1), "qk_norm": True,
                            "cross_attn_norm": True, "eps": 1e-6}, None),
    "Wan22": ("WAN22_T2V", {"image_model": "wan2.1", "model_type": "t2v", "dim": 64, "ffn_dim": 128, "num_heads": 2,
                            "num_layers": 1, "in_dim": 48, "out_dim": 48, "text_dim": 64, "freq_dim": 256,
                            "patch_size": (1, 2, 2), "window_size": (-1, -1), "qk_norm": True,
                            "cross_attn_norm": True, "eps": 1e-6}, None),
    "Lumina2": ("Lumina2", {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 64,
                            "cap_feat_dim": 64, "n_layers": 1, "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 1,
                            "multiple_of": 16, "qk_norm": True, "axes_dims": [8, 12, 12],
                            "axes_lens": [300, 512, 512]}, None),
    "HiDream": ("HiDream", {"image_model": "hidream", "attention_head_dim": 32, "axes_dims_rope": [16, 8, 8],
                            "caption_channels": [64, 64], "max_resolution": [128, 128], "in_channels": 16,
                            "llama_layers": [0, 1, 1], "num_attention_heads": 2, "num_routed_experts": 2,
                            "num_activated_experts": 1, "num_layers": 1, "num_single_layers": 1,
                            "out_channels": 16, "patch_size": 2, "text_emb_dim": 32}, None),
}


# One block at the real width (Qwen-Image: 24 heads x 128, 3584-wide text; Flux: one double and one
# single block, 3072 wide, T5-XXL text) for memory and speed benches: a
# model evaluation's peak is one block's activations, the same in block 1 as in block 60.
BENCH_WIDTHS = {"QwenImage": {"attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 3584,
                              "axes_dims_rope": (16, 56, 56)},
                "Flux": {"hidden_size": 3072, "num_heads": 24, "mlp_ratio": 4.0, "context_in_dim": 4096,
                         "vec_in_dim": 768, "axes_dim": [16, 56, 56]}}


def family_model(family, seed=0, **overrides):
    """A tiny MODEL of `family` (a FAMILIES key) with random weights, built by ComfyUI's own
    supported-model class, so sampling, latent format and wrappers take the real code paths."""
    name, unet_config, model_type = FAMILIES[family]
    conf = getattr(comfy.supported_models, name)(dict(copy.deepcopy(unet_config), **overrides))
    conf.set_inference_dtype(torch.float32, None)
    if model_type is not None:
        conf.model_type = lambda state_dict, prefix="": getattr(comfy.model_base.ModelType, model_type)
    base = init_weights_(conf.get_model({}), seed)
    return comfy.model_patcher.ModelPatcher(base, mm.get_torch_device(), mm.unet_offload_device())


def bench_family_model(family, seed=0):
    """family_model at the real width where BENCH_WIDTHS has it (else the tiny one)."""
    return family_model(family, seed, **BENCH_WIDTHS.get(family, {}))


def bench_family_conditioning(family, seed=0):
    """family_conditioning at the width of bench_family_model's text input."""
    return family_conditioning(family, seed, overrides=BENCH_WIDTHS.get(family))


def family_latent(family, height=16, width=16, frames=1, batch=1):
    """An empty LATENT of the shape the family samples in (5-D [B, C, T, H, W] for Wan and
    Qwen-Image, as their EmptyLatent nodes make it)."""
    channels = FAMILIES[family][1].get("in_dim", 4 if family.startswith("SD") and family != "SD3" else 16)
    if family.startswith("Wan") or family == "QwenImage":
        return {"samples": torch.zeros(batch, channels, frames, height, width)}
    return {"samples": torch.zeros(batch, channels, height, width)}


def family_conditioning(family, seed=0, tokens=None, width=None, overrides=None):
    """A CONDITIONING shaped like the family's text encoder output: context of the model's width
    plus the extra keys ComfyUI's encoders add (pooled vectors, Llama hidden states, masks).
    Tokens: CLIP's 77 for the UNet families, a short 8 for the LLM/T5 ones (any length works).
    overrides: the model's unet_config overrides (family_model's), for the widths they change."""
    g = torch.Generator().manual_seed(seed)
    tokens = tokens or (77 if "context_dim" in FAMILIES[family][1] else 8)
    name, config, _ = FAMILIES[family]
    config = dict(config, **(overrides or {}))
    width = width or config.get("context_dim") or config.get("joint_attention_dim") or config.get("context_in_dim") or 64
    extra = {}
    if family == "SDXL":
        extra["pooled_output"] = torch.randn(1, 1280, generator=g)
    elif family == "SD3":
        extra["pooled_output"] = torch.randn(1, config["adm_in_channels"], generator=g)
    elif family == "Flux":
        extra.update(pooled_output=torch.randn(1, config["vec_in_dim"], generator=g), guidance=3.5)
    elif family == "HiDream":
        extra.update(pooled_output=torch.randn(1, config["text_emb_dim"], generator=g),
                     conditioning_llama3=torch.randn(1, 2, tokens, config["caption_channels"][1], generator=g))
    elif family == "Lumina2":
        extra["attention_mask"] = torch.ones(1, tokens, dtype=torch.long)
    return [[torch.randn(1, tokens, width, generator=g), extra]]


# Qwen-Image files at test size. ComfyUI 0.3.64 reads only in_channels and the block count from a
# Qwen-Image diffusion model file, and builds the Qwen2.5-VL text encoder at its one real size
# (3584 wide, 28 layers, a 1280-wide vision tower): a tiny file loads through UNETLoader and
# CLIPLoader (type qwen_image) only while tiny_qwen_image_loaders() shrinks those sizes.
QWEN_IMAGE_TINY_WIDTHS = {k: FAMILIES["QwenImage"][1][k]
                          for k in ("attention_head_dim", "num_attention_heads", "joint_attention_dim", "axes_dims_rope")}
# 64 wide = the tiny Qwen-Image's joint_attention_dim; 4 KV heads x 128 keep the k_proj bias at the
# 512 that ComfyUI recognises Qwen2.5-7B by.
QWEN_TEXT_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
QWEN_VISION_TINY = {"hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "num_layers": 1}


@contextlib.contextmanager
def tiny_qwen_image_loaders():
    """While active, ComfyUI builds Qwen-Image and its text encoder at the tiny sizes above (so the
    files qwen_image_*_file writes load); everything is restored on exit."""
    llama, qwen_vl = comfy.text_encoders.llama, comfy.text_encoders.qwen_vl
    config = dataclasses.make_dataclass("TinyQwen25VLConfig", [(k, int, dataclasses.field(default=v))
                                                               for k, v in QWEN_TEXT_TINY.items()],
                                        bases=(llama.Qwen25_7BVLI_Config,))
    vision = qwen_vl.Qwen2VLVisionTransformer
    patches = {(comfy.supported_models.QwenImage, "unet_extra_config"): QWEN_IMAGE_TINY_WIDTHS,
               (llama, "Qwen25_7BVLI_Config"): config,
               (qwen_vl, "Qwen2VLVisionTransformer"): lambda **kw: vision(**dict(kw, **QWEN_VISION_TINY))}
    saved = {where: getattr(*where) for where in patches}
    try:
        for (owner, name), value in patches.items():
            setattr(owner, name, value)
        yield
    finally:
        for (owner, name), value in saved.items():
            setattr(owner, name, value)


def qwen_image_diffusion_model_file(path, seed=0):
    """The tiny Qwen-Image (FAMILIES) as a diffusion_models file UNETLoader detects as Qwen-Image."""
    return save(family_model("QwenImage", seed).model.diffusion_model.state_dict(), path)


def qwen_image_text_encoder_file(path, seed=0):
    """A tiny Qwen2.5-VL text encoder (language model + vision tower, random weights) in the file
    layout CLIPLoader loads with type qwen_image, its output as wide as the tiny Qwen-Image's text input."""
    with tiny_qwen_image_loaders():
        encoder = comfy.text_encoders.llama.Qwen25_7BVLI({}, torch.float32, "cpu", comfy.ops.manual_cast)
    init_weights_(encoder, seed)
    for m in encoder.modules():
        if type(m).__name__ == "RMSNorm":        # init_weights_ zeroes their gains: every hidden state would be 0
            torch.nn.init.ones_(m.weight)
    return save(encoder.state_dict(), path)


TINY_CLIP_CONFIG = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
                    "num_hidden_layers": 2, "projection_dim": 64}


def sd15_clip(tiny=True, seed=0):
    """A CLIP of the SD1.x family (SD1 tokenizer, offline) with random weights."""
    options = {"clip_l_model_config": TINY_CLIP_CONFIG} if tiny else {}
    clip = comfy.sd.CLIP(comfy.supported_models.SD15({}).clip_target(), model_options=options)
    init_weights_(clip.cond_stage_model, seed)
    return clip


def taesd_state_dict(latent_channels=4, scale=0.18215, shift=0.0, seed=0):
    """TAESD encoder + decoder keys as comfy.sd.VAE expects them, with random weights."""
    sd = init_weights_(comfy.taesd.taesd.TAESD(latent_channels=latent_channels), seed).state_dict()
    sd["vae_scale"], sd["vae_shift"] = torch.tensor(scale), torch.tensor(shift)
    return sd


SMALL_KL_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3,
                     "out_ch": 3, "ch": 32, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 1,
                     "attn_resolutions": [], "dropout": 0.0}
FULL_KL_DDCONFIG = dict(SMALL_KL_DDCONFIG, ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2)


def save(sd, path):
    """A state dict written atomically as safetensors (nothing half-written if interrupted)."""
    atomic_save(path, lambda tmp: comfy.utils.save_torch_file(sd, str(tmp)))
    return path


def taesd_decoder_file(sd):
    """The decoder half of a TAESD state dict in the official file's key layout."""
    return {k[len("taesd_decoder."):]: v for k, v in sd.items() if k.startswith("taesd_decoder.")}


def write_taesd_decoder(path, seed=4):
    """A taesd decoder file (official key layout, random weights), as models/vae_approx holds it;
    returns the whole TAESD state dict it came from (for ComfyUI's own TAESD-as-VAE)."""
    sd = taesd_state_dict(seed=seed)
    save(taesd_decoder_file(sd), path)
    return sd


def light_decoder_state_dict(variant, seed=4):
    """A tiny decoder of `variant` (TAESD or TAEHV family) with random weights, in the official
    file's key layout (TAEHV: the whole file's `decoder.` keys)."""
    if variant in taehv.VARIANTS:
        v = taehv.VARIANTS[variant]
        net = init_weights_(taehv.Decoder(v.latent_channels, v.patch), seed)
        return {f"decoder.{k}": t for k, t in net.state_dict().items()}
    return taesd_decoder_file(taesd_state_dict(taesd.VARIANTS[variant].latent_channels, seed=seed))


def write_light_decoder(variant, folder, seed=4):
    """`variant`'s decoder file, named as models/vae_approx holds it (taew2_1.safetensors,
    taesd_decoder.safetensors, ...); returns its path."""
    name = variant if variant in taehv.VARIANTS else f"{variant}_decoder"
    return save(light_decoder_state_dict(variant, seed), pathlib.Path(folder) / f"{name}.safetensors")


def kl_state_dict(ddconfig=FULL_KL_DDCONFIG, seed=0):
    model = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
    return init_weights_(model, seed).state_dict()


def taesd_vae(seed=0):
    """A VAE of TAESD architecture (SD1.x latents) with random weights."""
    return comfy.sd.VAE(sd=taesd_state_dict(seed=seed))


def small_kl_vae(seed=0):
    """A small KL autoencoder (SD VAE architecture, 32 base channels) with random weights."""
    return comfy.sd.VAE(sd=kl_state_dict(SMALL_KL_DDCONFIG, seed),
                        config={"params": {"embed_dim": 4, "ddconfig": SMALL_KL_DDCONFIG}})


# The real SDXL base UNet (~2.6 B params) as model_detection reads it from a checkpoint: nothing
# smaller is detected as SDXL (its supported-model class matches width and depths exactly).
SDXL_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
             "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
             "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
             "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
             "use_temporal_attention": False, "use_temporal_resblock": False}


def sdxl_model(seed=0):
    """The SDXL base model (BaseModel) with random weights, built in fp16 (5.2 GB)."""
    conf = comfy.supported_models.SDXL(dict(SDXL_UNET))
    conf.set_inference_dtype(torch.float16, None)
    return init_weights_(conf.get_model({}), seed)


def checkpoint_state_dict(base, clip, vae="taesd", seed=0, dtype=torch.float16):
    """A whole checkpoint of `base` (a BaseModel), `clip` (comfy.sd.CLIP) and a full KL VAE or a
    TAESD, all random, in the original key layout ComfyUI's own checkpoint saving writes, so
    CheckpointLoaderSimple detects its family."""
    first_stage = taesd_state_dict(seed=seed + 2) if vae == "taesd" else kl_state_dict(FULL_KL_DDCONFIG, seed + 2)
    sd = base.state_dict_for_saving(clip.cond_stage_model.state_dict(), first_stage)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


def write_sd15_checkpoint(path, unet="shallow", vae="taesd", seed=0):
    """A whole SD1.5 checkpoint (UNet "shallow" or "full", full CLIP-L, VAE "kl" or "taesd") at
    `path` (safetensors); returns the path."""
    return save(checkpoint_state_dict(sd15_model(unet, seed).model, sd15_clip(tiny=False, seed=seed + 1), vae, seed), path)


def write_sdxl_checkpoint(path, vae="kl", seed=0):
    """A whole SDXL-architecture checkpoint (the real UNet, CLIP-L + CLIP-G, VAE "kl" or "taesd";
    about 6.9 GB in fp16 with the KL VAE) at `path`; returns the path."""
    base = sdxl_model(seed)
    clip = comfy.sd.CLIP(base.model_config.clip_target())
    init_weights_(clip.cond_stage_model, seed + 1)
    return save(checkpoint_state_dict(base, clip, vae, seed), path)


def random_conditioning(context_dim, seed=0, tokens=77):
    """A CONDITIONING of random text embeddings of a model's width: stands in for a prompt where
    only shapes matter (timings, call counts), without a text encoder."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, context_dim, generator=g), {}]]


class GMMLatentFormat(comfy.latent_formats.LatentFormat):
    """Identity scaling: the mixture already lives in the sampler's latent space."""

    def __init__(self, channels):
        self.latent_channels = channels


class MixtureDenoiser(torch.nn.Module):
    """Stands where the UNet would (ComfyUI reads the model dtype from it, meters hook its calls):
    the exact mixture denoiser D(x; sigma, label)."""
    dtype = torch.float32

    def __init__(self, gmm):
        super().__init__()
        self.gmm = gmm

    def forward(self, x, sigma, label=None):
        return self.gmm.denoise(x, sigma, label)


class GMMModel(comfy.model_base.BaseModel):
    """A ComfyUI model whose apply_model returns the exact mixture denoiser D(x; sigma).

    The class label rides in the conditioning tensor ([B, 1, 1], -1 = unconditional), so
    CFGGuider batches cond and uncond like any model. Flow (CONST) models see
    x = (1 - s) x0 + s n, i.e. the EDM state x / (1 - s) at sigma = s / (1 - s).
    """

    def __init__(self, gmm: GaussianMixture, model_type=comfy.model_base.ModelType.EPS):
        conf = comfy.supported_models.SD15({"disable_unet_model_creation": True})
        conf.latent_format = GMMLatentFormat(gmm.shape[0])
        super().__init__(conf, model_type=model_type, device=torch.device("cpu"))
        self.diffusion_model = MixtureDenoiser(gmm)
        self.flow = model_type == comfy.model_base.ModelType.FLOW

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        sigma = t.to(torch.float64).reshape(-1).expand(x.shape[0])
        label = None if c_crossattn is None else c_crossattn[:, 0, 0].round().long()
        state = x.to(torch.float64)
        if self.flow:
            keep = (1 - sigma).clamp(min=1e-6)
            state, sigma = state / keep.reshape(-1, 1, 1, 1), sigma / keep
        return self.diffusion_model(state, sigma, label).to(x.dtype)


def gmm_model(gmm, model_type="eps"):
    """The mixture as a MODEL; model_type one of eps, v_prediction, flow."""
    kind = {"eps": comfy.model_base.ModelType.EPS, "v_prediction": comfy.model_base.ModelType.V_PREDICTION,
            "flow": comfy.model_base.ModelType.FLOW}[model_type]
    return comfy.model_patcher.ModelPatcher(GMMModel(gmm, kind), torch.device("cpu"), torch.device("cpu"))


def gmm_conditioning(label):
    """CONDITIONING selecting one class of the mixture (label -1: the full, unconditional mixture)."""
    return [[torch.full((1, 1, 1), float(label)), {}]]
