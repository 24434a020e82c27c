"""The exact denoiser of a Gaussian mixture: a yardstick for samplers and guidance.

If the data are a mixture of Gaussians, the ideal denoiser D(x; sigma) = E[x0 | x0 + sigma n = x]
has a closed form, so the probability-flow ODE a sampler integrates is known exactly and a sampler
can be scored without trained weights (shared/docs/evaluation.md).

Covariances are diagonal in the per-channel 2-D Fourier basis with a power-law spectrum
lambda(f) ~ (1 + (|f|/f0)^2)^-alpha, which gives image-like spatial correlation at O(K d log d).
Everything is computed in float64 on orthonormal real FFTs.
"""
import math

import torch


def _rfft2(x):
    return torch.fft.rfft2(x, norm="ortho")


def _irfft2(z, size):
    return torch.fft.irfft2(z, s=size, norm="ortho")


def _multiplicity(h, w):
    """How many full-spectrum coefficients each rfft2 coefficient stands for (1 or 2)."""
    m = torch.full((h, w // 2 + 1), 2.0, dtype=torch.float64)
    m[:, 0] = 1.0
    if w % 2 == 0:
        m[:, -1] = 1.0
    return m


def power_law_spectrum(h, w, alpha, f0):
    """(1 + (|f|/f0)^2)^-alpha on the rfft2 grid, |f| in cycles per image, normalised to mean 1."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64) * h
    fx = torch.fft.rfftfreq(w, dtype=torch.float64) * w
    f2 = fy[:, None] ** 2 + fx[None, :] ** 2
    spec = (1.0 + f2 / f0**2) ** (-alpha)
    return spec / ((spec * _multiplicity(h, w)).sum() / (h * w))


def smooth_field(shape, f0, generator):
    """A random field with a Gaussian low-pass spectrum and unit pixel variance."""
    c, h, w = shape
    fy = torch.fft.fftfreq(h, dtype=torch.float64) * h
    fx = torch.fft.rfftfreq(w, dtype=torch.float64) * w
    lowpass = torch.exp(-(fy[:, None] ** 2 + fx[None, :] ** 2) / (2 * f0**2))
    white = torch.randn(shape, generator=generator, dtype=torch.float64)
    field = _irfft2(_rfft2(white) * lowpass, (h, w))
    return field / field.std(dim=(-2, -1), keepdim=True)


class GaussianMixture:
    """p(x0) = sum_k pi_k N(mu_k, F^-1 diag(lambda_k) F), optionally with a class label per component.

    means [K, C, H, W]; spectra [K, C, H, W//2+1] (variance per rfft2 coefficient, symmetric in f);
    weights [K] (pi); labels [K] ints or None. A label restricts the mixture to that class's
    components (the conditional denoiser); label None, or -1 per sample, is the full mixture.
    """

    def __init__(self, means, spectra, weights, labels=None):
        self.means = means.to(torch.float64)
        self.spectra = spectra.to(torch.float64)
        self.log_weights = torch.log(weights.to(torch.float64) / weights.sum())
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        self.shape = tuple(means.shape[1:])
        self.mult = _multiplicity(*self.shape[-2:])
        self.mean_hat = _rfft2(self.means)

    @classmethod
    def image_like(cls, shape=(4, 64, 64), components=8, classes=None, alpha=1.5, f0=4.0,
                   offset=0.6, offset_f0=2.0, seed=0):
        """A mixture shaped like SD latents: smooth shared base, low-frequency offsets per
        component (offset sets at which sigma a trajectory commits to a component), per-channel
        power-law spectra with slightly different amplitudes per component."""
        g = torch.Generator().manual_seed(seed)
        c, h, w = shape
        base = 0.5 * smooth_field(shape, offset_f0, g)
        means = torch.stack([base + offset * smooth_field(shape, offset_f0, g) for _ in range(components)])
        spec = power_law_spectrum(h, w, alpha, f0)
        amp = 0.5 + 0.5 * torch.rand(components, c, 1, 1, generator=g, dtype=torch.float64)
        spectra = amp * spec
        weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
        labels = None if classes is None else [k % classes for k in range(components)]
        return cls(means, spectra, weights, labels)

    @property
    def components(self):
        return self.means.shape[0]

    def _mask(self, label, batch):
        """[B, K] log-prior restricted per sample to its class (-inf outside)."""
        logp = self.log_weights.expand(batch, -1).clone()
        if label is None or self.labels is None:
            return logp
        label = torch.as_tensor(label, dtype=torch.long).reshape(-1).expand(batch)
        outside = (self.labels[None, :] != label[:, None]) & (label[:, None] >= 0)
        return logp.masked_fill(outside, -math.inf)

    def _posterior(self, x, sigma, label):
        """Responsibilities w_k(x, sigma) [B, K] and Wiener gains lambda_k/(lambda_k + sigma^2).

        The quadratic forms sum_f |X - M_k|^2 / (lambda_k + sigma^2) are expanded into matmuls,
        grouped by distinct sigma, so no [B, K, C, H, W] temporaries are formed.
        """
        x = x.to(torch.float64)
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        xhat = _rfft2(x).flatten(1)                                          # [B, F]
        mhat = self.mean_hat.flatten(1)                                      # [K, F]
        lam, mult = self.spectra.flatten(1), self.mult.expand(self.spectra.shape[1:]).flatten()
        logits = torch.empty(x.shape[0], self.components, dtype=torch.float64)
        gains = torch.empty(x.shape[0], *lam.shape, dtype=torch.float64)
        for s in torch.unique(sigma):
            rows = sigma == s
            var = lam + s**2                                                 # [K, F]
            inv = mult / var
            xs = xhat[rows]
            quad = (xs.abs() ** 2) @ inv.T - 2 * (torch.view_as_real(xs).flatten(1)
                    @ torch.view_as_real(mhat * inv).flatten(1).T) + ((mhat.abs() ** 2) * inv).sum(1)
            logits[rows] = -0.5 * quad - 0.5 * (mult * torch.log(var)).sum(1)
            gains[rows] = lam / var
        w = torch.softmax(self._mask(label, x.shape[0]) + logits, dim=1)
        return w, gains, xhat

    def denoise(self, x, sigma, label=None):
        """D(x; sigma) = sum_k w_k [mu_k + F^-1 diag(lambda_k / (lambda_k + sigma^2)) F (x - mu_k)]."""
        w, gains, xhat = self._posterior(x, sigma, label)
        wg = w[..., None] * gains                                            # [B, K, F]
        shrunk = xhat * wg.sum(1)
        for k, m in enumerate(self.mean_hat.flatten(1)):    # a complex einsum over k is ~2x slower
            shrunk -= wg[:, k] * m
        mean = torch.einsum("bk,kchw->bchw", w, self.means)
        return mean + _irfft2(shrunk.reshape(xhat.shape[0], *self.mean_hat.shape[1:]), self.shape[-2:])

    def responsibilities(self, x, sigma=0.0, label=None):
        """[B, K] posterior over components; its argmax at sigma = 0 is a sample's mode."""
        return self._posterior(x, sigma, label)[0]

    def sample(self, n, generator, label=None):
        """Draw n clean samples x0 and their components."""
        logp = self._mask(label, n)
        k = torch.multinomial(torch.softmax(logp, 1), 1, generator=generator).squeeze(1)
        white = _rfft2(torch.randn((n,) + self.shape, generator=generator, dtype=torch.float64))
        return self.means[k] + _irfft2(white * self.spectra[k].sqrt(), self.shape[-2:]), k

    def single_gaussian_flow(self, x, sigma_from, sigma_to):
        """Closed-form probability-flow ODE solution for K = 1.

        dx/dsigma = (x - D)/sigma = sigma/(lambda + sigma^2) (x - mu) per frequency, hence
        x(sigma_to) - mu = (x(sigma_from) - mu) * sqrt((lambda + sigma_to^2)/(lambda + sigma_from^2)).
        """
        if self.components != 1:
            raise ValueError("the closed-form ODE solution exists for a single Gaussian only")
        x = x.to(torch.float64)
        lam = self.spectra[0]
        gain = ((lam + sigma_to**2) / (lam + sigma_from**2)).sqrt()
        return self.means[0] + _irfft2(_rfft2(x - self.means[0]) * gain, self.shape[-2:])
