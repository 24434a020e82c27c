"""engines/metrics.py against exact references."""
import math

import torch

from sprint.engines import metrics


def random_spd(d, seed):
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_of_identical_gaussians_is_zero():
    mu, cov = torch.randn(6, dtype=torch.float64), random_spd(6, 1)
    assert abs(metrics.frechet_distance(mu, cov, mu, cov)) < 1e-9


def test_frechet_of_shifted_gaussians_is_the_squared_shift():
    mu, cov = torch.randn(5, dtype=torch.float64), random_spd(5, 2)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    assert math.isclose(metrics.frechet_distance(mu, cov, mu + shift, cov), shift.pow(2).sum().item(), rel_tol=1e-9)


def test_frechet_of_commuting_covariances_matches_the_closed_form():
    # diagonal covariances: tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt(a) - sqrt(b))^2
    a, b = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64), torch.tensor([4.0, 1.0, 0.25], dtype=torch.float64)
    mu = torch.zeros(3, dtype=torch.float64)
    expected = (a.sqrt() - b.sqrt()).pow(2).sum().item()
    assert math.isclose(metrics.frechet_distance(mu, torch.diag(a), mu, torch.diag(b)), expected, rel_tol=1e-9)


def test_frechet_is_symmetric_for_general_covariances():
    c1, c2 = random_spd(4, 3), random_spd(4, 4)
    mu1, mu2 = torch.zeros(4), torch.ones(4)
    d12, d21 = metrics.frechet_distance(mu1, c1, mu2, c2), metrics.frechet_distance(mu2, c2, mu1, c1)
    assert d12 > 0 and math.isclose(d12, d21, rel_tol=1e-7)


def test_feature_frechet_of_samples_converges_to_the_shift():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(20000, 3, generator=g), torch.randn(20000, 3, generator=g) + torch.tensor([2.0, 0.0, 0.0])
    assert abs(metrics.feature_frechet(a, b) - 4.0) < 0.1
    assert metrics.feature_frechet(a, a) < 1e-9


def test_psnr_closed_form():
    ref = torch.zeros(2, 1, 4, 4)
    x = ref.clone()
    x[0] += 0.1                      # MSE 0.01 -> 20 dB
    x[1] += 0.01                     # MSE 1e-4 -> 40 dB
    assert torch.allclose(metrics.psnr(x, ref), torch.tensor([20.0, 40.0], dtype=torch.float64))
    assert math.isinf(metrics.psnr(ref, ref)[0].item())


def test_ssim_of_an_image_with_itself_is_one_and_drops_with_noise():
    g = torch.Generator().manual_seed(6)
    img = torch.rand(3, 3, 32, 32, generator=g)
    assert torch.allclose(metrics.ssim(img, img), torch.ones(3, dtype=torch.float64))
    noisy = (img + 0.2 * torch.randn(img.shape, generator=g)).clamp(0, 1)
    s = metrics.ssim(noisy, img)
    assert (s < 0.9).all() and (s > 0).all()


def test_ssim_of_a_constant_offset_is_the_luminance_term():
    # constant images: variances 0, so SSIM = (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1)
    x, y = torch.full((1, 1, 16, 16), 0.5), torch.full((1, 1, 16, 16), 0.3)
    c1 = 0.01 ** 2
    expected = (2 * 0.5 * 0.3 + c1) / (0.25 + 0.09 + c1)
    assert math.isclose(metrics.ssim(x, y).item(), expected, rel_tol=1e-6)


def test_class_accuracy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    assert metrics.class_accuracy(logits, torch.tensor([0, 1, 1, 1])) == 0.75


def test_bootstrap_std_of_a_mean_is_its_standard_error():
    x = torch.randn(400, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    std = metrics.bootstrap_std(lambda i: x[i].mean().item(), len(x), draws=400)
    assert math.isclose(std, x.std().item() / math.sqrt(len(x)), rel_tol=0.15)


def test_bootstrap_std_of_a_paired_difference_cancels_the_shared_rows():
    x = torch.randn(400, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert metrics.bootstrap_std(lambda i: (x[i] + 0.5).mean().item() - x[i].mean().item(), len(x)) < 1e-12
    assert metrics.bootstrap_std(lambda i: 1.0, len(x)) == 0.0
