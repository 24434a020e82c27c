"""A small UNet with the ComfyUI/k-diffusion signature forward(x, timesteps, context), module
names laid out like SD1.5's (time_embed, input_blocks.0.0, out), for engine tests without
ComfyUI; and a short EPS sampling run over it."""
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from sprint.engines import sampling


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ToyUNet(nn.Module):
    def __init__(self, ch=32, context_dim=16, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.ch = ch
        self.time_embed = nn.Sequential(nn.Linear(ch, ch), nn.SiLU(), nn.Linear(ch, ch))
        self.input_blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(4, ch, 3, padding=1))])
        self.norm1, self.conv1 = nn.GroupNorm(8, ch), nn.Conv2d(ch, ch, 3, padding=1)
        self.norm2, self.to_q = nn.GroupNorm(8, ch), nn.Linear(ch, ch)
        self.to_k, self.to_v = nn.Linear(context_dim, ch), nn.Linear(context_dim, ch)
        # named like SD1.5's downsample `op` and upsample `conv` (both read the residual stream)
        self.op, self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1), nn.Conv2d(ch, ch, 3, padding=1)
        self.norm3, self.conv3 = nn.GroupNorm(8, ch), nn.Conv2d(ch, ch, 3, padding=1)
        self.out = nn.Sequential(nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, 4, 3, padding=1))

    def forward(self, x, timesteps, context, **kwargs):
        emb = self.time_embed(timestep_embedding(timesteps, self.ch))[:, :, None, None]
        h = self.input_blocks[0](x) + emb
        h = h + self.conv1(F.silu(self.norm1(h)))
        b, c, hh, ww = h.shape
        q = self.to_q(self.norm2(h).flatten(2).transpose(1, 2))
        attn = torch.softmax(q @ self.to_k(context).transpose(1, 2) / math.sqrt(c), dim=-1) @ self.to_v(context)
        h = h + attn.transpose(1, 2).reshape(b, c, hh, ww)
        d = self.op(h)
        d = d + self.conv3(F.silu(self.norm3(d)))
        h = h + self.conv(F.interpolate(d, scale_factor=2.0, mode="nearest"))
        return self.out(h)


def denoiser(unet, context):
    """EPS parameterisation over sigma (SD-like): D(x; sigma) = x - sigma * eps(x * c_in, t(sigma))."""
    def model(x, sigma, **kwargs):
        sigma = sigma.reshape(-1).expand(x.shape[0])
        c_in = (sigma ** 2 + 1) ** -0.5
        t = 1000 * sigma / (1 + sigma)
        eps = unet(x * c_in[:, None, None, None], t, context.expand(x.shape[0], -1, -1))
        return x - sigma[:, None, None, None] * eps
    return model


@torch.no_grad()
def sampling_run(unet, context, seed, steps=6, shape=(2, 4, 16, 16)):
    """A short DPM++ sampling run; returns the final latent."""
    sigmas = sampling.get_sigmas_karras(steps, 0.03, 14.6)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * sigmas[0]
    return sampling.sample_dpmpp_multistep(denoiser(unet, context), x, sigmas, disable=True, order=2)


def _has(*modules):
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in modules)


# ONNX export and ONNX Runtime tests skip, with the install hint, where the packages are absent
needs_onnxruntime = pytest.mark.skipif(not _has("onnx", "onnxruntime"), reason="needs `pip install onnx onnxruntime`")
