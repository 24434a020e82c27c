"""The multistep DPM-Solver++ step and fixed-step sampler on the single-Gaussian closed form."""
import math

import torch

from sprint.engines import evaluation, gmm as G, sampling

SIGMA_MAX, SIGMA_MIN = 14.6, 0.03


def k1():
    mix = G.GaussianMixture.image_like(shape=(4, 16, 16), components=1, seed=5)
    x_T = mix.means[0] + SIGMA_MAX * torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return mix, x_T


def error(order, n):
    mix, x_T = k1()
    sigmas = sampling.get_sigmas_exponential(n, SIGMA_MIN, SIGMA_MAX)[:-1]
    x = sampling.sample_dpmpp_multistep(mix.denoise, x_T, sigmas, order=order)
    return evaluation.rmse(x, mix.single_gaussian_flow(x_T, SIGMA_MAX, SIGMA_MIN)).mean().item()


def test_convergence_orders():
    # observed order between n and 2n steps; the 1st-order start step caps 3M near 2 asymptotically
    for order, lo in [(1, 0.85), (2, 1.8), (3, 1.9)]:
        e1, e2 = error(order, 16), error(order, 32)
        assert math.log2(e1 / e2) > lo, (order, e1, e2)
    assert error(3, 16) < error(2, 16) < error(1, 16)


def test_last_step_returns_denoised_and_per_sample_sigmas():
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    d = torch.randn_like(x)
    out, h = sampling.dpmpp_step(x, 1.0, 0.0, d, [])
    assert torch.equal(out, d) and torch.isinf(h).all()
    sig_next = torch.tensor([0.5, 0.0, 0.25], dtype=torch.float64)
    out, _ = sampling.dpmpp_step(x, torch.ones(3, dtype=torch.float64), sig_next, d, [])
    assert torch.equal(out[1], d[1])
    for i in (0, 2):
        alone, _ = sampling.dpmpp_step(x[i:i + 1], 1.0, sig_next[i], d[i:i + 1], [])
        assert torch.allclose(out[i], alone[0])


def test_first_order_step_is_ddim():
    x, d = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    out, _ = sampling.dpmpp_step(x, 2.0, 0.5, d, [])
    assert torch.allclose(out, d + 0.5 / 2.0 * (x - d))       # x0 + sigma_next * eps


def test_schedules():
    k = sampling.get_sigmas_karras(10, 0.03, 14.6)
    e = sampling.get_sigmas_exponential(10, 0.03, 14.6)
    for s in (k, e):
        assert len(s) == 11 and s[-1] == 0 and math.isclose(s[0], 14.6) and math.isclose(s[-2], 0.03)
        assert torch.all(s[:-1][1:] < s[:-1][:-1])
    assert torch.allclose(e[1:-1].log() - e[:-2].log(), (e[1] / e[0]).log().expand(9))
