"""Guidance schedules, the guided denoiser, CFG rescale and dynamic thresholding (no ComfyUI)."""
import math

import pytest
import torch

from sprint.engines import evaluation, gmm as G, guidance, sampling

SIGMAS_20 = sampling.get_sigmas_karras(20, 0.0292, 14.6146)[:-1].tolist()   # SD1.5's karras schedule


def test_interval_is_guidance_only_inside_the_window():
    s = guidance.GuidanceSchedule("interval", sigma_high=5.0, sigma_low=0.5)
    assert [s.strength(v) for v in (9.0, 5.0 + 1e-9, 5.0, 1.0, 0.5 + 1e-9, 0.5, 0.1)] == [0, 0, 1, 1, 1, 0, 0]
    assert s.scale(7.5, 9.0) == 1.0 and s.scale(7.5, 1.0) == 7.5 and s.scale(7.5, 0.5) == 1.0


def test_default_interval_leaves_out_the_uncond_on_11_of_20_karras_steps():
    s = guidance.GuidanceSchedule()
    guided = [v for v in SIGMAS_20 if s.scale(7.0, v) != 1.0]
    assert len(guided) == 9 and all(0.28 < v <= 5.42 for v in guided)
    evaluations = sum(2 if s.scale(7.0, v) != 1.0 else 1 for v in SIGMAS_20)
    assert evaluations == 29 and 1 - evaluations / 40 >= 0.25


def test_constant_returns_the_cfg_object_itself():
    s = guidance.GuidanceSchedule("constant")
    for cfg in (1.0, 3.3, 7.0, 0.7, 12.345678):
        assert all(s.scale(cfg, v) is cfg for v in SIGMAS_20 + [1e9, 0.0])


def test_phases_and_ramps():
    kw = dict(sigma_high=10.0, sigma_low=0.1, high=0.2, mid=0.5, low=2.0)
    phases = guidance.GuidanceSchedule("phases", **kw)
    assert [phases.strength(v) for v in (20.0, 10.0, 1.0, 0.1, 0.01)] == [0.2, 0.5, 0.5, 2.0, 2.0]
    linear, cosine = guidance.GuidanceSchedule("linear", **kw), guidance.GuidanceSchedule("cosine", **kw)
    for s in (linear, cosine):     # ends, flat outside, middle in log sigma (1.0 is halfway)
        assert s.strength(50.0) == s.strength(10.0) == 0.2 and s.strength(0.1) == s.strength(0.001) == 2.0
        assert math.isclose(s.strength(1.0), 1.1)
    assert math.isclose(linear.strength(10 ** 0.5), 0.2 + 1.8 * 0.25)
    assert math.isclose(cosine.strength(10 ** 0.5), 2.0 - 1.8 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    down = guidance.GuidanceSchedule("linear", 10.0, 0.1, high=1.0, low=0.0)
    values = [down.strength(v) for v in SIGMAS_20]
    assert all(a >= b for a, b in zip(values, values[1:])) and values[-1] == 0.0
    assert down.scale(5.0, 0.05) == 1.0 and down.scale(5.0, 50.0) == 5.0


def test_scale_snaps_to_exactly_one_where_comfyui_would_skip_the_uncond():
    s = guidance.GuidanceSchedule("linear", 10.0, 0.1, high=1e-12, low=1.0)
    assert s.scale(8.0, 20.0) == 1.0                        # 1 + 7e-12: math.isclose to 1
    assert guidance.GuidanceSchedule("phases", 10.0, 0.1, mid=0.5).scale(3.0, 1.0) == 2.0


@pytest.mark.parametrize("kind,kw,message", [
    ("wavy", {}, "unknown guidance schedule"),
    ("interval", {"sigma_high": 0.2, "sigma_low": 0.5}, "sigma_low < sigma_high"),
    ("linear", {"sigma_low": 0.0}, "finite positive ends"),
    ("cosine", {"sigma_high": math.inf}, "finite positive ends"),
])
def test_bad_schedules_are_refused(kind, kw, message):
    with pytest.raises(ValueError, match=message):
        guidance.GuidanceSchedule(kind, **kw)


def test_flow_states_map_to_edm_noise_to_signal():
    x0, n = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([0.8, 0.25], dtype=torch.float64)
    x, s = guidance.edm_state((1 - t).view(-1, 1, 1, 1) * x0 + t.view(-1, 1, 1, 1) * n, t, flow=True)
    assert torch.allclose(s, t / (1 - t)) and torch.allclose(x, x0 + s.view(-1, 1, 1, 1) * n)
    assert guidance.noise_to_signal(1.0, True) == math.inf and guidance.noise_to_signal(0.5, True) == 1.0
    assert guidance.edm_state(x0, t)[0] is x0 and guidance.noise_to_signal(3.0) == 3.0
    # a flow model at t = 0.8 (noise-to-signal 4) is inside the default interval, at t = 0.9 (9) outside
    s = guidance.GuidanceSchedule()
    assert s.scale(5.0, guidance.noise_to_signal(0.8, True)) == 5.0
    assert s.scale(5.0, guidance.noise_to_signal(0.9, True)) == 1.0


@pytest.fixture(scope="module")
def mixture():
    return G.GaussianMixture.image_like(shape=(4, 16, 16), components=6, classes=3, seed=3)


def test_guided_denoiser_is_cfg_inside_and_the_bare_conditional_outside(mixture):
    counter = evaluation.CountingModel(mixture.denoise)
    guided = guidance.guided_denoiser(counter, guidance.GuidanceSchedule(), 4.0, 2, -1)
    x = 3 * torch.randn(3, 4, 16, 16, dtype=torch.float64)
    d_c, d_u = mixture.denoise(x, 2.0, label=2), mixture.denoise(x, 2.0)
    assert torch.allclose(guided(x, 2.0), d_u + 4.0 * (d_c - d_u)) and (counter.calls, counter.rows) == (1, 6)
    assert torch.equal(guided(x, 9.0), mixture.denoise(x, 9.0, label=2)) and (counter.calls, counter.rows) == (2, 9)


def test_piecewise_reference_matches_the_closed_form():
    k1 = G.GaussianMixture.image_like(shape=(4, 16, 16), components=1, seed=5)
    x = k1.means[0] + 14.6 * torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = evaluation.piecewise_reference(k1.denoise, x, 14.6, 0.03, breaks=(5.42, 0.28, 99.0))
    assert evaluation.rmse(ref, k1.single_gaussian_flow(x, 14.6, 0.03)).max() < 1e-5
    with pytest.raises(evaluation.ReferenceError, match="not converged"):
        evaluation.piecewise_reference(k1.denoise, x, 14.6, 0.03, steps=2, max_steps=8)


def vp_v_rescale(denoised, cond_denoised, x, sigma, phi):
    """Lin et al. (2024) written out on v of the variance-preserving model (as ComfyUI's RescaleCFG)."""
    s = sigma.view(-1, 1, 1, 1)
    alpha, sigma_vp = 1 / (1 + s**2).sqrt(), s / (1 + s**2).sqrt()
    v = lambda x0: alpha * (x - x0) / s - sigma_vp * x0  # noqa: E731
    v_cfg, v_cond = v(denoised), v(cond_denoised)
    v_cfg = phi * v_cfg * v_cond.flatten(1).std(1).view(-1, 1, 1, 1) / v_cfg.flatten(1).std(1).view(-1, 1, 1, 1) + (1 - phi) * v_cfg
    return alpha**2 * x - alpha * s * v_cfg             # x0 = alpha (alpha x - sigma_vp v) in EDM units


def test_rescale_cfg_is_lin_et_al_on_v():
    g = torch.Generator().manual_seed(2)
    x, d_c, d_u = (torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    sigma = torch.tensor([0.1, 1.0, 12.0], dtype=torch.float64)
    d_cfg = d_u + 7 * (d_c - d_u)
    for phi in (0.0, 0.7, 1.0):
        assert torch.allclose(guidance.rescale_cfg(d_cfg, d_c, x, sigma, phi), vp_v_rescale(d_cfg, d_c, x, sigma, phi))
    assert guidance.rescale_cfg(d_cfg, d_c, x, sigma, 0.0) is d_cfg
    assert torch.allclose(guidance.rescale_cfg(d_c, d_c, x, sigma, 0.7), d_c)   # nothing to correct without guidance


def test_dynamic_threshold_is_imagens_with_a_bound_from_the_reference():
    g = torch.Generator().manual_seed(4)
    x0 = 3 * torch.randn(2, 4, 16, 16, generator=g, dtype=torch.float64)
    assert guidance.dynamic_threshold(x0, x0, 0.0) is x0
    # a reference whose 0.9-percentile of |.| is exactly 1: Imagen's static bound
    ref = torch.linspace(-1, 1, 1024, dtype=torch.float64).view(1, 4, 16, 16).expand(2, -1, -1, -1)
    bound = guidance._percentile_abs(ref, 0.9)
    out = guidance.dynamic_threshold(x0, ref / bound.view(-1, 1, 1, 1), 0.9)
    s = guidance._percentile_abs(x0, 0.9).clamp(min=1).view(-1, 1, 1, 1)
    assert torch.allclose(out, x0.clamp(-s, s) / s)                                      # Imagen, eq. in sec. 2.3
    assert torch.allclose(guidance._percentile_abs(out, 0.9), torch.ones(2, dtype=torch.float64))
    small = 0.1 * x0                                                                     # within the bound: untouched
    assert torch.equal(guidance.dynamic_threshold(small, x0, 1.0), small)
