"""SprintTwoStageUpscale through ComfyUI's executor: model calls = steps x denoise (counted),
tiling above the threshold, latent and pixel paths (VAE + upscale model), clear errors.

The default sampler (Sprint's adaptive sampler, nodes/sampler.py) is not part of this branch; these
tests connect an explicit SAMPLER."""
import pytest
import torch

import harness

pytestmark = pytest.mark.host


def two_stage_graph(model, clip, size=64, steps=10, denoise=0.3, method="latent bislerp", tile_size=0, vae=None,
                    upscale_model=None):
    """stage 1 (KSampler, 2 steps) -> SprintTwoStageUpscale (euler) -> SaveLatent."""
    from comfy_execution.graph_utils import GraphBuilder
    g = GraphBuilder()
    clip = harness.source(g, "CLIP", clip)
    model = harness.source(g, "MODEL", model)
    pos = g.node("CLIPTextEncode", clip=clip, text="a lighthouse on a cliff")
    neg = g.node("CLIPTextEncode", clip=clip, text="blurry")
    latent = g.node("EmptyLatentImage", width=size, height=size, batch_size=1)
    stage1 = g.node("KSampler", model=model, positive=pos.out(0), negative=neg.out(0), latent_image=latent.out(0),
                    seed=1, steps=2, cfg=6.0, sampler_name="euler", scheduler="karras", denoise=1.0)
    sampler = g.node("KSamplerSelect", sampler_name="euler")
    extra = {}
    if vae is not None:
        extra["vae"] = harness.source(g, "VAE", vae)
    if upscale_model is not None:
        extra["upscale_model"] = harness.source(g, "UPSCALE_MODEL", upscale_model)
    up = g.node("SprintTwoStageUpscale", model=model, positive=pos.out(0), negative=neg.out(0), latent=stage1.out(0),
                sampler=sampler.out(0), seed=5, steps=steps, cfg=6.0, scheduler="karras", denoise=denoise,
                scale_by=2.0, upscale_method=method, tile_size=tile_size, tile_overlap=64, **extra)
    g.node("SaveLatent", samples=up.out(0), filename_prefix="sprint_test")
    return g, up, stage1


@pytest.mark.parametrize("steps,denoise", [(10, 0.3), (20, 0.25), (8, 1.0)])
def test_refinement_costs_steps_times_denoise_model_calls(host, tiny_model, tiny_clip, steps, denoise, model_calls):
    calls = model_calls(tiny_model)
    model = tiny_model
    g, up, _ = two_stage_graph(model, tiny_clip, steps=steps, denoise=denoise)
    out = host.run(g.finalize()).output(up.id)["samples"]
    assert out.shape == (1, 4, 16, 16) and torch.isfinite(out).all()
    refine = [s for s in calls.shapes if s[-2:] == (16, 16)]
    assert len(refine) == round(steps * denoise)          # cond + uncond batched: one call per euler step
    assert [s for s in calls.shapes if s[-2:] == (8, 8)] == [(2, 4, 8, 8)] * 2   # stage 1: 2 steps


def test_ksampler_denoise_would_run_every_step(host, tiny_model, tiny_clip, model_calls):
    """The baseline the node improves on: KSampler at denoise 0.3 still makes `steps` calls."""
    from comfy_execution.graph_utils import GraphBuilder
    calls = model_calls(tiny_model)
    model = tiny_model
    g = GraphBuilder()
    clip = harness.source(g, "CLIP", tiny_clip)
    pos = g.node("CLIPTextEncode", clip=clip, text="a lighthouse")
    latent = g.node("EmptyLatentImage", width=128, height=128, batch_size=1)
    ks = g.node("KSampler", model=harness.source(g, "MODEL", model), positive=pos.out(0), negative=pos.out(0),
                latent_image=latent.out(0), seed=1, steps=10, cfg=6.0, sampler_name="euler", scheduler="karras", denoise=0.3)
    g.node("SaveLatent", samples=ks.out(0), filename_prefix="sprint_test")
    host.run(g.finalize())
    assert len(calls.shapes) == 10


def test_large_results_are_refined_in_tiles(host, tiny_model, tiny_clip, model_calls):
    calls = model_calls(tiny_model)
    model = tiny_model
    g, up, _ = two_stage_graph(model, tiny_clip, size=128, steps=4, denoise=0.5, tile_size=192)
    out = host.run(g.finalize()).output(up.id)["samples"]
    assert out.shape == (1, 4, 32, 32) and torch.isfinite(out).all()
    refine = calls.shapes[2:]                  # after the 2 stage-1 calls at 16 x 16
    assert refine == [(2, 4, 24, 24)] * (4 * 2)   # 2 steps x 4 tiles of 24 x 24 (192 px)


def test_pixel_space_with_vae_and_upscale_model(host, tiny_model, tiny_clip, taesd_vae, model_calls):
    from spandrel import ModelLoader
    from spandrel.architectures.Compact import Compact
    torch.manual_seed(0)
    upscaler = ModelLoader().load_from_state_dict(Compact(num_feat=8, num_conv=2, upscale=2).state_dict()).eval()
    calls = model_calls(tiny_model)
    model = tiny_model
    g, up, _ = two_stage_graph(model, tiny_clip, steps=10, denoise=0.2, method="pixel lanczos", vae=taesd_vae,
                            upscale_model=upscaler)
    out = host.run(g.finalize()).output(up.id)["samples"]
    assert out.shape == (1, 4, 16, 16) and torch.isfinite(out).all()
    assert len([s for s in calls.shapes if s[-2:] == (16, 16)]) == 2


def test_denoise_zero_only_upscales(host, tiny_model, tiny_clip, model_calls):
    import comfy.utils
    calls = model_calls(tiny_model)
    model = tiny_model
    g, up, stage1 = two_stage_graph(model, tiny_clip, denoise=0.0, method="latent bicubic")
    result = host.run(g.finalize())
    want = comfy.utils.common_upscale(result.output(stage1.id)["samples"], 16, 16, "bicubic", "disabled")
    assert torch.equal(result.output(up.id)["samples"], want)
    assert all(s[-2:] == (8, 8) for s in calls.shapes)


@pytest.mark.parametrize("method,with_upscaler,message", [
    ("pixel bicubic", False, "needs the VAE"),
    ("latent bislerp", True, "pixel space"),
])
def test_bad_combinations_are_refused_clearly(host, tiny_model, tiny_clip, method, with_upscaler, message):
    from sprint.bench import host as hostlib
    from spandrel import ModelLoader
    from spandrel.architectures.Compact import Compact
    upscaler = ModelLoader().load_from_state_dict(Compact(num_feat=8, num_conv=2, upscale=2).state_dict()) if with_upscaler else None
    g, _, _ = two_stage_graph(tiny_model, tiny_clip, method=method, upscale_model=upscaler)
    with pytest.raises(hostlib.PromptFailed, match=message):
        host.run(g.finalize())
