"""Classifier-free guidance as a function of the noise level, and corrections of guided predictions.

Noise levels here are EDM sigmas, i.e. noise-to-signal ratios: the k-diffusion sigma of EPS and
V-prediction models, t / (1 - t) for flow (CONST) models at time t (`noise_to_signal`). Every
function works on denoised (x0) predictions, the quantity all three parametrisations share.

A schedule gives the fraction m(sigma) of the guidance strength (cfg - 1) applied at sigma:
scale = 1 + (cfg - 1) m. Where m = 0 the scale is exactly 1 and the guided prediction is the
conditional one: the unconditional evaluation is not needed there.
"""
import dataclasses
import math

import torch

from .sampling import append_dims

KINDS = ("interval", "constant", "linear", "cosine", "phases")

# Kynkaanniemi et al. (2024), "Applying Guidance in a Limited Interval Improves Sample and
# Distribution Quality in Diffusion Models": guidance for sigma in (0.28, 5.42] (EDM2, ImageNet-512).
INTERVAL_SIGMA_HIGH, INTERVAL_SIGMA_LOW = 5.42, 0.28


def noise_to_signal(sigma, flow=False):
    """The EDM sigma of a sampler sigma: itself, or t / (1 - t) for a flow model (inf at t >= 1)."""
    if not flow:
        return sigma
    if torch.is_tensor(sigma):
        return torch.where(sigma < 1, sigma / (1 - sigma).clamp(min=1e-12), torch.full_like(sigma, math.inf))
    return sigma / (1 - sigma) if sigma < 1 else math.inf


def edm_state(x, sigma, flow=False):
    """(x, sigma) in EDM form x = x0 + sigma n; a flow state (1 - t) x0 + t n is divided by 1 - t."""
    if not flow:
        return x, sigma
    keep = append_dims((1 - sigma).clamp(min=1e-12) if torch.is_tensor(sigma) else max(1 - sigma, 1e-12), x.ndim)
    return x / keep, noise_to_signal(sigma, flow)


@dataclasses.dataclass(frozen=True)
class GuidanceSchedule:
    """m(sigma), the fraction of the guidance strength (cfg - 1) applied at noise level sigma.

    interval: 1 inside (sigma_low, sigma_high], 0 outside (Kynkaanniemi et al. 2024).
    constant: 1 everywhere (plain CFG).
    phases:   `high` above sigma_high, `mid` inside, `low` at or below sigma_low (3-phase steps).
    linear:   `high` at/above sigma_high to `low` at/below sigma_low, linear in log sigma.
    cosine:   the same ends joined by a half cosine (Wang et al. 2024, "Analysis of
              Classifier-Free Guidance Weight Schedulers").
    """
    kind: str = "interval"
    sigma_high: float = INTERVAL_SIGMA_HIGH
    sigma_low: float = INTERVAL_SIGMA_LOW
    high: float = 0.0
    mid: float = 1.0
    low: float = 1.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown guidance schedule {self.kind!r}; one of {', '.join(KINDS)}")
        if not 0 <= self.sigma_low < self.sigma_high:
            raise ValueError(f"guidance window needs 0 <= sigma_low < sigma_high, got ({self.sigma_low}, {self.sigma_high}]")
        if self.kind in ("linear", "cosine") and not (0 < self.sigma_low and math.isfinite(self.sigma_high)):
            raise ValueError(f"a {self.kind} ramp runs in log sigma and needs finite positive ends, "
                             f"got ({self.sigma_low}, {self.sigma_high}]")

    def position(self, sigma):
        """0 at or above sigma_high, 1 at or below sigma_low, linear in log sigma between."""
        if sigma >= self.sigma_high:
            return 0.0
        if sigma <= self.sigma_low:
            return 1.0
        return math.log(self.sigma_high / sigma) / math.log(self.sigma_high / self.sigma_low)

    def strength(self, sigma):
        """m(sigma) for a noise-to-signal ratio sigma (a float)."""
        if self.kind == "constant":
            return 1.0
        if self.kind in ("interval", "phases"):
            high, mid, low = (0.0, 1.0, 0.0) if self.kind == "interval" else (self.high, self.mid, self.low)
            return high if sigma > self.sigma_high else mid if sigma > self.sigma_low else low
        r = self.position(sigma)
        c = 1.0 - r if self.kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * r))   # weight of `high`
        return self.high * c + self.low * (1.0 - c)

    def scale(self, cfg, sigma):
        """The guidance scale at sigma: cfg itself where m = 1 (bit-identical to plain CFG), exactly
        1.0 where the scale is 1 to within math.isclose (the test ComfyUI uses to skip the uncond)."""
        m = self.strength(sigma)
        if m == 1.0:
            return cfg
        scale = 1.0 + (cfg - 1.0) * m
        return 1.0 if math.isclose(scale, 1.0) else scale


def guided_denoiser(denoise, schedule, cfg, cond, uncond, flow=False):
    """D_u + w(sigma) (D_c - D_u) for a denoiser taking a per-sample `label` (the exact GMM): the
    probability-flow ODE a scheduled guidance integrates. Where w = 1 only D_c is evaluated and
    returned; elsewhere cond and uncond are evaluated as one batch, as ComfyUI does."""
    def guided(x, sigma, **kwargs):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        w = schedule.scale(cfg, float(noise_to_signal(sigma[0], flow)))
        if w == 1.0:
            return denoise(x, sigma, label=cond, **kwargs)
        labels = torch.tensor([cond, uncond]).repeat_interleave(x.shape[0])
        d_cond, d_uncond = denoise(torch.cat([x, x]), sigma.repeat(2), label=labels, **kwargs).chunk(2)
        return d_uncond + (d_cond - d_uncond) * w
    return guided


def _std(x):
    return x.flatten(1).std(1)


def _percentile_abs(x, p):
    """Per-sample nearest-rank p-quantile of |x| (torch.quantile refuses inputs over 2^24 values)."""
    flat = x.flatten(1).abs()
    return flat.kthvalue(max(1, math.ceil(p * flat.shape[1])), dim=1).values


def rescale_cfg(denoised, cond_denoised, x, sigma, phi):
    """CFG rescale of Lin et al. (2024), "Common Diffusion Noise Schedules and Sample Steps are
    Flawed", sec. 3.4: the guided v-prediction is scaled to the conditional one's standard deviation,
    then mixed back with weight phi (0 = off).

    x, sigma are in EDM form. v of the equivalent variance-preserving model is affine in x0 with a
    per-sample factor: v ~ u = x / (1 + sigma^2) - x0, so the std ratio is taken on u, which equals
    ComfyUI's RescaleCFG on EPS/V models and extends it to flow models.
    """
    if phi == 0:
        return denoised
    base = x / (1 + append_dims(sigma, x.ndim) ** 2)
    u_cfg, u_cond = base - denoised, base - cond_denoised
    factor = phi * _std(u_cond) / _std(u_cfg).clamp(min=1e-12) + (1 - phi)
    return base - u_cfg * append_dims(factor, x.ndim)


def dynamic_threshold(denoised, reference, percentile):
    """Percentile dynamic thresholding of Saharia et al. (2022), "Photorealistic Text-to-Image
    Diffusion Models with Deep Language Understanding" (Imagen), sec. 2.3, in x0 space.

    Per sample s = max(q_p(|x0|), b); x0 <- clamp(x0, -s, s) * b / s. Imagen's bound b is 1, the
    pixel range; latents have no fixed range, so b is the same percentile of `reference` (the
    unguided, conditional prediction): guided predictions keep the range the model gives unguided.
    """
    if percentile <= 0:
        return denoised
    bound = _percentile_abs(reference, percentile)
    s = torch.maximum(_percentile_abs(denoised, percentile), bound)
    s, bound = append_dims(s, denoised.ndim), append_dims(bound, denoised.ndim)
    return torch.maximum(torch.minimum(denoised, s), -s) * (bound / s.clamp(min=1e-12))
