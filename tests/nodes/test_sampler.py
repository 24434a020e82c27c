"""Sprint's adaptive sampler inside ComfyUI: the SAMPLER equals the engine on the exact GMM model
(EPS, V, flow), SprintKSampler runs and reports through the executor, Cancel stops it, the
benchmark command runs."""

import pytest
import torch

import harness
from sprint.engines import evaluation, gmm as G, sampling

pytestmark = pytest.mark.host

SHAPE = (4, 16, 16)


@pytest.fixture(scope="module")
def mixture():
    return G.GaussianMixture.image_like(shape=SHAPE, components=4, classes=2, seed=7)


def comfy_run(host, synthetic, mixture, model_type, sigmas, noise, info, callback=None, **options):
    """sample_custom with Sprint's SAMPLER on the GMM model; returns (x_T as sampled, result)."""
    import comfy.sample
    model = synthetic.gmm_model(mixture, model_type)
    start = {}

    def record(step, x0, x, total):
        start.setdefault("x", x.clone())
        if callback is not None:
            callback(step)
    sampler = host.pack.nodes.sampler.adaptive_sampler("balanced", info=info, **options)
    cond = synthetic.gmm_conditioning(-1)
    out = comfy.sample.sample_custom(model, noise, 1.0, sampler, sigmas, cond, cond, torch.zeros_like(noise),
                                     callback=record, disable_pbar=True, seed=3)
    return start["x"], out


@pytest.mark.parametrize("model_type", ["eps", "v_prediction", "flow"])
@pytest.mark.parametrize("denoise", [1.0, 0.5])
def test_node_path_equals_engine_path(host, synthetic, mixture, model_type, denoise):
    sampler_node = host.pack.nodes.sampler
    model = synthetic.gmm_model(mixture, model_type)
    sigmas = sampler_node._sigmas(model, "karras" if model_type != "flow" else "simple", 16, denoise)
    noise = torch.randn((3,) + SHAPE, generator=torch.Generator().manual_seed(2))
    info = {}
    x_T, out = comfy_run(host, synthetic, mixture, model_type, sigmas, noise, info)
    flow = model_type == "flow"

    def denoise_fn(x, sigma):
        state, s = x.double(), sigma.double()
        if flow:        # the flow state is (1 - s) times the EDM state at s / (1 - s)
            keep = (1 - s).clamp(min=1e-6)     # as the GMM model does at sigma = 1
            state, s = state / keep.reshape(-1, 1, 1, 1), s / keep
        return mixture.denoise(state, s).to(x.dtype)
    engine_info = {}
    want = sampling.sample_adaptive(denoise_fn, x_T, sigmas, **sampling.PRESETS["balanced"], flow=flow,
                                    info=engine_info)
    assert torch.equal(info["nfe"], engine_info["nfe"])
    assert evaluation.rmse(out, want).max() < 1e-4
    assert info["nfe"].max() <= len(sigmas) - 1 and info["nfe_batch"] <= len(sigmas) - 1
    # and it solved the ODE: close to the fine reference from the same start (to sigma = 0)
    if denoise == 1.0 and not flow:
        ref = evaluation.reference_solution(mixture.denoise, x_T.double(), float(sigmas[0]), 0.0, steps=400, check=False)
        assert evaluation.rmse(out, ref).max() < 0.05


def test_rows_keep_their_own_prompts_when_others_settle(host, synthetic, mixture):
    """A batch of prompts (one conditioning row per image): images that settle early leave no other
    image with the wrong prompt — each equals its own run alone (the calls on the unsettled rows
    once paired them with the first rows' prompts)."""
    import comfy.sample
    model = synthetic.gmm_model(mixture, "eps")
    sigmas = host.pack.nodes.sampler._sigmas(model, "karras", 20, 1.0)
    noise = torch.randn((4,) + SHAPE, generator=torch.Generator().manual_seed(5))
    labels = [1, 0, 1, 0]

    def run(rows):
        info = {}
        sampler = host.pack.nodes.sampler.adaptive_sampler("balanced", tol=0.5, calls=20, min_fraction=0.0, info=info)
        cond = [[torch.tensor([float(labels[r]) for r in rows]).reshape(-1, 1, 1), {}]]
        out = comfy.sample.sample_custom(model, noise[rows], 1.0, sampler, sigmas, cond, cond,
                                         torch.zeros_like(noise[rows]), disable_pbar=True, seed=0)
        return out, info["nfe"]
    out, nfe = run([0, 1, 2, 3])
    assert nfe.min() < nfe.max(), nfe                       # some images settled before others
    for r in range(4):
        alone, nfe_alone = run([r])
        assert nfe_alone.item() == nfe[r].item() and torch.allclose(alone[0], out[r], atol=1e-5), r


@pytest.mark.parametrize("scheduler", ["karras", "ddim_uniform", "beta", "simple"])
@pytest.mark.parametrize("denoise", [1.0, 0.6])
def test_schedule_is_ksamplers(host, synthetic, mixture, scheduler, denoise):
    """SprintKSampler samples on KSampler's own schedule, ddim_uniform's extra step included."""
    import comfy.samplers
    model = synthetic.gmm_model(mixture)
    stock = comfy.samplers.KSampler(model, 6, "cpu", sampler="euler", scheduler=scheduler, denoise=denoise)
    assert torch.equal(host.pack.nodes.sampler._sigmas(model, scheduler, 6, denoise), stock.sigmas.cpu())


def test_cancel_stops_sampling(host, synthetic, mixture):
    import comfy.model_management as mm
    sigmas = host.pack.nodes.sampler._sigmas(synthetic.gmm_model(mixture), "karras", 20, 1.0)
    noise = torch.randn((2,) + SHAPE, generator=torch.Generator().manual_seed(0))
    steps = []

    def cancel_after_two(step):
        steps.append(step)
        if step == 1:
            mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            comfy_run(host, synthetic, mixture, "eps", sigmas, noise, {}, callback=cancel_after_two)
    finally:
        mm.interrupt_current_processing(False)
    assert steps == [0, 1]


def ksampler_graph(graph, model, clip, vae, steps, denoise=1.0, node="SprintKSampler", batch=2):
    pos = graph.node("CLIPTextEncode", clip=clip, text="a photo of a cat")
    neg = graph.node("CLIPTextEncode", clip=clip, text="blurry")
    latent = graph.node("EmptyLatentImage", width=64, height=64, batch_size=batch)
    inputs = dict(model=model, positive=pos.out(0), negative=neg.out(0), latent_image=latent.out(0), seed=5,
                  steps=steps, cfg=5.0, scheduler="karras", denoise=denoise)
    if node == "SprintKSampler":
        inputs["preset"] = "draft"
    else:
        inputs["sampler_name"] = "dpmpp_2m"
    sample = graph.node(node, **inputs)
    graph.node("PreviewImage", images=graph.node("VAEDecode", samples=sample.out(0), vae=vae).out(0))
    return sample


def test_sprint_ksampler_on_tiny_model_reports_calls(host, tiny_model, tiny_clip, taesd_vae):
    from comfy_execution.graph_utils import GraphBuilder
    g = GraphBuilder()
    model, clip = harness.source(g, "MODEL", tiny_model), harness.source(g, "CLIP", tiny_clip)
    vae = harness.source(g, "VAE", taesd_vae)
    sprint_node = ksampler_graph(g, model, clip, vae, steps=12)
    stock = ksampler_graph(g, model, clip, vae, steps=12, node="KSampler")
    with harness.captured_events() as events:
        result = host.run(g.finalize())
    latent = result.output(sprint_node.id)["samples"]
    assert latent.shape == (2, 4, 8, 8) and torch.isfinite(latent).all()
    assert latent.shape == result.output(stock.id)["samples"].shape
    stats = [data for name, data in events if name == "sprint.sampler"]
    assert len(stats) == 1 and stats[0]["node"] == sprint_node.id
    stats = stats[0]
    assert stats["budget"] == 12 and 1 <= stats["calls"] <= 12 and stats["saved"] == 12 - stats["calls"]
    assert 1 <= stats["stop_step"] <= 12 and stats["est_error"] >= 0
    text = result.ui[sprint_node.id]["text"][0]
    assert text.startswith(f"{stats['calls']} of 12 model calls")
    # an early stop names its step; a run that saved nothing says its budget bound it (no stop to name)
    expected = (f"({stats['saved']} saved), settled at step {stats['stop_step']}" if stats["saved"]
                else "spent its whole 12-call budget")
    assert expected in text and f"estimated error {stats['est_error']:.2g}" in text


def test_sprint_ksampler_img2img_starts_from_the_latent(host, tiny_model, tiny_clip, taesd_vae):
    from comfy_execution.graph_utils import GraphBuilder
    g = GraphBuilder()
    model, clip = harness.source(g, "MODEL", tiny_model), harness.source(g, "CLIP", tiny_clip)
    vae = harness.source(g, "VAE", taesd_vae)
    low = ksampler_graph(g, model, clip, vae, steps=8, denoise=0.05, batch=1)
    stock = ksampler_graph(g, model, clip, vae, steps=8, denoise=0.05, batch=1, node="KSampler")
    with harness.captured_events() as events:
        result = host.run(g.finalize())
    # the same noise on the same short tail of the schedule: both solve the same ODE
    ours, theirs = result.output(low.id)["samples"], result.output(stock.id)["samples"]
    assert evaluation.rmse(ours, theirs).max() < 0.2 * theirs.abs().max()
    assert [data["budget"] for name, data in events if name == "sprint.sampler"] == [8]
