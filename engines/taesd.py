"""Tiny AutoEncoders for the Stable Diffusion family (TAESD, Ollin Boer Bohan, 2023).

One architecture serves five latent spaces: a few 64-channel conv blocks per resolution level.
The FLUX.2 variant (taef2) adds, to the blocks that run at latent resolution, a branch whose
GroupNorm takes statistics over the whole image ("pooled"): those blocks are global, everything
else is a local conv stack. Tiling follows from that split: the latent-resolution part (1/64 of
the pixels) runs on the whole latent, the full-resolution part runs in overlapping tiles, each
with enough context (its receptive halo) to be exact.

Files are the official ones (`taesd_decoder.pth`, `taef2_encoder.pth`, ... as Sequential-index
state dicts, or the same keys in .safetensors), read with weights_only loading.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class Variant:
    latent_channels: int
    scale: float          # LATENT holds unscaled VAE latents; TAESD sees (z - shift) * scale
    shift: float
    pooled: bool = False  # taef2's GroupNorm branch in the latent-resolution blocks
    packed: bool = False  # FLUX.2 latents travel 2x2-packed: 4 x channels at half the size
    family: str = ""


VARIANTS = {
    "taesd": Variant(4, 0.18215, 0.0, family="SD1.x / SD2.x"),
    "taesdxl": Variant(4, 0.13025, 0.0, family="SDXL"),
    "taesd3": Variant(16, 1.5305, 0.0609, family="SD3 / SD3.5"),
    "taef1": Variant(16, 0.3611, 0.1159, family="FLUX.1"),
    "taef2": Variant(32, 1.0, 0.0, pooled=True, packed=True, family="FLUX.2"),
}
SPATIAL = 8   # pixels per latent cell


def conv(n_in, n_out, **kwargs):
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    """Soft clamp of latents to (-3, 3)."""

    def forward(self, x):
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    def __init__(self, n_in, n_out, pooled=False):
        super().__init__()
        self.conv = nn.Sequential(conv(n_in, n_out), nn.ReLU(), conv(n_out, n_out), nn.ReLU(), conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = None
        if pooled:   # 1x1 expand, GroupNorm over the whole image, 1x1 project back: global context
            wide = 4 * n_in
            self.pool = nn.Sequential(nn.Conv2d(n_in, wide, 1, bias=False), nn.GroupNorm(4, wide), nn.ReLU(),
                                      nn.Conv2d(wide, n_in, 1, bias=False))

    def forward(self, x):
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def Encoder(latent_channels=4, pooled=False):
    def level(p=False):
        return [conv(64, 64, stride=2, bias=False), Block(64, 64, p), Block(64, 64, p), Block(64, 64, p)]
    return nn.Sequential(conv(3, 64), Block(64, 64), *level(), *level(), *level(pooled), conv(64, latent_channels))


def Decoder(latent_channels=4, pooled=False):
    def level(p=False):
        return [Block(64, 64, p), Block(64, 64, p), Block(64, 64, p), nn.Upsample(scale_factor=2), conv(64, 64, bias=False)]
    return nn.Sequential(Clamp(), conv(latent_channels, 64), nn.ReLU(),
                         *level(pooled), *level(), *level(), Block(64, 64), conv(64, 3))


def load_file(path):
    """A state dict from an official .pth (weights_only: no pickled code runs) or .safetensors."""
    path = str(path)
    if path.endswith(".safetensors"):
        import safetensors.torch
        return safetensors.torch.load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def _build(kind, sd, path):
    """Encoder or Decoder shaped by its own weights: latent channels and the pooled branch."""
    try:
        if kind == "decoder":
            net = Decoder(sd["1.weight"].shape[1], pooled="3.pool.0.weight" in sd)
        else:
            last = max(int(k.split(".")[0]) for k in sd)
            net = Encoder(sd[f"{last}.weight"].shape[0], pooled=f"{last - 3}.pool.0.weight" in sd)
        net.load_state_dict(sd)
    except (KeyError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path} is not a TAESD-family {kind} in the official key layout "
                         f"('1.weight', '3.conv.0.weight', ...): {e}") from None
    return net.float().eval().requires_grad_(False).to(memory_format=torch.channels_last)


def load_decoder(path):
    return _build("decoder", load_file(path), path)


def load_encoder(path):
    return _build("encoder", load_file(path), path)


def latent_channels(net):
    """Latent channels of an Encoder or Decoder (first conv in, last conv out)."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels if convs[0].in_channels == 3 else convs[0].in_channels


def unpack(z):
    """FLUX.2 packed latents [B, 4C, H, W] -> [B, C, 2H, 2W] (channel c*4 + 2*dy + dx)."""
    b, c, h, w = z.shape
    return z.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, 2 * h, 2 * w)


def pack(z):
    """Inverse of unpack."""
    b, c, h, w = z.shape
    return z.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)


# ---- running: split at latent resolution, tile the local part ----

def split_at_latent_resolution(net):
    """(first, second) halves of an Encoder/Decoder, cut where latent resolution starts/ends.

    Decoder: first runs at latent resolution (global if pooled), second upsamples (local).
    Encoder: first downsamples (local), second runs at latent resolution."""
    layers = list(net)
    if any(isinstance(m, nn.Upsample) for m in layers):   # a decoder
        cut = next(i for i, m in enumerate(layers) if isinstance(m, nn.Upsample))
    else:
        cut = 1 + max(i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d) and m.stride[0] > 1)
    return net[:cut], net[cut:]


def receptive_halo(net, cell):
    """Latent cells of context a local conv stack needs on each side so that its output is
    exact: the sum of its kernel radii, each counted at the resolution it runs at.
    `cell` is the input's size in latent cells per pixel (1 for latents, 1/8 for images)."""
    halo = 0.0
    for m in net.modules():
        if isinstance(m, nn.Upsample):
            cell /= m.scale_factor
        elif isinstance(m, nn.Conv2d):
            halo += (m.kernel_size[0] // 2) * cell
            cell *= m.stride[0]
    return math.ceil(halo)


def tiled(fn, x, tile, halo, px_in, px_out, progress=None):
    """Apply a local op to x in tiles of `tile` latent cells with `halo` cells of context.

    x has px_in pixels per latent cell, fn's output px_out; tiles sit on the latent grid, so
    strides and nearest upsampling stay aligned and every kept pixel saw all its context."""
    rows, cols = x.shape[-2] // px_in, x.shape[-1] // px_in
    out = None
    for y0 in range(0, rows, tile):
        for x0 in range(0, cols, tile):
            y1, x1 = min(y0 + tile, rows), min(x0 + tile, cols)
            ya, yb, xa, xb = max(y0 - halo, 0), min(y1 + halo, rows), max(x0 - halo, 0), min(x1 + halo, cols)
            piece = fn(x[..., ya * px_in:yb * px_in, xa * px_in:xb * px_in])
            if out is None:
                out = piece.new_empty(*x.shape[:-3], piece.shape[-3], rows * px_out, cols * px_out)
            out[..., y0 * px_out:y1 * px_out, x0 * px_out:x1 * px_out] = \
                piece[..., (y0 - ya) * px_out:(y1 - ya) * px_out, (x0 - xa) * px_out:(x1 - xa) * px_out]
            if progress:
                progress()
    return out


def tile_count(rows, cols, tile):
    return math.ceil(rows / tile) * math.ceil(cols / tile) if tile else 1


class Runner:
    """Runs an Encoder/Decoder at a precision: "fp32", or "bf16"/"fp16" under autocast."""

    def __init__(self, net, precision="fp32"):
        self.net, self.precision = net, precision
        self.first, self.second = split_at_latent_resolution(net)
        self.decoding = any(isinstance(m, nn.Upsample) for m in net)
        self.halo = receptive_halo(self.second, 1.0) if self.decoding else receptive_halo(self.first, 1 / SPATIAL)

    def _context(self, device):
        if self.precision == "fp32":
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[self.precision])

    @staticmethod
    def _prepare(x):
        """Channels-last activations: ~25 % faster convolutions on CPU (oneDNN), same results."""
        return x.contiguous(memory_format=torch.channels_last)

    def __call__(self, x, tile=0, progress=None):
        """Decode latents [B,C,h,w] -> images [B,3,8h,8w] in 0..1, or encode the reverse.
        tile: latent cells per tile side (0: whole); the latent-resolution half always runs whole."""
        local = self.second if self.decoding else self.first
        px_in, px_out = (1, SPATIAL) if self.decoding else (SPATIAL, 1)
        with torch.inference_mode(), self._context(x.device):
            x = self._prepare(x)
            if self.decoding:
                x = self.first(x)
            rows, cols = x.shape[-2] // px_in, x.shape[-1] // px_in
            if tile and (rows > tile or cols > tile):
                x = tiled(local, x, tile, self.halo, px_in, px_out, progress)
            else:
                x = local(x)
                if progress:
                    progress()
            if not self.decoding:
                x = self.second(x)
        return x.float().contiguous()


class TinyVAE:
    """A TAESD-family decoder and/or encoder for one variant, in ComfyUI's LATENT convention."""

    def __init__(self, variant, decoder=None, encoder=None, precision="fp32"):
        self.name, self.variant = variant, VARIANTS[variant]
        for net in (decoder, encoder):
            if net is not None and latent_channels(net) != self.variant.latent_channels:
                raise ValueError(f"{variant} expects {self.variant.latent_channels} latent channels, "
                                 f"the weights have {latent_channels(net)}")
        self.decoder = Runner(decoder, precision) if decoder is not None else None
        self.encoder = Runner(encoder, precision) if encoder is not None else None

    def decode(self, latents, tile=0, batch_size=None, progress=None):
        """LATENT samples (unscaled; FLUX.2 packed or not) -> images [B,3,H,W] in 0..1."""
        v = self.variant
        if v.packed and latents.shape[1] == 4 * v.latent_channels:
            latents = unpack(latents)
        if latents.shape[1] != v.latent_channels:
            raise ValueError(f"{self.name} decodes {v.latent_channels}-channel latents"
                             f"{' (or 2x2-packed ' + str(4 * v.latent_channels) + ')' if v.packed else ''}, got {latents.shape[1]}")
        return self._chunked(lambda z: self.decoder(((z - v.shift) * v.scale), tile, progress).clamp(0, 1),
                             latents, batch_size)

    def encode(self, images, tile=0, batch_size=None, progress=None):
        """Images [B,3,H,W] in 0..1 (sides multiples of 8; 16 when packed) -> unscaled LATENT samples."""
        v = self.variant
        multiple = SPATIAL * (2 if v.packed else 1)
        if images.shape[-1] % multiple or images.shape[-2] % multiple:
            raise ValueError(f"{self.name} needs image sides that are multiples of {multiple}, got {tuple(images.shape[-2:])}")
        z = self._chunked(lambda x: self.encoder(x, tile, progress) / v.scale + v.shift, images, batch_size)
        return pack(z) if v.packed else z

    @staticmethod
    def _chunked(fn, x, batch_size):
        batch_size = batch_size or x.shape[0]
        return torch.cat([fn(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def working_memory(rows, cols, tile=0, halo=0, act_bytes=4):
    """Peak bytes to decode (or encode) one sample of rows x cols latent cells. Measured peaks
    are 4.0 live 64-channel full-resolution maps in fp32 and 3.3 in bf16, over one tile with
    its halo when tiled; 4.5 keeps a margin. Plus the whole output and the latent-resolution half."""
    side = tile + 2 * halo if tile else max(rows, cols)
    cells = min(rows, side) * min(cols, side)
    return int(4.5 * 64 * SPATIAL ** 2 * cells * act_bytes + (2 * 3 * SPATIAL ** 2 + 4 * 256) * rows * cols * 4)


def psnr(a, b):
    """Peak signal-to-noise ratio in dB of images in 0..1."""
    mse = torch.mean((a.double() - b.double()) ** 2)
    return float(10 * torch.log10(1 / mse))
