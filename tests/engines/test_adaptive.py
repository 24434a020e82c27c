"""sample_adaptive: order, budget, per-sample independence, parametrisations, img2img, noise."""
import math

import pytest
import torch

from sprint.engines import evaluation, gmm as G, sampling

SIGMA_MAX, SIGMA_MIN = 14.6, 0.03


def k1(rows=2, shape=(4, 16, 16)):
    mix = G.GaussianMixture.image_like(shape=shape, components=1, seed=5)
    noise = torch.randn((rows,) + shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return mix, mix.means[0] + SIGMA_MAX * noise


@pytest.fixture(scope="module")
def mixture():
    return G.GaussianMixture.image_like(shape=(4, 16, 16), components=8, seed=3)


def x_T(rows, seed=1, shape=(4, 16, 16)):
    return SIGMA_MAX * torch.randn((rows,) + shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def solve(denoise, x, sigmas, **options):
    model = evaluation.CountingModel(denoise)
    info = {}
    out = sampling.sample_adaptive(model, x, sigmas, info=info, **options)
    return out, info, model


def test_converges_with_high_order_on_the_closed_form():
    """To sigma_min (no early stop): error falls with the calls like a high-order method's (4x the
    calls: a 1st-order method errs 4x less, this one > 30x)."""
    mix, x = k1()
    sigmas = sampling.get_sigmas_karras(400, SIGMA_MIN, SIGMA_MAX)[:-1]
    exact = mix.single_gaussian_flow(x, SIGMA_MAX, SIGMA_MIN)
    runs = {calls: solve(mix.denoise, x, sigmas, calls=calls, tol=0) for calls in (10, 20, 40)}
    errors = {calls: evaluation.rmse(out, exact).max().item() for calls, (out, _, _) in runs.items()}
    assert all((info["nfe"] == calls).all() for calls, (_, info, _) in runs.items())
    assert errors[40] < errors[20] < errors[10] < 1e-2, errors
    assert errors[10] / errors[40] > 30, errors
    # and to sigma = 0: the last call's prediction is the closed form at 0
    out, info, _ = solve(mix.denoise, x, sampling.get_sigmas_karras(30, SIGMA_MIN, SIGMA_MAX), calls=30, tol=0)
    assert evaluation.rmse(out, mix.single_gaussian_flow(x, SIGMA_MAX, 0.0)).max() < 3e-3


def test_calls_follow_the_schedules_shape(mixture):
    """The calls lie an even stride apart on the schedule's own index: a budget below the preset's
    calls is spent on exactly its sigmas (tol 0; a tolerance lets a sparse one end higher: below),
    a longer one is resampled along the same shape; the result errs less than DPM-Solver++(2M) on
    the same sigmas."""
    x = x_T(16)
    exact = evaluation.reference_solution(mixture.denoise, x, SIGMA_MAX, 0.0, steps=800)
    for steps, calls in ((7, 7), (23, 12)):
        sigmas = sampling.get_sigmas_karras(steps, SIGMA_MIN, SIGMA_MAX)
        evaluated = []

        def denoise(x, sigma):
            evaluated.append(float(sigma[0]))
            return mixture.denoise(x, sigma)
        out, info, _ = solve(denoise, x, sigmas, tol=0)
        assert (info["nfe"] == calls).all()
        assert torch.allclose(torch.tensor(evaluated, dtype=torch.float64), sigmas[:-1:(steps - 1) // (calls - 1)], rtol=1e-9)
        same = sigmas[:-1:(steps - 1) // (calls - 1)]
        dpmpp = sampling.sample_dpmpp_multistep(mixture.denoise, x, torch.cat([same, same.new_zeros(1)]), order=2)
        assert evaluation.rmse(out, exact).mean() < evaluation.rmse(dpmpp, exact).mean()


def test_a_sparse_budget_ends_higher_and_errs_less(mixture):
    """Karras budgets of 6 and 8 calls step more than an e-fold of sigma near their end: their last
    call rises until no step does (8 calls), but no higher than tol / TAIL_BOUND (6 calls), and the
    exact mixture errs less on average than on the schedule's own sigmas (tol 0 keeps them); 12 calls
    keep them."""
    x = x_T(8)
    exact = evaluation.reference_solution(mixture.denoise, x, SIGMA_MAX, 0.0, steps=800)
    tol = 0.04
    for calls in (6, 8, 12):
        sigmas = sampling.get_sigmas_karras(calls, SIGMA_MIN, SIGMA_MAX)
        seen = []

        def denoise(x, sigma):
            seen.append(float(sigma[0]))
            return mixture.denoise(x, sigma)
        out, info, _ = solve(denoise, x, sigmas, calls=calls, tol=tol, min_fraction=1.0)   # no early stop
        kept, _, _ = solve(mixture.denoise, x, sigmas, calls=calls, tol=0)
        assert (info["nfe"] == calls).all() and len(seen) == calls
        steps = torch.tensor(seen, dtype=torch.float64).log().diff().neg()
        if calls == 12:
            assert torch.allclose(torch.tensor(seen, dtype=torch.float64), sigmas[:-1], rtol=1e-9)
            assert torch.equal(out, kept)
            continue
        if calls == 6:
            assert math.isclose(seen[-1], tol / sampling.TAIL_BOUND, rel_tol=1e-6) and steps.max() > 1
        else:
            assert seen[-1] < tol / sampling.TAIL_BOUND and math.isclose(steps.max(), sampling.MAX_LOG_STEP, rel_tol=1e-6)
        assert seen[-1] > float(sigmas[-2]) and math.isclose(seen[0], SIGMA_MAX, rel_tol=1e-6)
        assert evaluation.rmse(out, exact).mean() < evaluation.rmse(kept, exact).mean(), calls


def test_early_stop_bounds_what_the_calls_left_would_change(mixture):
    """A sample stops once the calls left could change it by less than tol: stopping costs at most
    about tol against finishing, and the reported estimate includes that bound."""
    x = x_T(16)
    sigmas = sampling.get_sigmas_karras(20, SIGMA_MIN, SIGMA_MAX)
    full, info_full, _ = solve(mixture.denoise, x, sigmas, calls=20, tol=0)
    for tol in (0.01, 0.05, 0.2):
        out, info, _ = solve(mixture.denoise, x, sigmas, calls=20, tol=tol)
        stopped = info["nfe"] < 20
        assert stopped.any(), tol
        assert (evaluation.rmse(out, full)[stopped] <= 3 * tol).float().mean() >= 0.9, (tol, evaluation.rmse(out, full))
        assert (info["est_error"][stopped] >= info_full["est_error"][stopped]).all()


def test_a_stopped_sample_returns_its_continuation_to_the_end(mixture):
    """An early stop returns the x0 that the multistep continuation reaches at the schedule's end,
    not the prediction where the sample stopped: much closer to what finishing the budget gives."""
    x = x_T(16)
    sigmas = sampling.get_sigmas_karras(20, SIGMA_MIN, SIGMA_MAX)
    full, _, _ = solve(mixture.denoise, x, sigmas, calls=20, tol=0)
    predictions = []

    def denoise(x, sigma):
        predictions.append(mixture.denoise(x, sigma))
        return predictions[-1]
    out, info, _ = solve(denoise, x, sigmas, calls=20, tol=0.05, drop_finished=False)
    stopped = (info["nfe"] < 20).nonzero().flatten().tolist()
    assert len(stopped) >= 4, info["nfe"]
    where = torch.stack([predictions[info["nfe"][b] - 1][b] for b in stopped])     # at the stopping call
    gap, gap_where = evaluation.rmse(out[stopped], full[stopped]), evaluation.rmse(where, full[stopped])
    assert gap.mean() < 0.5 * gap_where.mean(), (gap, gap_where)


def test_the_stop_bounds_the_change_of_what_it_returns():
    """The bound is on the continuation's result, not on the x0 prediction where a sample stops:
    with D = a - e sigma^2 the path is x = a + c sigma + e sigma^2, whose dx/dsigma (linear) the
    continuation extrapolates exactly. Every call's continuation already lands on the finished
    result, so a sample stops at its first call past min_fraction (11 of 20: index 10 of 19) and
    returns that result, although its prediction still moves (by e (sigma_n^2 - sigma_n+1^2))."""
    x = x_T(3)
    a, e = torch.randn((2,) + x.shape[1:], generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def denoise(x, sigma):
        return a - e * sampling.append_dims(sigma, x.dim()).pow(2)
    sigmas = sampling.get_sigmas_karras(20, SIGMA_MIN, SIGMA_MAX)
    full, _, _ = solve(denoise, x, sigmas, calls=20, tol=0)
    out, info, _ = solve(denoise, x, sigmas, calls=20, tol=1e-3)
    assert (info["nfe"] == 11).all(), info["nfe"]
    assert evaluation.rmse(out, full).max() < 1e-6     # float32 sigmas


def test_a_loose_tolerance_stops_only_where_the_calls_saved_buy_less(mixture):
    """However loose tol, a stop must add less error than its calls would remove on the solver's
    frontier (error ~ calls^-order): n of N calls may err at most (N / n)^4 times as much as all N.
    (Without that check tol 1 stops these solves at 11 of 20 calls with 130x the error.)"""
    x = x_T(16)
    exact = evaluation.reference_solution(mixture.denoise, x, SIGMA_MAX, 0.0, steps=800)
    sigmas = sampling.get_sigmas_karras(20, SIGMA_MIN, SIGMA_MAX)
    full, _, _ = solve(mixture.denoise, x, sigmas, calls=20, tol=0)
    out, info, _ = solve(mixture.denoise, x, sigmas, calls=20, tol=1.0)
    calls = info["nfe"].double().mean().item()
    assert calls < 20, info["nfe"]
    error, error_full = evaluation.rmse(out, exact).mean().item(), evaluation.rmse(full, exact).mean().item()
    assert error <= error_full * (20 / calls) ** 4, (calls, error, error_full)


@pytest.mark.parametrize("steps,end", [(6, 0.0), (10, 0.0), (20, 0.0), (8, 0.5)])
def test_never_exceeds_the_budget(mixture, steps, end):
    sigmas = sampling.get_sigmas_karras(steps, max(end, SIGMA_MIN), SIGMA_MAX)
    if end > 0:
        sigmas = sigmas[:-1]
    for tol in (1e-6, 1e-2):
        out, info, model = solve(mixture.denoise, x_T(5), sigmas, tol=tol)
        assert model.calls <= steps and info["nfe_batch"] == model.calls
        assert info["nfe"].max() <= steps and model.rows == info["nfe"].sum()
        assert torch.isfinite(out).all()
    assert info["nfe_budget"] == len(sigmas) - 1


def test_batch_rows_are_independent_and_deterministic(mixture):
    sigmas = sampling.get_sigmas_karras(20, SIGMA_MIN, SIGMA_MAX)
    x = x_T(4, seed=2)
    out, info, _ = solve(mixture.denoise, x, sigmas)
    again, _, _ = solve(mixture.denoise, x, sigmas)
    assert torch.equal(out, again)
    assert info["nfe"].min() < info["nfe"].max() or info["nfe"].max() < 20   # stops differ or are early
    for b in range(4):
        alone, info_b, _ = solve(mixture.denoise, x[b:b + 1], sigmas)
        assert info_b["nfe"].item() == info["nfe"][b].item()
        assert torch.allclose(alone[0], out[b], atol=1e-9)
        # a row next to different batch mates: the same result
        mates, info_m, _ = solve(mixture.denoise, torch.cat([x_T(2, seed=9), x[b:b + 1]]), sigmas)
        assert torch.allclose(mates[-1], out[b], atol=1e-9) and info_m["nfe"][-1] == info["nfe"][b]


def test_rows_that_settle_apart_keep_their_solo_results_and_batch_positions(mixture):
    """Rows near the data settle calls earlier than rows from noise: the batch splits, and every row
    still gets its solo solve's result and calls. With settled rows kept in the model batch, each
    row stays at its own position (ComfyUI pairs per-image conds by position): a per-row offset
    passed by position must follow its row."""
    sigmas = sampling.get_sigmas_karras(30, SIGMA_MIN, SIGMA_MAX)
    x = x_T(6, seed=2)
    x[3:] *= 0.05
    shift = torch.linspace(-1, 1, 6, dtype=torch.float64).view(6, 1, 1, 1)
    shifted = lambda x, s, shift: mixture.denoise(x - shift, s) + shift          # noqa: E731
    options = dict(calls=30, tol=0.01, min_fraction=0.1)
    out, info, _ = solve(mixture.denoise, x, sigmas, **options)
    assert len(set(info["nfe"].tolist())) >= 2                                    # the batch did split
    kept, info_kept, _ = solve(shifted, x, sigmas, drop_finished=False, extra_args={"shift": shift}, **options)
    for b in range(6):
        alone, info_b, _ = solve(mixture.denoise, x[b:b + 1], sigmas, **options)
        assert torch.allclose(alone[0], out[b], atol=1e-9) and info_b["nfe"].item() == info["nfe"][b].item()
        alone, info_b, _ = solve(shifted, x[b:b + 1], sigmas, extra_args={"shift": shift[b:b + 1]}, **options)
        assert torch.allclose(alone[0], kept[b], atol=1e-9) and info_b["nfe"].item() == info_kept["nfe"][b].item()


def test_finished_rows_leave_the_batch_and_never_change(mixture):
    sigmas = sampling.get_sigmas_karras(20, SIGMA_MIN, SIGMA_MAX)
    seen = []
    out, info, model = solve(mixture.denoise, x_T(4, seed=4), sigmas,
                             callback=lambda d: seen.append((d["done"], d["x"].clone(), d["nfe"])))
    for (done, _, _), (_, x, nfe) in zip(seen, seen[1:]):     # done at one call: unchanged at the next
        for b in range(4):
            if done[b]:
                assert torch.equal(x[b], out[b]) and nfe[b] == info["nfe"][b]
    assert model.rows == info["nfe"].sum() < 4 * model.calls or info["nfe"].min() == info["nfe"].max()
    kept, info_kept, model_kept = solve(mixture.denoise, x_T(4, seed=4), sigmas, drop_finished=False)
    assert torch.allclose(kept, out, atol=1e-9) and model_kept.rows == 4 * model_kept.calls


def test_early_stop_respects_min_fraction(mixture):
    sigmas = sampling.get_sigmas_karras(20, SIGMA_MIN, SIGMA_MAX)
    _, loose, _ = solve(mixture.denoise, x_T(3), sigmas, calls=20, tol=0.1, min_fraction=0.0)
    _, strict, _ = solve(mixture.denoise, x_T(3), sigmas, calls=20, tol=0.1, min_fraction=1.0)
    # no sample stops before it has covered min_fraction of the schedule
    assert torch.allclose(strict["sigma_stop"], sigmas[-2]) and (strict["nfe"] == 20).all()
    assert (loose["nfe"] <= strict["nfe"]).all() and (loose["sigma_stop"] > sigmas[-2] * 1.5).all()


def flow_denoiser(mix):
    """The flow (CONST) form of the same ODE: x_flow = (1 - s) x_edm at sigma_edm = s / (1 - s)."""
    def denoise(x, s):
        s = torch.as_tensor(s, dtype=torch.float64).reshape(-1)
        keep = (1 - s).clamp(min=1e-9)
        return mix.denoise(x / keep.reshape(-1, 1, 1, 1), s / keep)
    return denoise


def test_flow_matches_the_edm_solution():
    mix, _ = k1()
    noise = torch.randn((2,) + mix.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = torch.linspace(1, 0, 21, dtype=torch.float64)          # "simple" flow schedule from pure noise
    out, info, _ = solve(flow_denoiser(mix), noise, t, flow=True, calls=20, tol=0)
    exact = mix.single_gaussian_flow(mix.means[0] + 1e6 * noise, 1e6, 0.0)    # sigma = 1 is sigma_edm = inf
    assert info["nfe"].max() <= 20
    assert evaluation.rmse(out, exact).max() < 5e-3
    # EPS and V-prediction models share the k-diffusion form (x = x0 + sigma n): the default path
    out_edm, _, _ = solve(mix.denoise, mix.means[0] + SIGMA_MAX * noise, sampling.get_sigmas_karras(20, SIGMA_MIN, SIGMA_MAX), tol=1e-3)
    assert evaluation.rmse(out_edm, mix.single_gaussian_flow(mix.means[0] + SIGMA_MAX * noise, SIGMA_MAX, 0)).max() < 5e-3


def test_flow_start_is_corrected(mixture):
    """From pure noise (flow, sigma = 1) the first step is corrected like every other: on a linear
    flow schedule the sampler errs less than DPM-Solver++(2M) on the same sigmas (with a bare DDIM
    first step it erred 1.8x / 2.0x more than 2M at 8 / 12 steps)."""
    noise = torch.randn((4,) + mixture.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    denoise = flow_denoiser(mixture)
    exact = evaluation.reference_solution(denoise, noise, 1.0, 0.0, steps=800, check=False)
    for steps in (8, 12):
        t = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
        out, info, _ = solve(denoise, noise, t, flow=True, calls=steps, tol=0)
        dpmpp = sampling.sample_dpmpp_multistep(denoise, noise, t, order=2)
        assert (info["nfe"] == steps).all()
        assert evaluation.rmse(out, exact).max() < evaluation.rmse(dpmpp, exact).max(), steps


def test_the_last_result_follows_the_corrector(mixture):
    """The last call predicts x0 at the predicted state; the result moves that prediction by half the
    corrector's change of the state (sampling.LAST_GAIN). On the exact mixture, solves that run to
    the end of their budget land closer to the exact x0 there than that prediction, the result
    before, in the EPS and in the flow form."""
    noise = torch.randn((4,) + mixture.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    flow = flow_denoiser(mixture)
    for denoise, x, sigmas, options in (
            (mixture.denoise, SIGMA_MAX * noise, sampling.get_sigmas_karras(20, SIGMA_MIN, SIGMA_MAX), {}),
            (flow, noise, torch.linspace(1, 0, 21, dtype=torch.float64), {"flow": True})):
        last = {}

        def recorded(x, sigma):
            last["x0"] = denoise(x, sigma)
            return last["x0"]
        sigma_last = float(sigmas[-2])
        exact = denoise(evaluation.reference_solution(denoise, x, float(sigmas[0]), sigma_last, steps=800,
                                                      check=False), torch.tensor([sigma_last]))
        for calls in (6, 8):
            out, info, _ = solve(recorded, x, sigmas, calls=calls, tol=0, **options)
            assert (info["nfe"] == calls).all()
            err, before = evaluation.rmse(out, exact), evaluation.rmse(last["x0"], exact)
            assert (err < before).all(), (options, calls, err, before)


@pytest.mark.parametrize("start", [5, 12])
def test_img2img_schedules(start):
    """Schedules starting below sigma_max (denoise < 1) and ending above 0 (a partial solve)."""
    mix, x = k1()
    full = sampling.get_sigmas_karras(20, SIGMA_MIN, SIGMA_MAX)
    tail = full[start:]
    x_mid = mix.single_gaussian_flow(x, SIGMA_MAX, float(tail[0]))
    out, info, _ = solve(mix.denoise, x_mid, tail, tol=1e-3)
    assert info["nfe"].max() <= len(tail) - 1
    assert evaluation.rmse(out, mix.single_gaussian_flow(x, SIGMA_MAX, 0.0)).max() < 5e-3
    middle = full[start:-4]                                          # ends at a sigma > 0: no jump
    out, info, _ = solve(mix.denoise, x_mid, middle, tol=1e-3)
    assert info["nfe"].max() <= len(middle) - 1 and torch.allclose(info["sigma_stop"], middle[-1])
    assert evaluation.rmse(out, mix.single_gaussian_flow(x, SIGMA_MAX, float(middle[-1]))).max() < 5e-3


def test_eta_noise_is_seeded_per_row(mixture):
    sigmas = sampling.get_sigmas_karras(12, SIGMA_MIN, SIGMA_MAX)
    x = x_T(2)
    a, _, _ = solve(mixture.denoise, x, sigmas, eta=1.0, seed=7)
    b, _, _ = solve(mixture.denoise, x, sigmas, eta=1.0, seed=7)
    c, _, _ = solve(mixture.denoise, x, sigmas, eta=1.0, seed=8)
    ode, _, _ = solve(mixture.denoise, x, sigmas)
    assert torch.equal(a, b) and not torch.allclose(a, c) and not torch.allclose(a, ode)
    assert torch.isfinite(a).all() and evaluation.rmse(a, ode).max() < 2.0


def test_rejects_bad_options(mixture):
    sigmas = sampling.get_sigmas_karras(4, SIGMA_MIN, SIGMA_MAX)
    with pytest.raises(TypeError, match="unknown options"):
        sampling.sample_adaptive(mixture.denoise, x_T(1), sigmas, tolerance=0.1)
    for bad in ({"tol": -0.1}, {"calls": 0}):
        with pytest.raises(ValueError):
            sampling.sample_adaptive(mixture.denoise, x_T(1), sigmas, **bad)
    assert all(math.isclose(v, sampling.ADAPTIVE_DEFAULTS[k]) for k, v in sampling.PRESETS["balanced"].items())
