"""The exact Gaussian-mixture yardstick: closed forms, brute force, reference solver, metrics."""
import math

import pytest
import torch

from sprint.engines import evaluation, gmm as G


def dense_posterior_mean(mix, x, sigma, label=None):
    """Brute force on a tiny image: build each covariance matrix explicitly and use Bayes' rule."""
    c, h, w = mix.shape
    n = c * h * w
    eye = torch.eye(n, dtype=torch.float64).reshape(n, c, h, w)
    out = []
    for xb in x:
        logits, means = [], []
        for k in range(mix.components):
            if label is not None and mix.labels[k] != label:
                continue
            # covariance = F^-1 diag(lambda) F applied to every basis vector
            cov = G._irfft2(G._rfft2(eye) * mix.spectra[k], (h, w)).reshape(n, n)
            noisy = cov + sigma**2 * torch.eye(n, dtype=torch.float64)
            r = (xb - mix.means[k]).reshape(n)
            sol = torch.linalg.solve(noisy, r)
            logits.append(mix.log_weights[k] - 0.5 * r @ sol - 0.5 * torch.logdet(noisy))
            means.append(mix.means[k].reshape(n) + cov @ sol)
        wts = torch.softmax(torch.stack(logits), 0)
        out.append((wts[:, None] * torch.stack(means)).sum(0).reshape(c, h, w))
    return torch.stack(out)


@pytest.fixture(scope="module")
def small_mix():
    return G.GaussianMixture.image_like(shape=(2, 6, 6), components=3, classes=2, offset=1.0, offset_f0=1.0, seed=3)


@pytest.mark.parametrize("sigma", [0.05, 0.7, 4.0])
def test_denoiser_matches_dense_bayes(small_mix, sigma):
    x = small_mix.sample(3, torch.Generator().manual_seed(1))[0] + sigma * torch.randn(3, 2, 6, 6, dtype=torch.float64)
    assert torch.allclose(small_mix.denoise(x, sigma), dense_posterior_mean(small_mix, x, sigma), atol=1e-9)
    got = small_mix.denoise(x, sigma, label=torch.tensor([1, 1, 1]))
    assert torch.allclose(got, dense_posterior_mean(small_mix, x, sigma, label=1), atol=1e-9)


def test_per_sample_sigma_and_labels(small_mix):
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    sig = torch.tensor([0.1, 1.0, 5.0], dtype=torch.float64)
    lab = torch.tensor([-1, 0, 1])
    batched = small_mix.denoise(x, sig, lab)
    single = torch.cat([small_mix.denoise(x[i:i + 1], sig[i], None if lab[i] < 0 else lab[i]) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-12)


def test_limits_of_the_denoiser(small_mix):
    g = torch.Generator().manual_seed(0)
    x0, _ = small_mix.sample(4, g)
    assert torch.allclose(small_mix.denoise(x0, 1e-6), x0, atol=1e-6)          # nothing to remove
    prior_mean = torch.einsum("k,kchw->chw", small_mix.log_weights.exp(), small_mix.means)
    far = small_mix.denoise(1e6 * torch.randn(4, 2, 6, 6, generator=g, dtype=torch.float64), 1e6)
    assert torch.allclose(far, prior_mean.expand_as(far), atol=1e-3)           # only the prior is left


def test_samples_have_the_mixture_statistics():
    mix = G.GaussianMixture.image_like(shape=(1, 8, 8), components=2, offset=3.0, seed=0)
    x0, k = mix.sample(20000, torch.Generator().manual_seed(0))
    freq = torch.bincount(k, minlength=2).double() / len(k)
    assert torch.allclose(freq, mix.log_weights.exp(), atol=0.02)
    for comp in range(2):
        xs = x0[k == comp]
        assert (xs.mean(0) - mix.means[comp]).abs().max() < 0.1
        spec = (G._rfft2(xs - mix.means[comp]).abs() ** 2).mean(0)
        assert torch.allclose(spec, mix.spectra[comp], rtol=0.15)
    # well-separated components: the posterior at sigma 0 recovers the component
    assert (mix.responsibilities(x0[:500]).argmax(1) == k[:500]).float().mean() > 0.99


def test_single_gaussian_reference_matches_closed_form():
    mix = G.GaussianMixture.image_like(shape=(4, 32, 32), components=1, seed=1)
    g = torch.Generator().manual_seed(0)
    x_T = mix.means[0] + 14.6 * torch.randn(2, 4, 32, 32, generator=g, dtype=torch.float64)
    ref = evaluation.reference_solution(mix.denoise, x_T, 14.6)
    exact = mix.single_gaussian_flow(x_T, 14.6, 0.0)
    assert evaluation.rmse(ref, exact).max() < 1e-5
    mid = evaluation.reference_solution(mix.denoise, x_T, 14.6, sigma_to=0.5)
    assert evaluation.rmse(mid, mix.single_gaussian_flow(x_T, 14.6, 0.5)).max() < 1e-5


def test_closed_form_needs_one_component(small_mix):
    with pytest.raises(ValueError):
        small_mix.single_gaussian_flow(torch.zeros(1, 2, 6, 6), 1.0, 0.0)


def test_reference_rejects_an_unconverged_solve(small_mix):
    x_T = 14.6 * torch.randn(2, 2, 6, 6, dtype=torch.float64)
    with pytest.raises(evaluation.ReferenceError):
        evaluation.reference_solution(small_mix.denoise, x_T, 14.6, steps=3)


def test_metrics():
    a = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    b = a.clone()
    b[1] += 2.0
    assert evaluation.rmse(b, a).tolist() == [0.0, 2.0]
    assert evaluation.relative_error(b, a + 1.0) == 1.0       # |+-1| everywhere over |1| everywhere
    s = evaluation.summarize(torch.arange(101.0))
    assert s["mean"] == 50.0 and s["max"] == 100.0 and math.isclose(s["p95"], 95.0)
    counted = evaluation.CountingModel(lambda x, sigma: x)
    counted(a, 1.0)
    counted(a[:1], 1.0)
    assert (counted.calls, counted.rows) == (2, 3)


def test_mode_agreement_counts_component_switches():
    mix = G.GaussianMixture.image_like(shape=(1, 8, 8), components=2, offset=3.0, seed=0)
    x0, k = mix.sample(8, torch.Generator().manual_seed(1))
    assert evaluation.mode_agreement(mix, x0, x0) == 1.0
    swapped = x0 - mix.means[k] + mix.means[1 - k]
    assert evaluation.mode_agreement(mix, swapped, x0) < 0.2
