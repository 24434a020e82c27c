"""Image-quality metrics for samples of trained models: class accuracy, a Fréchet distance in a
classifier's feature space (a mini-FID), PSNR and SSIM against a reference run.

Trajectory error (RMSE against a fine-step reference) is evaluation.rmse; per-sample values are
summarized with evaluation.summarize.
"""
import torch
import torch.nn.functional as F


def class_accuracy(logits, labels):
    """Fraction of rows whose argmax class is the intended label."""
    return (logits.argmax(-1) == labels.to(logits.device)).to(torch.float64).mean().item()


def gaussian_stats(features):
    """(mean [D], covariance [D, D]) of feature rows [N, D], float64, unbiased covariance."""
    f = features.to(torch.float64).flatten(1)
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(m):
    """Symmetric square root of a positive semi-definite matrix (negative round-off clipped)."""
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(mu1, cov1, mu2, cov2):
    """Fréchet (2-Wasserstein) distance squared between N(mu1, cov1) and N(mu2, cov2):
    |mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1^1/2 cov2 cov1^1/2)^1/2), as FID computes it
    (Heusel et al. 2017), with the symmetric form of the cross term (exact for PSD inputs)."""
    mu1, mu2, cov1, cov2 = (t.to(torch.float64) for t in (mu1, mu2, cov1, cov2))
    root1 = _sqrt_psd(cov1)
    cross = torch.linalg.eigvalsh(root1 @ cov2 @ root1).clamp(min=0).sqrt().sum()
    return ((mu1 - mu2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * cross).clamp(min=0).item()


def feature_frechet(features, reference_features):
    """The mini-FID: Fréchet distance between Gaussians fitted to two sets of feature rows."""
    return frechet_distance(*gaussian_stats(features), *gaussian_stats(reference_features))


def psnr(x, ref, data_range=1.0):
    """Per-sample peak signal-to-noise ratio in dB over all non-batch dims (inf where identical)."""
    mse = (x.to(torch.float64) - ref.to(torch.float64)).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse)


def _gaussian_window(size, sigma):
    g = torch.exp(-(torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x, ref, data_range=1.0, window=11, sigma=1.5):
    """Per-sample structural similarity (Wang et al. 2004) of images [B, C, H, W]: Gaussian window
    (11, 1.5; shrunk to the image for small ones), K1 0.01, K2 0.03, valid region, mean over
    channels and positions."""
    x, ref = x.to(torch.float64), ref.to(torch.float64)
    size = min(window, x.shape[-1], x.shape[-2])
    w = _gaussian_window(size, sigma * size / window).to(x.device)
    channels = x.shape[1]
    w = w.expand(channels, 1, size, size)
    blur = lambda t: F.conv2d(t, w, groups=channels)
    mu_x, mu_y = blur(x), blur(ref)
    var_x, var_y = blur(x * x) - mu_x ** 2, blur(ref * ref) - mu_y ** 2
    cov = blur(x * ref) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1)


def bootstrap_std(statistic, rows, draws=200, seed=0):
    """The seed-to-seed noise of a metric over `rows` sampled rows: the standard deviation of
    statistic(indices) over `draws` resamplings of range(rows) with replacement (Efron 1979).
    Give a difference of two metrics to get the noise of a paired comparison (same rows in both)."""
    gen = torch.Generator().manual_seed(seed)
    values = [statistic(torch.randint(rows, (rows,), generator=gen)) for _ in range(draws)]
    return torch.tensor(values, dtype=torch.float64).std().item()
