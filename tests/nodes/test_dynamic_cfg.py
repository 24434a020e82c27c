"""SprintDynamicCFG in ComfyUI: real UNet calls per step, equality with plain CFG and with the
conditional prediction, img2img, areas and batches, every sampling entry point, composition with a
second Sprint patch and with core guidance nodes, and EPS/V/flow against the engine's guided ODE."""
import contextlib
import copy
import logging

import pytest
import torch

import harness
from sprint.engines import evaluation, gmm as G, guidance
from sprint.bench import host as hostlib
from sprint.bench.meters import ModelCalls

pytestmark = pytest.mark.host

STEPS, CFG = 20, 7.0


@pytest.fixture(scope="module")
def dc(host):
    return host.pack.nodes.dynamic_cfg


@pytest.fixture(scope="module")
def bench(host):
    return host.pack.bench.dynamic_cfg


def settings(bench, **kw):
    """SprintDynamicCFG's defaults (the interval preset) with overrides; the window's top explicit
    (the default 0 means "by the model", 5.42 on the EPS/V models these tests mostly use)."""
    return {**bench.schedules()["interval (default)"], "sigma_high": guidance.INTERVAL_SIGMA_HIGH, **kw}


@pytest.fixture(scope="module")
def prompts(host, tiny_clip):
    import nodes
    encode = lambda text: nodes.CLIPTextEncode().encode(tiny_clip, text)[0]  # noqa: E731
    return encode("a lighthouse on a cliff"), encode("blurry"), encode("")


def run(host, g, *latents):
    """Execute graph `g` with a SaveLatent output on each sampler node; returns their samples."""
    for node in latents:
        g.node("SaveLatent", samples=node.out(0), filename_prefix="sprint_test/dynamic_cfg")
    result = host.run(g.finalize())
    return [result.output(node.id)["samples"] for node in latents]


def ksampler(model, positive, negative, cfg=CFG, denoise=1.0, latent=None, sampler="euler", steps=STEPS):
    import nodes
    latent = latent or {"samples": torch.zeros(1, 4, 8, 8)}
    return nodes.KSampler().sample(model, 1, steps, cfg, sampler, "karras", positive, negative, latent,
                                   denoise=denoise)[0]["samples"]


@contextlib.contextmanager
def unet_calls(unet):
    """[(sigma, rows)] of the UNet evaluations that compute (its output layer runs; a cache such as
    EasyCache that skips the body is not counted), live while the block runs."""
    with ModelCalls(unet, at=unet.out) as meter:
        yield meter.sigmas


def rows_per_step(calls):
    """[(sigma, rows)] of real UNet evaluations, summed per sigma, in sampling order."""
    steps = {}
    for sigma, rows in calls:
        steps[sigma] = steps.get(sigma, 0) + rows
    return list(steps.items())


def interval_rows(sigma, rows_cond, rows_uncond, low=0.28, high=5.42):
    return rows_cond + (rows_uncond if low < sigma <= high else 0)


def test_constant_schedule_is_plain_cfg_bit_for_bit_through_ksampler(host, bench, tiny_model, tiny_clip):
    """The bar: the executor runs KSampler on the tiny model with and without the node."""
    from comfy_execution.graph_utils import GraphBuilder
    outputs = {}
    for sampler in ("euler", "dpmpp_2m"):
        for name in ("plain", "constant"):
            g = GraphBuilder()
            model, clip = harness.source(g, "MODEL", tiny_model), harness.source(g, "CLIP", tiny_clip)
            if name == "constant":
                model = g.node("SprintDynamicCFG", model=model, **settings(bench, schedule="constant")).out(0)
            pos = g.node("CLIPTextEncode", clip=clip, text="a photo of a cat")
            neg = g.node("CLIPTextEncode", clip=clip, text="blurry")
            latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=2)
            sample = g.node("KSampler", model=model, positive=pos.out(0), negative=neg.out(0), latent_image=latent.out(0),
                            seed=3, steps=STEPS, cfg=7.5, sampler_name=sampler, scheduler="karras", denoise=1.0)
            with unet_calls(tiny_model.model.diffusion_model) as calls:
                (latent,) = run(host, g, sample)
            outputs[sampler, name] = latent, sum(r for _, r in calls)
        (plain, n_plain), (const, n_const) = outputs[sampler, "plain"], outputs[sampler, "constant"]
        assert (plain - const).abs().max().item() == 0 and n_plain == n_const == 2 * 2 * STEPS


def test_interval_leaves_out_the_uncond_outside_the_window(host, dc, bench, tiny_model, prompts, caplog):
    import comfy.samplers
    positive, negative, _ = prompts
    with unet_calls(tiny_model.model.diffusion_model) as calls, caplog.at_level(logging.INFO, "sprint"):
        ksampler(dc.patch(tiny_model, **settings(bench)), positive, negative)
    sigmas = comfy.samplers.calculate_sigmas(tiny_model.get_model_object("model_sampling"), "karras", STEPS)[:-1]
    steps = rows_per_step(calls)
    assert torch.allclose(torch.tensor([s for s, _ in steps]), sigmas)           # one UNet call per step
    assert [r for _, r in steps] == [interval_rows(float(s), 1, 1) for s in sigmas]
    assert sum(r for _, r in steps) == 29 and 1 - 29 / (2 * STEPS) >= 0.25
    assert "left out 11 unconditional passes" in caplog.text


def test_scale_one_is_exactly_the_conditional_prediction_with_areas_and_a_batch(host, dc, bench, tiny_model, prompts):
    """No guidance anywhere at cfg 7 == plain KSampler at cfg 1 (ComfyUI's own cond-only path), with
    two area conditionings in the positive and a batch of two latents; and the interval's counts."""
    import nodes
    positive, negative, _ = prompts
    left = nodes.ConditioningSetArea().append(positive, 32, 64, 0, 0, 1.0)[0]
    right = nodes.ConditioningSetArea().append(positive, 32, 64, 32, 0, 0.8)[0]
    areas = nodes.ConditioningCombine().combine(left, right)[0]
    latent = {"samples": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    unguided = dc.patch(tiny_model, **settings(bench, schedule="phases", strength_high=0.0, strength_mid=0.0, strength_low=0.0))
    unet = tiny_model.model.diffusion_model
    with unet_calls(unet) as calls_cfg1:
        want = ksampler(tiny_model, areas, negative, cfg=1.0, latent=latent)
    with unet_calls(unet) as calls:
        got = ksampler(unguided, areas, negative, cfg=CFG, latent=latent)
    assert torch.equal(got, want)
    assert [r for _, r in rows_per_step(calls)] == [r for _, r in rows_per_step(calls_cfg1)] == [4] * STEPS
    with unet_calls(unet) as calls:       # the interval: 2 areas x 2 latents, + 2 uncond rows inside
        ksampler(dc.patch(tiny_model, **settings(bench)), areas, negative, latent=latent)
    # ComfyUI gives the negative a copy per positive area (create_cond_with_same_area_if_none): 3 x 2 rows
    assert [r for _, r in rows_per_step(calls)] == [interval_rows(s, 4, 6) for s, _ in rows_per_step(calls)]


def test_img2img_follows_sigma_not_step(host, dc, bench, tiny_model, prompts):
    import comfy.samplers
    positive, negative, _ = prompts
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))}
    with unet_calls(tiny_model.model.diffusion_model) as calls:
        ksampler(dc.patch(tiny_model, **settings(bench)), positive, negative, denoise=0.5, latent=latent, steps=10)
    tail = comfy.samplers.calculate_sigmas(tiny_model.get_model_object("model_sampling"), "karras", 20)[-11:-1]
    steps = rows_per_step(calls)
    assert torch.allclose(torch.tensor([s for s, _ in steps]), tail)
    assert [r for _, r in steps] == [interval_rows(float(s), 1, 1) for s in tail] == [2] * 4 + [1] * 6


def test_same_result_through_ksampler_samplercustom_and_advanced(host, bench, tiny_model, tiny_clip):
    from comfy_execution.graph_utils import GraphBuilder
    g = GraphBuilder()
    model = g.node("SprintDynamicCFG", model=harness.source(g, "MODEL", tiny_model), **settings(bench)).out(0)
    clip = harness.source(g, "CLIP", tiny_clip)
    pos, neg = (g.node("CLIPTextEncode", clip=clip, text=t).out(0) for t in ("a cat", "blurry"))
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1).out(0)
    common = dict(positive=pos, negative=neg, cfg=CFG)
    k = g.node("KSampler", model=model, latent_image=latent, seed=5, steps=STEPS, sampler_name="dpmpp_2m",
               scheduler="karras", denoise=1.0, **common)
    sampler = g.node("KSamplerSelect", sampler_name="dpmpp_2m").out(0)
    sigmas = g.node("BasicScheduler", model=model, scheduler="karras", steps=STEPS, denoise=1.0).out(0)
    custom = g.node("SamplerCustom", model=model, add_noise=True, noise_seed=5, sampler=sampler, sigmas=sigmas,
                    latent_image=latent, **common)
    guider = g.node("CFGGuider", model=model, **common).out(0)
    advanced = g.node("SamplerCustomAdvanced", noise=g.node("RandomNoise", noise_seed=5).out(0), guider=guider,
                      sampler=sampler, sigmas=sigmas, latent_image=latent)
    with unet_calls(tiny_model.model.diffusion_model) as calls:
        outs = run(host, g, k, custom, advanced)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert sum(r for _, r in calls) == 3 * 29


def test_two_stacked_schedules_multiply(host, dc, bench, tiny_model, prompts):
    """A second Sprint patch composes: (0.28, 5.42] stacked with (1, 100] is the interval (1, 5.42]."""
    positive, negative, _ = prompts
    a, b = settings(bench), settings(bench, sigma_high=100.0, sigma_low=1.0)
    single = ksampler(dc.patch(tiny_model, **settings(bench, sigma_high=5.42, sigma_low=1.0)), positive, negative)
    unet = tiny_model.model.diffusion_model
    for first, second in ((a, b), (b, a)):
        with unet_calls(unet) as calls:
            stacked = ksampler(dc.patch(dc.patch(tiny_model, **first), **second), positive, negative)
        assert torch.equal(stacked, single)
        assert [r for _, r in rows_per_step(calls)] == [interval_rows(s, 1, 1, low=1.0) for s, _ in rows_per_step(calls)]


def test_incoming_model_is_untouched_and_options_deep_copy(host, dc, bench, tiny_model):
    import comfy.patcher_extension
    patched = dc.patch(tiny_model, **settings(bench, rescale=0.5))
    assert tiny_model.get_wrappers(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, dc.KEY) == []
    assert "sampler_post_cfg_function" not in tiny_model.model_options
    assert len(patched.get_wrappers(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, dc.KEY)) == 1
    copy.deepcopy(patched.model_options)


def test_apg_sees_no_guidance_where_the_scale_is_one(host, dc, bench, tiny_model, prompts):
    """Core APG at cfg 1 mixes cond with zeros (ComfyUI's cfg1 trap); under Sprint the unguided steps
    hand it the cond in both slots, so APG returns the conditional prediction exactly."""
    from comfy_extras.nodes_apg import APG
    positive, negative, _ = prompts
    apg = APG.execute(tiny_model, 1.0, 5.0, 0.0).result[0]
    want = ksampler(tiny_model, positive, negative, cfg=1.0)
    unguided = settings(bench, schedule="phases", strength_high=0.0, strength_mid=0.0, strength_low=0.0)
    for model in (dc.patch(apg, **unguided), APG.execute(dc.patch(tiny_model, **unguided), 1.0, 5.0, 0.0).result[0]):
        assert torch.equal(ksampler(model, positive, negative), want)
    assert not torch.allclose(ksampler(apg, positive, negative, cfg=1.0), want)


def test_perpneg_keeps_its_empty_prompt_pass(host, dc, bench, tiny_model, prompts):
    from comfy_extras.nodes_perpneg import PerpNeg
    positive, negative, empty = prompts
    perpneg = PerpNeg.execute(tiny_model, empty, 1.0).result[0]
    with unet_calls(tiny_model.model.diffusion_model) as calls:
        ksampler(dc.patch(perpneg, **settings(bench)), positive, negative)
    assert [r for _, r in rows_per_step(calls)] == [interval_rows(s, 2, 1) for s, _ in rows_per_step(calls)]
    unguided = dc.patch(perpneg, **settings(bench, schedule="phases", strength_high=0.0, strength_mid=0.0, strength_low=0.0))
    assert torch.allclose(ksampler(unguided, positive, negative), ksampler(tiny_model, positive, negative, cfg=1.0), atol=1e-3)


def test_easycache_composes_even_when_it_skips_before_the_interval(host, dc, bench, tiny_model, prompts):
    """Aggressive EasyCache from the first step: the uncond returns at sigma 5.42 after EasyCache has
    started reusing; it is made to compute that step instead of failing on the missing cache."""
    from comfy_extras.nodes_easycache import EasyCacheNode
    positive, negative, _ = prompts
    unet = tiny_model.model.diffusion_model
    with unet_calls(unet) as alone:
        ksampler(dc.patch(tiny_model, **settings(bench)), positive, negative)
    for order in ("sprint first", "easycache first"):
        cache = lambda m: EasyCacheNode.execute(m, 3.0, 0.0, 0.95, False).result[0]  # noqa: E731
        model = cache(dc.patch(tiny_model, **settings(bench))) if order == "sprint first" else \
            dc.patch(cache(tiny_model), **settings(bench))
        with unet_calls(unet) as calls:
            out = ksampler(model, positive, negative)
        assert torch.isfinite(out).all()
        assert sum(r for _, r in calls) < sum(r for _, r in alone), order
        returning = [r for s, r in rows_per_step(calls) if s <= 5.42][0]
        assert returning == 2, order          # the step where the uncond comes back is computed


def test_bad_settings_are_reported(host, bench, tiny_model, tiny_clip):
    from comfy_execution.graph_utils import GraphBuilder

    def sample(**kw):
        g = GraphBuilder()
        model = g.node("SprintDynamicCFG", model=harness.source(g, "MODEL", tiny_model), **settings(bench, **kw)).out(0)
        pos = g.node("CLIPTextEncode", clip=harness.source(g, "CLIP", tiny_clip), text="a cat").out(0)
        latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1).out(0)
        run(host, g, g.node("KSampler", model=model, positive=pos, negative=pos, latent_image=latent, seed=1, steps=2,
                            cfg=CFG, sampler_name="euler", scheduler="karras", denoise=1.0))

    with pytest.raises(hostlib.PromptFailed, match="sigma_low < sigma_high"):
        sample(sigma_low=6.0)
    with pytest.raises(hostlib.PromptFailed, match="guidance window is empty"):   # found when sampling
        sample(start_percent=0.97)


# ---- the exact GMM: the node against the engine's guided ODE, EPS / V / flow, and core post-CFG nodes ----

SHAPE = (4, 16, 16)


@pytest.fixture(scope="module")
def mixture():
    return G.GaussianMixture.image_like(shape=SHAPE, components=4, classes=2, seed=9)


def euler(denoise, x, sigmas):
    for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        x = x + (s_next - s) * (x - denoise(x, s)) / s
    return x


def emulate(mixture, schedule, x_T, sigmas, flow, post=None, label=1):
    """Euler on D_u + w(D_c - D_u) with the engine schedule; `post(denoised, d_c, d_u, w, x, s)` where w != 1."""
    def denoise(x, s):
        w = schedule.scale(CFG, guidance.noise_to_signal(s, flow))
        keep = max(1 - s, 1e-6) if flow else 1.0       # the GMM model's own flow -> EDM conversion
        x_edm, s_edm = x / keep, s / keep
        d_c = mixture.denoise(x_edm, s_edm, label)
        d_u = d_c if w == 1.0 else mixture.denoise(x_edm, s_edm)
        out = d_u + (d_c - d_u) * w
        return out if post is None or w == 1.0 else post(out, d_c, d_u, w, x, s)
    x = euler(denoise, x_T.double(), sigmas.double())
    return x / (1 - sigmas[-1].double()) if flow else x    # KSAMPLER's inverse_noise_scaling for flow


def gmm_run(synthetic, bench, mixture, model, sigmas, seed=1):
    """(x_T, sample, [(sigma, rows)] of the mixture's evaluations) of a euler run."""
    noise = torch.randn((2,) + SHAPE, generator=torch.Generator().manual_seed(seed))
    with ModelCalls(model.model.diffusion_model) as calls:
        x_T, x = bench.sample_gmm(model, "euler", sigmas, noise, synthetic.gmm_conditioning(1),
                                  synthetic.gmm_conditioning(-1), CFG)
    return x_T, x, calls.sigmas


@pytest.mark.parametrize("model_type", ["eps", "v_prediction", "flow"])
@pytest.mark.parametrize("extra", [{}, {"rescale": 0.7, "threshold_percentile": 0.99}])
def test_node_integrates_the_engines_guided_ode(host, synthetic, dc, bench, mixture, model_type, extra):
    """ComfyUI euler under the node == Euler on the engine's D_u + w(sigma)(D_c - D_u) (+ rescale and
    thresholding), per parametrisation. With the extras, guidance also at high noise (phases 1/1/0),
    where cond and uncond differ on the mixture."""
    import comfy.samplers
    base = synthetic.gmm_model(mixture, model_type)
    ms = base.get_model_object("model_sampling")
    flow = model_type == "flow"
    sigmas = comfy.samplers.calculate_sigmas(ms, "simple" if flow else "karras", 12)[:-1]
    s = settings(bench, **extra) if not extra else \
        settings(bench, schedule="phases", strength_high=1.0, strength_mid=1.0, strength_low=0.0, **extra)
    x_T, x, calls = gmm_run(synthetic, bench, mixture, dc.patch(base, **s), sigmas)
    schedule = dc.resolve_schedule(s, ms)

    def post(out, d_c, d_u, w, x, sigma):
        x_edm, s_edm = guidance.edm_state(x, torch.tensor([sigma], dtype=x.dtype), flow)
        out = guidance.rescale_cfg(out, d_c, x_edm, s_edm, s["rescale"])
        return guidance.dynamic_threshold(out, d_c, s["threshold_percentile"])

    want = emulate(mixture, schedule, x_T, sigmas, flow, post if extra else None)
    assert evaluation.rmse(x, want).max() < 1e-4
    guided = [schedule.scale(CFG, guidance.noise_to_signal(float(v), flow)) != 1.0 for v in sigmas[:-1]]
    assert [r for _, r in calls] == [4 if g else 2 for g in guided] and 0 < sum(guided) < len(guided)
    if extra:      # the corrections act
        assert evaluation.rmse(x, emulate(mixture, schedule, x_T, sigmas, flow)).min() > 1e-3


def optimized_scale(positive, negative):
    dot = (positive * negative).flatten(1).sum(1)
    return (dot / (negative.pow(2).flatten(1).sum(1) + 1e-8)).view(-1, 1, 1, 1)


def test_cfg_zero_star_sees_the_scheduled_scale_in_either_order(host, synthetic, dc, bench, mixture):
    import comfy.samplers
    from comfy_extras.nodes_cfg import CFGZeroStar
    base = synthetic.gmm_model(mixture)
    sigmas = comfy.samplers.calculate_sigmas(base.get_model_object("model_sampling"), "karras", 12)[:-1]
    zero = lambda m: CFGZeroStar.execute(m).result[0]  # noqa: E731
    x_T, x, calls = gmm_run(synthetic, bench, mixture, zero(dc.patch(base, **settings(bench))), sigmas)
    _, x2, _ = gmm_run(synthetic, bench, mixture, dc.patch(zero(base), **settings(bench)), sigmas)
    assert torch.equal(x, x2)

    def cfg_zero_star(out, d_c, d_u, w, x, s):      # comfy_extras/nodes_cfg.py, with the step's scale
        alpha = optimized_scale(x - d_c, x - d_u)
        return out + d_u * (alpha - 1.0) + w * d_u * (1.0 - alpha)

    want = emulate(mixture, dc.resolve_schedule(settings(bench), base.get_model_object("model_sampling")),
                   x_T, sigmas, False, cfg_zero_star)
    assert evaluation.rmse(x, want).max() < 1e-4
    assert sum(r for _, r in calls) < 2 * 2 * len(sigmas[:-1])


def test_core_rescale_cfg_composes_and_equals_sprints_rescale(host, synthetic, dc, bench, mixture):
    """RescaleCFG (the cfg-function slot) under a Sprint schedule == Sprint's own rescale (EPS model)."""
    import comfy.samplers
    from comfy_extras.nodes_model_advanced import RescaleCFG
    base = synthetic.gmm_model(mixture)
    sigmas = comfy.samplers.calculate_sigmas(base.get_model_object("model_sampling"), "karras", 12)[:-1]
    for schedule in ("interval", "constant"):
        _, core, calls = gmm_run(synthetic, bench, mixture, dc.patch(RescaleCFG().patch(base, 0.7)[0], **settings(bench, schedule=schedule)), sigmas)
        _, ours, _ = gmm_run(synthetic, bench, mixture, dc.patch(base, **settings(bench, schedule=schedule, rescale=0.7)), sigmas)
        assert evaluation.rmse(core, ours).max() < 1e-4
        assert sum(r for _, r in calls) == 2 * (2 * len(sigmas[:-1]) if schedule == "constant" else
                                                sum(2 if 0.28 < v <= 5.42 else 1 for v in sigmas[:-1].tolist()))
    _, plain, _ = gmm_run(synthetic, bench, mixture, dc.patch(base, **settings(bench, schedule="constant")), sigmas)
    assert evaluation.rmse(ours, plain).min() > 1e-3      # constant with rescale vs without: the rescale acts
