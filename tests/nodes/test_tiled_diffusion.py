"""SprintTiledDiffusion in ComfyUI: exact on a purely local model (conv net + local ControlNet)
through ComfyUI's own samplers with area, mask, concat and ControlNet conditioning; identical to
untiled when one tile covers the latent; memory estimate of one tile batch; composition."""
import pytest
import torch

import harness

pytestmark = pytest.mark.host

RADIUS = 2                       # 3x3 convolutions of the local UNet: receptive field 5
H, W = 40, 56                    # latent pixels (320 x 448 px)


class LocalUNet(torch.nn.Module):
    """Stands where the UNet would: local in x (and in the concat latent), global only per row
    through the text context, and adds ControlNet "middle" residuals like the UNet does."""
    dtype = torch.float32

    def __init__(self, in_channels=8, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.convs = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(4, c, 3, 3, generator=g) / (3 * c ** 0.5))
                                             for c in (in_channels, 4)])

    def forward(self, x, timesteps, context=None, control=None, transformer_options={}, **kwargs):
        h = torch.tanh(torch.nn.functional.conv2d(x, self.convs[0], padding=1))
        h = torch.nn.functional.conv2d(h, self.convs[1], padding=1)
        h = h * (1 + context.mean(dim=(1, 2))).reshape(-1, 1, 1, 1) + 0.001 * timesteps.reshape(-1, 1, 1, 1)
        if control is not None:
            h = h + control["middle"][0]
        return h


class LocalControl(torch.nn.Module):
    """A ControlNet reading its hint per 8x8 pixel block (the latent pixel) plus a 3x3 conv of x."""
    dtype = torch.float32

    def __init__(self, seed=1):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 4, 3, 3, generator=torch.Generator().manual_seed(seed)) / 6)

    def forward(self, x, hint, timesteps, context, **kwargs):
        pooled = torch.nn.functional.avg_pool2d(hint, 8).mean(1, keepdim=True)
        return {"middle": [torch.nn.functional.conv2d(x, self.weight, padding=1) * pooled]}


@pytest.fixture(scope="module")
def local_model(host):
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
    conf = comfy.supported_models.SD15({"disable_unet_model_creation": True})
    base = comfy.model_base.BaseModel(conf, device=torch.device("cpu"))
    base.diffusion_model = LocalUNet()
    return comfy.model_patcher.ModelPatcher(base, torch.device("cpu"), torch.device("cpu"))


def context(seed):
    return torch.randn(1, 77, 64, generator=torch.Generator().manual_seed(seed))


def prompt(seed):
    """A conditioning entry with a text context and a concat latent (as inpainting models get)."""
    import comfy.conds
    concat = torch.randn(1, 4, H, W, generator=torch.Generator().manual_seed(100 + seed))
    return [context(seed), {"model_conds": {"c_concat": comfy.conds.CONDNoiseShape(concat)}}]


def outputs(host, name, **inputs):
    """Run a node class in-process (V1 or V3) and return its outputs."""
    cls = host.nodes.NODE_CLASS_MAPPINGS[name]
    if hasattr(cls, "FUNCTION"):
        return tuple(getattr(cls(), cls.FUNCTION)(**inputs))
    return tuple(cls.execute(**inputs).args)


def node(host, name, **inputs):
    return outputs(host, name, **inputs)[0]


@pytest.fixture(scope="module")
def conditioning(host):
    """positive: a whole-image prompt with a concat latent, a feathered area prompt across tile
    boundaries and a masked prompt; negative: one prompt; a ControlNet on both."""
    import comfy.controlnet
    g = torch.Generator().manual_seed(3)
    positive = [prompt(1)]
    positive += node(host, "ConditioningSetArea", conditioning=[prompt(2)], width=192, height=160, x=120, y=64, strength=0.8)
    mask = torch.nn.functional.interpolate(torch.rand(1, 1, 5, 7, generator=g), size=(H * 8, W * 8), mode="bilinear")[0]
    positive += node(host, "ConditioningSetMask", conditioning=[prompt(4)], mask=mask, strength=0.6, set_cond_area="default")
    negative = [prompt(5)]
    control = comfy.controlnet.ControlNet(LocalControl(), load_device=torch.device("cpu"))
    image = torch.rand(1, H * 8, W * 8, 3, generator=g)
    return outputs(host, "ControlNetApplyAdvanced", positive=positive, negative=negative, control_net=control,
                image=image, strength=0.7, start_percent=0.0, end_percent=1.0)


def tiled(host, model, tile=192, overlap=40, margin=16, method="Mixture of Diffusers", batch=1, width=None):
    return node(host, "SprintTiledDiffusion", model=model, method=method, tile_width=width or tile, tile_height=tile,
                overlap=overlap, margin=margin, tile_batch_size=batch)


def sample(model, positive, negative, cfg=5.0, steps=4, sampler="euler", seed=0, batch=2):
    import comfy.sample
    import comfy.samplers
    latent = torch.zeros(batch, 4, H, W)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", steps)
    return comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.sampler_object(sampler), sigmas,
                                      positive, negative, latent, disable_pbar=True, seed=seed)


def close(a, b):
    assert torch.isfinite(a).all()
    err = (a - b).abs().max().item()
    assert err < 1e-4 * max(1.0, b.abs().max().item()), err


@pytest.mark.parametrize("method,batch", [("Mixture of Diffusers", 1), ("MultiDiffusion", 3)])
def test_tiles_reproduce_a_local_model_with_area_mask_concat_and_controlnet(host, local_model, conditioning, method, batch, model_calls):
    positive, negative = conditioning
    want = sample(local_model, positive, negative)
    model = tiled(host, local_model, method=method, batch=batch)
    calls = model_calls(model)
    got = sample(model, positive, negative)
    close(got, want)
    # it really ran in tiles of 24 x 24 latent pixels (192 px), one per call because an area cond
    # is present (areas differ per tile); the area cond ran on its part of each tile
    assert all(s[-2] <= 24 and s[-1] <= 24 for s in calls.shapes)
    assert sum(s[-2:] == (24, 24) for s in calls.shapes) == 4 * 6    # 4 steps x 6 tiles


def test_tile_batches_stack_tiles_without_area_conds(host, local_model, model_calls):
    positive, negative = [prompt(1)], [prompt(5)]
    want = sample(local_model, positive, negative, steps=2)
    model = tiled(host, local_model, batch=4)
    calls = model_calls(model)
    close(sample(model, positive, negative, steps=2), want)
    plan_tiles = 6                             # 40 x 56 latent in 24 x 24 tiles: 2 x 3
    rows = 2 * 2                               # latent batch 2, cond + uncond batched together
    assert sorted({s[0] for s in calls.shapes}) == [3 * rows]   # 6 tiles in balanced batches of 3
    assert len(calls.shapes) == 2 * plan_tiles // 3


def test_without_margin_the_tiles_differ(host, local_model, conditioning):
    positive, negative = conditioning
    diff = (sample(tiled(host, local_model, margin=0, method="MultiDiffusion"), positive, negative)
            - sample(local_model, positive, negative)).abs().max()
    assert diff > 1e-3     # the exactness above is not vacuous


def test_one_tile_is_identical_to_untiled_on_the_tiny_unet(host, tiny_model, tiny_clip):
    from comfy_execution.graph_utils import GraphBuilder
    g = GraphBuilder()
    model = harness.source(g, "MODEL", tiny_model)
    clip = harness.source(g, "CLIP", tiny_clip)
    patched = g.node("SprintTiledDiffusion", model=model, method="Mixture of Diffusers", tile_width=1024,
                     tile_height=1024, overlap=64, margin=0, tile_batch_size=1)
    pos = g.node("CLIPTextEncode", clip=clip, text="a lighthouse")
    neg = g.node("CLIPTextEncode", clip=clip, text="blurry")
    latent = g.node("EmptyLatentImage", width=256, height=192, batch_size=1)
    samplers = [g.node("KSampler", model=m, positive=pos.out(0), negative=neg.out(0), latent_image=latent.out(0), seed=3,
                       steps=3, cfg=6.0, sampler_name="dpmpp_2m", scheduler="karras", denoise=1.0)
                for m in (model, patched.out(0))]
    for s in samplers:
        g.node("SaveLatent", samples=s.out(0), filename_prefix="sprint_test")
    result = host.run(g.finalize())
    plain, tiled_out = (result.output(s.id)["samples"] for s in samplers)
    assert torch.equal(plain, tiled_out)


def test_tiny_unet_samples_in_tiles_through_the_executor(host, tiny_model, tiny_clip, model_calls):
    from comfy_execution.graph_utils import GraphBuilder
    calls = model_calls(tiny_model)
    model = tiny_model
    g = GraphBuilder()
    clip = harness.source(g, "CLIP", tiny_clip)
    patched = g.node("SprintTiledDiffusion", model=harness.source(g, "MODEL", model), method="MultiDiffusion",
                     tile_width=192, tile_height=192, overlap=64, margin=16, tile_batch_size=2)
    pos = g.node("CLIPTextEncode", clip=clip, text="a lighthouse")
    neg = g.node("CLIPTextEncode", clip=clip, text="blurry")
    latent = g.node("EmptyLatentImage", width=384, height=256, batch_size=1)
    ks = g.node("KSampler", model=patched.out(0), positive=pos.out(0), negative=neg.out(0), latent_image=latent.out(0),
                seed=3, steps=2, cfg=6.0, sampler_name="euler", scheduler="karras", denoise=1.0)
    g.node("SaveLatent", samples=ks.out(0), filename_prefix="sprint_test")
    out = host.run(g.finalize()).output(ks.id)["samples"]
    assert out.shape == (1, 4, 32, 48) and torch.isfinite(out).all()
    # 32 x 48 latent in tiles of 24 x 24 latent pixels: 2 x 3 tiles, 2 per call, cond + uncond
    assert calls.shapes == [(4, 4, 24, 24)] * 3 * 2


def test_memory_estimate_is_one_batch_of_tiles(host, local_model):
    import comfy.patcher_extension
    seen = []

    def record(executor, model, noise_shape, conds, model_options=None):
        seen.append(list(noise_shape))
        return executor(model, noise_shape, conds, model_options=model_options)

    model = tiled(host, local_model, batch=2)      # its PREPARE_SAMPLING wrapper is the outer one
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, "test.record", record)
    sample(model, [prompt(1)], [prompt(5)], steps=1)
    assert seen == [[2 * 2, 4, 24, 24]]            # latent batch 2 x 2 tiles per call
    base = local_model.model
    assert base.memory_required(seen[0]) < 0.6 * base.memory_required([2, 4, H, W])


def test_reapplying_replaces_the_settings(host, local_model):
    import comfy.patcher_extension
    from sprint.nodes import tiled_diffusion as td
    once = tiled(host, local_model)
    twice = tiled(host, once, tile=256)
    wrappers = twice.get_wrappers(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, td.KEY)
    assert len(wrappers) == 1 and wrappers[0].args[0].tile_height == 32
    assert local_model.get_wrappers(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, td.KEY) == []
    import copy
    copy.deepcopy(twice.model_options)             # model_options stays deep-copyable


def test_bad_settings_are_refused_clearly(host, local_model):
    with pytest.raises(ValueError, match="exceed the overlap"):
        tiled(host, local_model, tile=192, overlap=128)
    with pytest.raises(ValueError, match="half the overlap"):
        tiled(host, local_model, overlap=64, margin=40)


def test_controlnet_hints_are_cropped_per_tile(host, conditioning):
    import comfy.utils
    td = host.pack.nodes.tiled_diffusion
    tiling = td.tiling
    positive, _ = conditioning
    control = positive[0][1]["control"]
    stacked = control.copy().set_cond_hint(control.cond_hint_original, 0.5)
    stacked.set_previous_controlnet(control)
    tiles = tiling.plan_tiles(H, W, 24, 24, 5, 8).tiles[1:3]
    cache = td.TileControls()
    out = cache.get(stacked, tiles, 2, (H, W))
    assert cache.get(stacked, tiles, 2, (H, W)) is out        # one copy per tile batch and run
    full = comfy.utils.common_upscale(control.cond_hint_original, W * 8, H * 8, control.upscale_algorithm, "center")
    for c in (out, out.previous_controlnet):                  # the whole chain is re-targeted
        assert c.cond_hint_original.shape == (4, 3, 24 * 8, 24 * 8)
        assert torch.equal(c.cond_hint_original[2], full[0, :, tiles[1].y * 8:(tiles[1].y + 24) * 8, tiles[1].x * 8:(tiles[1].x + 24) * 8])
    assert out.strength == 0.5 and out.previous_controlnet.strength == 0.7
    assert stacked.cond_hint_original.shape[-2:] == (H * 8, W * 8) and stacked.previous_controlnet is control


def drop_uncond_below(sigma_min):
    """What a dynamic-CFG patch does: skip the uncond pass where guidance is off (cfg -> 1 there),
    returning the cond result in both slots."""
    def wrapper(executor, model, conds, x_in, timestep, model_options):
        if float(timestep[0]) >= sigma_min:
            return executor(model, conds, x_in, timestep, model_options)
        out = executor(model, [conds[0], None], x_in, timestep, model_options)
        return [out[0], out[0]]
    return wrapper


@pytest.mark.parametrize("order", ["tiling applied first", "guidance applied first"])
def test_composes_with_guidance_patches(host, local_model, conditioning, order):
    import comfy.patcher_extension
    positive, negative = conditioning

    def guided(model):
        model = node(host, "RescaleCFG", model=model, multiplier=0.5)
        model = node(host, "CFGZeroStar", model=model)
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, "test.cfg", drop_uncond_below(2.0))
        return model

    want = sample(guided(local_model), positive, negative, steps=5, sampler="dpmpp_2m")
    model = guided(tiled(host, local_model)) if order == "tiling applied first" else tiled(host, guided(local_model))
    close(sample(model, positive, negative, steps=5, sampler="dpmpp_2m"), want)
