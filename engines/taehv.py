"""Tiny AutoEncoders for the Wan-VAE latent space (TAEHV family, Ollin Boer Bohan, 2025): decoders
of Wan 2.1 / Qwen-Image latents (taew2_1) and Wan 2.2-5B latents (taew2_2), images and video.

The TAESD decoder made temporal: each block at a resolution level is a MemBlock, a TAESD block
that also sees its own input one latent frame earlier (zeros before the first), and two of the
three levels end in TGrow, a 1x1 conv that turns every frame into two. Four latent frames decode
to 4 * 4 - 3 = 13 frames (the first frames_to_trim outputs only warm the memory up, as the Wan
VAE's causal first frame), a single latent (an image, T = 1) to one. Everything is a local conv
stack in space, so tiles with a receptive halo are exact; all frames of a tile decode together.

Files are the official ones (`taew2_1.pth`, `taew2_2.pth`: `encoder.N.*` + `decoder.N.*`
Sequential-index keys) or a decoder-only file with the `decoder.` prefix stripped, as .pth
(weights_only) or .safetensors. Latents are the Wan VAE's own (LATENT's unscaled samples).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .taesd import Clamp, conv, load_file, receptive_halo, tiled

N_F = (256, 128, 64, 64)      # decoder widths per level
TIME_UPSCALE = (False, True, True)


@dataclass(frozen=True)
class Variant:
    latent_channels: int
    patch: int              # output pixel-shuffle factor: spatial = 8 * patch
    family: str = ""

    @property
    def spatial(self):
        return 8 * self.patch


VARIANTS = {
    "taew2_1": Variant(16, 1, "Wan 2.1 / Qwen-Image"),
    "taew2_2": Variant(48, 2, "Wan 2.2 (5B)"),
}


class MemBlock(nn.Module):
    """A TAESD block over [x, x one frame earlier]: past flows into the present."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.conv = nn.Sequential(conv(2 * n_in, n_out), nn.ReLU(), conv(n_out, n_out), nn.ReLU(), conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x, past):
        return self.act(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class TGrow(nn.Module):
    """Each frame's C channels -> `stride` consecutive frames of C channels (a 1x1 conv)."""

    def __init__(self, n_f, stride):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f, n_f * stride, 1, bias=False)

    def forward(self, x):
        return self.conv(x).reshape(-1, x.shape[1], *x.shape[-2:])


def Decoder(latent_channels=16, patch=1, time_upscale=TIME_UPSCALE):
    """The official Sequential layout (indices are the file's keys)."""
    layers = [Clamp(), conv(latent_channels, N_F[0]), nn.ReLU()]
    for level, grow in enumerate(time_upscale):
        n, n_next = N_F[level], N_F[level + 1]
        layers += [MemBlock(n, n), MemBlock(n, n), MemBlock(n, n), nn.Upsample(scale_factor=2),
                   TGrow(n, 2 if grow else 1), conv(n, n_next, bias=False)]
    return nn.Sequential(*layers, nn.ReLU(), conv(N_F[-1], 3 * patch ** 2))


def frames_out(frames, net):
    """Video frames a decoder makes of `frames` latent frames (1 + 4 (T - 1) for Wan)."""
    grow = math.prod(m.stride for m in net if isinstance(m, TGrow))
    return grow * frames - (grow - 1)


def decoder_state_dict(sd):
    """The decoder's keys of an official file (whole TAEHV or decoder only)."""
    if any(k.startswith("decoder.") for k in sd):
        return {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
    return sd


def load_decoder(path):
    sd = decoder_state_dict(load_file(path))
    try:
        channels, patch = sd["1.weight"].shape[1], math.isqrt(sd["22.weight"].shape[0] // 3)
        net = Decoder(channels, patch)
        for i, m in enumerate(net):      # a file trained with time upscaling everywhere: keep the last frame's
            key = f"{i}.conv.weight"
            if isinstance(m, TGrow) and key in sd and sd[key].shape[0] > m.conv.weight.shape[0]:
                sd[key] = sd[key][-m.conv.weight.shape[0]:]
        net.load_state_dict(sd)
    except (KeyError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path} is not a TAEHV-family decoder in the official key layout "
                         f"('decoder.1.weight', 'decoder.3.conv.0.weight', ...): {e}") from None
    return net.float().eval().requires_grad_(False)


def latent_channels(net):
    return net[1].in_channels


def patch_size(net):
    return math.isqrt(net[-1].out_channels // 3)


def run_frames(net, z):
    """[N, T, C, h, w] latents -> [N, T', 3, H, W] frames in 0..1, all frames at once."""
    n, t = z.shape[:2]
    x = z.reshape(n * t, *z.shape[2:])
    for block in net:
        if isinstance(block, MemBlock):
            frames = x.reshape(n, -1, *x.shape[1:])
            past = F.pad(frames, (0, 0, 0, 0, 0, 0, 1, 0))[:, :-1]      # zeros before the first frame
            x = block(x, past.reshape(x.shape))
        else:
            x = block(x)
    x = F.pixel_shuffle(x, patch_size(net)) if patch_size(net) > 1 else x
    x = x.reshape(n, -1, *x.shape[1:])
    return x[:, x.shape[1] - frames_out(t, net):].clamp(0, 1)


class VideoDecoder:
    """A TAEHV decoder in ComfyUI's LATENT convention: [B, C, T, h, w] (or [B, C, h, w]) ->
    frames [B, T', 3, H, W]; tiled in space (tile: latent cells per side, 0 = whole)."""

    def __init__(self, variant, net, precision="fp32"):
        self.name, self.variant, self.net, self.precision = variant, VARIANTS[variant], net, precision
        if latent_channels(net) != self.variant.latent_channels:
            raise ValueError(f"{variant} expects {self.variant.latent_channels} latent channels, "
                             f"the weights have {latent_channels(net)}")
        self.halo = receptive_halo(net, 1.0)

    def _context(self, device):
        if self.precision == "fp32":
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[self.precision])

    def decode(self, latents, tile=0, progress=None):
        if latents.ndim == 4:
            latents = latents.unsqueeze(2)
        if latents.ndim != 5 or latents.shape[1] != self.variant.latent_channels:
            raise ValueError(f"{self.name} decodes {self.variant.latent_channels}-channel latents [B, C, T, H, W], "
                             f"got {tuple(latents.shape)}")
        z = latents.movedim(1, 2)                                    # [B, T, C, h, w]
        b, t, c = z.shape[:3]
        frames = frames_out(t, self.net)

        def decode_flat(x):          # tiled() crops [B, T*C, h, w]; frames come back as [B, T'*3, H, W]
            out = run_frames(self.net, x.reshape(b, t, c, *x.shape[-2:]))
            return out.reshape(b, frames * 3, *out.shape[-2:])
        with torch.inference_mode(), self._context(latents.device):
            flat = z.reshape(b, t * c, *z.shape[-2:])
            rows, cols = flat.shape[-2:]
            if tile and (rows > tile or cols > tile):
                out = tiled(decode_flat, flat, tile, self.halo, 1, self.variant.spatial, progress)
            else:
                out = decode_flat(flat)
                if progress:
                    progress()
        return out.float().reshape(b, frames, 3, *out.shape[-2:])


def working_memory(rows, cols, frames, tile=0, halo=0, act_bytes=4, patch=1):
    """Peak bytes to decode one sample of `frames` latent frames of rows x cols cells. The
    decoder runs 4 frames per latent frame before trimming; measured peaks (fp32, CPU) are 3.4-3.9
    live 64-channel maps at 8x the latent side per such frame (taew2_1, 32-48 cells, 1-3 frames),
    over one tile with its halo when tiled; 4.5 keeps a margin. Plus the whole output in fp32."""
    side = tile + 2 * halo if tile else max(rows, cols)
    cells = min(rows, side) * min(cols, side)
    inner, out_frames = 4 * frames, 4 * frames - 3
    return int(4.5 * 64 * 64 * cells * inner * act_bytes + 3 * 64 * patch ** 2 * rows * cols * out_frames * 4)
