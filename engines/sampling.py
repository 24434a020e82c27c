"""Samplers in k-diffusion form: sample_<name>(model, x, sigmas, extra_args, callback, disable, ...).

`model(x, sigma, **extra_args)` returns the denoised (x0) estimate; x lives at x0 + sigma * noise.
"""
import math

import torch


def append_dims(v, ndim):
    """Broadcast a scalar or per-sample [B] tensor against a [B, ...] tensor of ndim dims."""
    v = torch.as_tensor(v)
    return v.reshape(v.shape + (1,) * (ndim - v.ndim)) if v.ndim else v


def dpmpp_step(x, sigma, sigma_next, denoised, history, alpha=1.0, alpha_next=1.0):
    """One multistep DPM-Solver++ step (data prediction in lambda = log(alpha/sigma)).

    The exponential integrator of Lu et al. (2022), "DPM-Solver++", with exact phi-functions on
    non-uniform steps (as k-diffusion's dpmpp_3m_sde at eta = 0). `history` holds (denoised, h) of earlier steps, newest first;
    its length sets the order (0: DPM-Solver-1 / DDIM, 1: 2M, 2: 3M). alpha = 1 for EPS/V models,
    1 - sigma for flow (CONST) models. Where sigma_next = 0 the step returns the denoised estimate.
    Returns (x_next, h) so the caller can push (denoised, h) into its history.
    """
    n = x.ndim
    sigma, sigma_next = append_dims(sigma, n), append_dims(sigma_next, n)
    alpha, alpha_next = append_dims(alpha, n), append_dims(alpha_next, n)
    last = sigma_next == 0
    if torch.all(last):
        return denoised, torch.full_like(sigma, float("inf"))
    h = torch.log(alpha_next / torch.where(last, sigma, sigma_next)) - torch.log(alpha / sigma)
    h = torch.where(last, torch.ones_like(h), h)    # any finite h; replaced by `denoised` below
    phi1 = -torch.expm1(-h)                      # 1 - e^-h
    x_next = (sigma_next / sigma) * x + alpha_next * phi1 * denoised
    if history:
        phi2 = phi1 / h - 1.0
        d_prev, h_prev = history[0]
        r0 = h_prev / h
        d1_0 = (denoised - d_prev) / r0
        if len(history) == 1:
            x_next = x_next - alpha_next * phi2 * d1_0
        else:
            d_prev2, h_prev2 = history[1]
            r1 = h_prev2 / h
            d1_1 = (d_prev - d_prev2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi3 = -phi2 / h - 0.5
            x_next = x_next - alpha_next * (phi2 * d1 + phi3 * d2)
    return torch.where(last, denoised, x_next), torch.where(last, torch.full_like(h, float("inf")), h)


@torch.no_grad()
def sample_dpmpp_multistep(model, x, sigmas, extra_args=None, callback=None, disable=None, order=3):
    """DPM-Solver++(2M/3M), deterministic, on any sigma schedule (Lu et al. 2022)."""
    extra_args = {} if extra_args is None else extra_args
    history = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]), **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x, h = dpmpp_step(x, sigmas[i], sigmas[i + 1], denoised, history)
        history = ([(denoised, h)] + history)[: order - 1]
    return x


def get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0):
    """Karras et al. (2022) eq. 5 noise levels, followed by a final 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def get_sigmas_exponential(n, sigma_min, sigma_max):
    """Noise levels evenly spaced in log-sigma (the lambda of DPM-Solver), followed by a final 0."""
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()
    return torch.cat([sigmas, sigmas.new_zeros([1])])
