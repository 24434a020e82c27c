"""The host tier itself: Sprint loads into real ComfyUI, prompts run, the server lists the nodes,
and the GMM model lets ComfyUI's own samplers be measured against the exact ODE."""
import math

import pytest
import torch

import harness
import sprint
from sprint.bench import host as hostlib
from sprint.engines import evaluation, gmm as G

pytestmark = pytest.mark.host


def test_pack_loads_without_import_failures(host):
    assert host.pack is not None
    assert [f for f in host.import_failures if "Sprint" in f] == []
    expected = {node.GET_SCHEMA().node_id for name in sprint.NODE_MODULES
                for node in getattr(host.pack.nodes, name).NODES}
    assert expected == set(host.sprint_nodes())
    for node_id in expected:
        schema = host.nodes.NODE_CLASS_MAPPINGS[node_id].GET_SCHEMA()
        assert schema.category.startswith("Sprint/") and schema.description, node_id
        assert schema.display_name.startswith("Sprint "), f"{node_id}: display name {schema.display_name!r}"
        for inp in schema.inputs:
            assert getattr(inp, "tooltip", None), f"{node_id}.{inp.id} has no tooltip"
        for out in schema.outputs:
            assert getattr(out, "tooltip", None), f"{node_id} output {out.io_type} has no tooltip"


def txt2img(graph, model, clip, vae, steps=3, size=64, sampler="euler"):
    from comfy_execution.graph_utils import GraphBuilder  # noqa: F401  (graph is one)
    pos = graph.node("CLIPTextEncode", clip=clip, text="a photo of a cat")
    neg = graph.node("CLIPTextEncode", clip=clip, text="blurry")
    latent = graph.node("EmptyLatentImage", width=size, height=size, batch_size=1)
    sample = graph.node("KSampler", model=model, positive=pos.out(0), negative=neg.out(0), latent_image=latent.out(0),
                        seed=1, steps=steps, cfg=6.0, sampler_name=sampler, scheduler="karras", denoise=1.0)
    decode = graph.node("VAEDecode", samples=sample.out(0), vae=vae)
    save = graph.node("SaveImage", images=decode.out(0), filename_prefix="sprint_test")
    return sample, save


def test_ksampler_workflow_on_tiny_model(host, tiny_model, tiny_clip, taesd_vae):
    from comfy_execution.graph_utils import GraphBuilder
    g = GraphBuilder()
    sample, save = txt2img(g, harness.source(g, "MODEL", tiny_model), harness.source(g, "CLIP", tiny_clip),
                           harness.source(g, "VAE", taesd_vae))
    result = host.run(g.finalize())
    latent = result.output(sample.id)["samples"]
    assert latent.shape == (1, 4, 8, 8) and torch.isfinite(latent).all() and latent.abs().sum() > 0
    assert len(result.ui[save.id]["images"]) == 1


def test_checkpoint_workflow(host, sd15_checkpoint):
    from comfy_execution.graph_utils import GraphBuilder
    g = GraphBuilder()
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=sd15_checkpoint)
    sample, save = txt2img(g, ckpt.out(0), ckpt.out(1), ckpt.out(2), steps=2, size=64)
    result = host.run(g.finalize())
    assert torch.isfinite(result.output(sample.id)["samples"]).all()
    assert result.ui[save.id]["images"][0]["filename"].startswith("sprint_test")


def test_invalid_prompt_is_reported(host):
    from comfy_execution.graph_utils import GraphBuilder
    g = GraphBuilder()
    g.node("KSampler", seed=1)
    with pytest.raises(hostlib.PromptFailed, match="invalid prompt"):
        host.run(g.finalize())


def test_server_lists_sprint_nodes(comfy_server, host):
    info = comfy_server.get("/object_info")
    assert set(host.sprint_nodes()) <= set(info)
    assert "KSampler" in info


# ---- the GMM model: ComfyUI's own samplers against the exact ODE ----

SHAPE = (4, 64, 64)


@pytest.fixture(scope="module")
def mixture():
    return G.GaussianMixture.image_like(shape=SHAPE, components=4, classes=2, seed=7)


def comfy_sample(synthetic, mixture, sampler_name, sigmas, noise, label=-1, cfg=1.0, model_type="eps"):
    """Run a ComfyUI sampler on the GMM model through comfy.sample.sample_custom; return (x_T, x)."""
    import comfy.sample
    import comfy.samplers
    model = synthetic.gmm_model(mixture, model_type)
    start = {}

    def callback(step, x0, x, total):
        start.setdefault("x", x.clone())

    out = comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.ksampler(sampler_name), sigmas,
                                     synthetic.gmm_conditioning(label), synthetic.gmm_conditioning(-1),
                                     torch.zeros_like(noise), callback=callback, disable_pbar=True, seed=0)
    return start["x"], out


def test_gmm_model_returns_the_exact_denoiser(host, synthetic, mixture):
    model = synthetic.gmm_model(mixture)
    x = torch.randn(2, *SHAPE)
    sigma = torch.tensor([3.0, 3.0])
    got = model.model.apply_model(x, sigma, c_crossattn=torch.tensor([[[0.0]], [[1.0]]]))
    want = mixture.denoise(x, sigma, torch.tensor([0, 1])).float()
    assert torch.allclose(got, want, atol=1e-5)


def euler(denoise, x, sigmas):
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + (s_next - s) * (x - denoise(x, s)) / s
    return x


@pytest.mark.parametrize("cfg", [1.0, 3.0])
@pytest.mark.parametrize("model_type", ["eps", "v_prediction", "flow"])
def test_comfy_guidance_and_parametrisations_on_the_gmm(host, synthetic, mixture, cfg, model_type):
    """ComfyUI's euler + CFGGuider on the GMM model = plain Euler on D_u + cfg (D_c - D_u)."""
    import comfy.samplers
    ms = synthetic.gmm_model(mixture, model_type).get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(ms, "karras" if model_type != "flow" else "simple", 6)[:-1]
    noise = torch.randn((2,) + SHAPE, generator=torch.Generator().manual_seed(1))
    x_T, x = comfy_sample(synthetic, mixture, "euler", sigmas, noise, label=1, cfg=cfg, model_type=model_type)

    def guided(x, s):
        if model_type == "flow":   # the flow state is (1 - s) times the EDM state at s / (1 - s)
            keep = max(1 - s, 1e-6)
            x, s = x / keep, s / keep
        d_u, d_c = mixture.denoise(x, s), mixture.denoise(x, s, label=1)
        return d_u + cfg * (d_c - d_u)

    want = euler(guided, x_T.double(), sigmas.double())
    if model_type == "flow":   # KSAMPLER ends with inverse_noise_scaling: x / (1 - sigma_last)
        want = want / (1 - sigmas[-1].double())
    assert evaluation.rmse(x, want).max() < 1e-4


@pytest.mark.parametrize("sampler_name,order", [("euler", 1.0), ("dpmpp_2m", 2.0)])
def test_comfy_samplers_reach_their_known_order(host, synthetic, mixture, sampler_name, order):
    """Error vs the exact ODE solution to sigma_min, at n and 2n karras steps (4x64x64 mixture)."""
    import comfy.samplers
    ms = synthetic.gmm_model(mixture).get_model_object("model_sampling")
    noise = torch.randn((2,) + SHAPE, generator=torch.Generator().manual_seed(0))
    errors = []
    for n in (12, 24, 48):
        sigmas = comfy.samplers.calculate_sigmas(ms, "karras", n)[:-1]       # stop at sigma_min
        x_T, x = comfy_sample(synthetic, mixture, sampler_name, sigmas, noise)
        ref = evaluation.reference_solution(mixture.denoise, x_T, float(sigmas[0]), float(sigmas[-1]), steps=1500, check=(n == 12))
        errors.append(evaluation.rmse(x, ref).mean().item())
    observed = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(abs(o - order) < 0.35 for o in observed), (errors, observed)
