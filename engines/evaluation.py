"""Scoring a sampler against the exact ODE solution (shared/docs/evaluation.md).

The reference solves the probability-flow ODE of a known denoiser from the same x_T with a
3rd-order multistep solver at >= 1500 steps in float64, and is accepted only if a 2x finer solve
agrees to < 1e-5 RMSE. A sampler that stops early at sigma_stop > 0 is scored against the
sigma = 0 reference, so its truncation error counts.
"""
import dataclasses
import math

import torch

from .sampling import sample_dpmpp_multistep

REFERENCE_STEPS = 1500
REFERENCE_TOLERANCE = 1e-5
SIGMA_FLOOR = 1e-5   # last noise level before the final jump to 0 (its error ~ floor^2 / lambda)


class ReferenceError(RuntimeError):
    """The fine solve and the 2x finer solve disagree: the reference is not trustworthy."""


def rmse(x, ref):
    """Per-sample root mean square error over all non-batch dims."""
    return (x.to(torch.float64) - ref.to(torch.float64)).pow(2).flatten(1).mean(1).sqrt()


def relative_error(x, ref):
    """|x - ref| / |ref| over the whole tensor (L2), e.g. an engine's output against PyTorch's."""
    return ((x.to(torch.float64) - ref.to(torch.float64)).norm() / ref.to(torch.float64).norm()).item()


def summarize(values):
    """mean, p95 and max of a 1-D tensor of per-sample values."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    return {"mean": v.mean().item(), "p95": torch.quantile(v, 0.95).item(), "max": v.max().item()}


def mode_agreement(gmm, x, ref, label=None):
    """Fraction of samples whose final argmax component equals the reference's."""
    same = gmm.responsibilities(x, 0.0, label).argmax(1) == gmm.responsibilities(ref, 0.0, label).argmax(1)
    return same.to(torch.float64).mean().item()


def frontier(points, at):
    """Log-log interpolation of (calls, error) points (sorted by calls) at `at` calls; None outside."""
    exact = [e for c, e in points if c == at]
    if exact:
        return exact[0]
    for (c0, e0), (c1, e1) in zip(points, points[1:]):
        if c0 <= at <= c1:
            t = 0.0 if c1 == c0 else (math.log(at) - math.log(c0)) / (math.log(c1) - math.log(c0))
            return math.exp(math.log(e0) + t * (math.log(e1) - math.log(e0)))
    return None


def best_at(curves, calls):
    """(peer, error) of the best of `curves` ({peer: sorted (calls, error) points}) at `calls`, each
    interpolated by `frontier`; None where no peer was measured on both sides of that many calls."""
    at = [(e, k) for k, e in ((k, frontier(p, calls)) for k, p in curves.items()) if e is not None]
    return min(at)[::-1] if at else None


def calls_for(points, error):
    """Calls a sampler needs to reach `error` (log-log interpolation between its (calls, error)
    points, sorted by calls); its fewest measured calls if it is already that good there (it may
    need fewer: an upper bound), None if it never gets there."""
    if error >= points[0][1]:
        return points[0][0]
    for (c0, e0), (c1, e1) in zip(points, points[1:]):
        lo, hi = sorted((e0, e1))
        if lo <= error <= hi and e0 != e1:
            t = (math.log(error) - math.log(e0)) / (math.log(e1) - math.log(e0))
            return math.exp(math.log(c0) + t * (math.log(c1) - math.log(c0)))
    return None


@dataclasses.dataclass
class EqualError:
    """How many calls the best of some peers needs to reach an error, against the calls `spent`."""
    spent: float
    peer: str = None       # None: no peer reaches the error within its most measured calls, `calls`
    calls: float = None
    ratio: float = None    # peer's calls / ours: > 1 means fewer calls than every peer at equal error
    bound: bool = False    # the peer is that good at its fewest measured calls: ratio is an upper bound

    def text(self):
        if self.peer is None:
            return (f"no peer reaches this error within its {self.calls:g} measured calls: "
                    f"> {self.calls / self.spent:.2f}x")
        le = "<= " if self.bound else ""
        return f"best peer needs {le}{self.calls:.1f} calls for this error ({self.peer}): {le}{self.ratio:.2f}x"


def calls_at_equal_error(curves, calls, error):
    """EqualError of `calls` spent for `error` against `curves` ({peer: sorted (calls, error) points})."""
    need = {k: v for k, v in ((k, calls_for(p, error)) for k, p in curves.items()) if v is not None}
    if not need:
        return EqualError(calls, calls=max(c for p in curves.values() for c, _ in p))
    peer, n = min(need.items(), key=lambda kv: kv[1])
    return EqualError(calls, peer, n, n / calls, error >= curves[peer][0][1])


class CountingModel:
    """Wraps a denoiser and counts its calls (batched evaluations) and evaluated rows."""

    def __init__(self, model):
        self.model, self.calls, self.rows = model, 0, 0

    def __call__(self, x, sigma, **kwargs):
        self.calls += 1
        self.rows += x.shape[0]
        return self.model(x, sigma, **kwargs)


def reference_grid(sigma_from, sigma_to, steps):
    """`steps` noise levels from sigma_from to sigma_to (then 0 when sigma_to is 0, from SIGMA_FLOOR),
    uniform in log-SNR but tapered so the steps shrink 20x at both ends: on a uniform grid the
    first-order start step at sigma_max dominates the error (2x finer moved a 1500-step 4x64x64
    solve by 7.8e-5 RMSE); the taper cuts that ~100x at equal steps."""
    u = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    lam0, lam1 = -math.log(sigma_from), -math.log(sigma_to if sigma_to > 0 else SIGMA_FLOOR)
    sigmas = torch.exp(-(lam0 + (lam1 - lam0) * (u - 0.95 * torch.sin(2 * math.pi * u) / (2 * math.pi))))
    return sigmas if sigma_to > 0 else torch.cat([sigmas, sigmas.new_zeros(1)])


def reference_solution(denoise, x, sigma_from, sigma_to=0.0, steps=REFERENCE_STEPS, check=True, **extra_args):
    """The ODE solution at sigma_to from x at sigma_from: a 3rd-order multistep solve in float64
    on reference_grid, checked against 2x finer steps (check_reference) unless check=False."""
    ref = sample_dpmpp_multistep(denoise, x.to(torch.float64), reference_grid(sigma_from, sigma_to, steps),
                                 extra_args=extra_args)
    if check:
        check_reference(denoise, x, ref, sigma_from, sigma_to, steps, **extra_args)
    return ref


def check_reference(denoise, x, ref, sigma_from, sigma_to=0.0, steps=REFERENCE_STEPS, **extra_args):
    """The RMSE between `ref` and a 2x finer solve of the same rows; raises ReferenceError above
    REFERENCE_TOLERANCE."""
    finer = reference_solution(denoise, x, sigma_from, sigma_to, 2 * steps, check=False, **extra_args)
    gap = rmse(finer, ref).max().item()
    if not gap < REFERENCE_TOLERANCE:
        raise ReferenceError(f"reference not converged: 2x finer solve differs by RMSE {gap:.3g}")
    return gap


def piecewise_reference(denoise, x, sigma_from, sigma_to=0.0, breaks=(), steps=100, max_steps=12800, **extra_args):
    """The exact ODE solution at sigma_to, solved piece by piece between `breaks` (noise levels where
    the denoiser jumps, e.g. the ends of a guidance interval: a multistep solve never straddles one).

    Each piece doubles its steps from `steps` until the 2x finer solve agrees to < 1e-5 RMSE, and
    keeps the finer one, so every piece pays only for the steps its own smoothness needs.
    """
    x = x.to(torch.float64)
    for sigma_next in sorted({b for b in breaks if sigma_to < b < sigma_from}, reverse=True) + [sigma_to]:
        n, coarse = steps, reference_solution(denoise, x, sigma_from, sigma_next, steps, check=False, **extra_args)
        while True:
            fine = reference_solution(denoise, x, sigma_from, sigma_next, 2 * n, check=False, **extra_args)
            gap = rmse(fine, coarse).max().item()
            if gap < REFERENCE_TOLERANCE:
                break
            if 2 * n >= max_steps:
                raise ReferenceError(f"reference not converged on ({sigma_next:.4g}, {sigma_from:.4g}]: "
                                     f"{n} vs {2 * n} steps differ by RMSE {gap:.3g}")
            n, coarse = 2 * n, fine
        x, sigma_from = fine, sigma_next
    return x
