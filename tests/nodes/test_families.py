"""Every Sprint node x every model family ComfyUI 0.3.64 samples with, through the executor, on
tiny random-weight models built from ComfyUI's own configs (bench/synthetic.FAMILIES).

Each cell works (the node did what it says: sampled, tiled, guided, ran an engine, decoded) or
refuses in one clear line naming the family (a failed prompt, or one warning while it runs
PyTorch): never a crash, never a silent no-op. Two steps, tiny latents: the matrix stays cheap."""
import logging

import pytest
import torch

import harness

pytestmark = pytest.mark.host

FAMILIES = ["SD15", "SD20-v", "SDXL", "SD3", "Flux", "QwenImage", "Wan21", "Wan22", "Lumina2", "HiDream"]
UNET_FAMILIES = {"SD15", "SD20-v", "SDXL"}
ENGINE_TRANSFORMERS = {"Flux", "QwenImage", "HiDream"}
REFUSAL = {"SD3": "without diffusion-model wrappers", "Lumina2": "the engine failed",
           "Wan21": "gives NaN", "Wan22": "gives NaN"}
CLASS = {"SD20-v": "SD20", "Wan21": "WAN21_T2V", "Wan22": "WAN22_T2V"}   # supported_models class names
VIDEO = {"Wan21", "Wan22"}
LIGHT_VAE = {"SD15": "taesd", "SD20-v": "taesd", "SDXL": "taesdxl", "SD3": "taesd3", "Flux": "taef1",
             "Lumina2": "taef1", "HiDream": "taef1", "QwenImage": "taew2_1", "Wan21": "taew2_1", "Wan22": "taew2_2"}


@pytest.fixture(scope="module")
def models(synthetic):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = synthetic.family_model(family, seed=0)
        return cache[family]
    return get


def setup(synthetic, g, model, family, side=16, frames=1):
    m = harness.source(g, "MODEL", model)
    pos = harness.source(g, "CONDITIONING", synthetic.family_conditioning(family, seed=1))
    neg = harness.source(g, "CONDITIONING", synthetic.family_conditioning(family, seed=2))
    latent = harness.source(g, "LATENT", synthetic.family_latent(family, side, side, frames))
    return m, pos, neg, latent


def ksampler(g, model, pos, neg, latent, steps=2):
    return g.node("KSampler", model=model, positive=pos, negative=neg, latent_image=latent, seed=3, steps=steps,
                  cfg=4.0, sampler_name="euler", scheduler="simple", denoise=1.0)


def run_latent(host, g, node):
    g.node("SaveLatent", samples=node.out(0), filename_prefix="sprint_families")
    out = host.run(g.finalize()).output(node.id)["samples"]
    assert torch.isfinite(out).all()
    return out


def expected_shape(synthetic, family, side=16, frames=1):
    return tuple(synthetic.family_latent(family, side, side, frames)["samples"].shape)


def graph():
    from comfy_execution.graph_utils import GraphBuilder
    return GraphBuilder()


@pytest.mark.parametrize("family", FAMILIES)
def test_sprint_ksampler(host, synthetic, models, family, model_calls):
    calls = model_calls(models(family))
    g = graph()
    m, pos, neg, latent = setup(synthetic, g, models(family), family)
    node = g.node("SprintKSampler", model=m, seed=1, steps=2, cfg=4.0, preset="balanced", scheduler="simple",
                  positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    assert run_latent(host, g, node).shape == expected_shape(synthetic, family)
    assert 1 <= calls.calls <= 2


@pytest.mark.parametrize("family", FAMILIES)
def test_adaptive_sampler_in_sampler_custom(host, synthetic, models, family, model_calls):
    calls = model_calls(models(family))
    g = graph()
    m, pos, neg, latent = setup(synthetic, g, models(family), family)
    sampler = g.node("SprintAdaptiveSampler", preset="draft", tolerance=0.0, eta=0.0)
    sigmas = g.node("BasicScheduler", model=m, scheduler="simple", steps=2, denoise=1.0)
    node = g.node("SamplerCustom", model=m, add_noise=True, noise_seed=1, cfg=4.0, positive=pos, negative=neg,
                  sampler=sampler.out(0), sigmas=sigmas.out(0), latent_image=latent)
    assert run_latent(host, g, node).shape == expected_shape(synthetic, family)
    assert 1 <= calls.calls <= 2


@pytest.mark.parametrize("family", FAMILIES)
def test_dynamic_cfg(host, synthetic, models, family, model_calls):
    """The default window follows the model's sampling type: EPS/V models guide inside (0.28, 5.42]
    and leave the negative out above it; flow models guide from the first step (their shifted
    schedules spend most steps above 5.42). Rows = 2 per guided step + 1 per other step."""
    import comfy.model_sampling
    calls = model_calls(models(family))
    g = graph()
    m, pos, neg, latent = setup(synthetic, g, models(family), family)
    defaults = {i.id: i.default for i in host.pack.nodes.dynamic_cfg.SprintDynamicCFG.define_schema().inputs if i.id != "model"}
    cfg = g.node("SprintDynamicCFG", model=m, **defaults)
    with harness.captured_events() as events:
        run_latent(host, g, ksampler(g, cfg.out(0), pos, neg, latent, steps=10))
    skipped = [d["uncond_skipped"] for e, d in events if e == "sprint.dynamic_cfg"]
    assert len(skipped) == 1 and skipped[0] < 10, (skipped, family)
    assert calls.rows == 20 - skipped[0]
    if isinstance(models(family).get_model_object("model_sampling"), comfy.model_sampling.CONST):
        assert calls.shapes[0][0] == 2                       # guided at the first step
    else:
        assert calls.shapes[0][0] == 1 and skipped[0] > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_tiled_diffusion(host, synthetic, models, family, model_calls):
    """A 40x40 latent (320 px) in 192 px tiles with 32 px overlap: 2 x 2 tiles of 24 x 24 cells,
    all frames of a video tile together."""
    frames = 5 if family in VIDEO else 1
    calls = model_calls(models(family))
    g = graph()
    m, pos, neg, latent = setup(synthetic, g, models(family), family, side=40, frames=frames)
    tiled = g.node("SprintTiledDiffusion", model=m, method="Mixture of Diffusers", tile_width=192, tile_height=192,
                   overlap=32, margin=0, tile_batch_size=1)
    out = run_latent(host, g, ksampler(g, tiled.out(0), pos, neg, latent))
    assert out.shape == expected_shape(synthetic, family, 40, frames)
    assert calls.shapes and all(s[-2:] == (24, 24) for s in calls.shapes), calls.shapes
    assert len(calls.shapes) == 2 * 4
    if family in VIDEO:
        assert all(s[2] == out.shape[2] for s in calls.shapes)      # every frame of the tile at once


@pytest.mark.parametrize("family", FAMILIES)
def test_two_stage_upscale(host, synthetic, models, family, model_calls):
    """16 -> 32 cells, refined with 1 of 4 steps, tiled (tile 192 px) since 256 px > 192."""
    calls = model_calls(models(family))
    g = graph()
    m, pos, neg, latent = setup(synthetic, g, models(family), family)
    node = g.node("SprintTwoStageUpscale", model=m, positive=pos, negative=neg, latent=latent, seed=5, steps=4,
                  cfg=4.0, scheduler="simple", denoise=0.25, scale_by=2.0, upscale_method="latent bislerp",
                  tile_size=192, tile_overlap=32)
    out = run_latent(host, g, node)
    assert out.shape[-2:] == (32, 32) and out.shape[:-2] == expected_shape(synthetic, family)[:-2]
    assert calls.shapes and all(s[-2:] == (24, 24) for s in calls.shapes), calls.shapes


@pytest.mark.parametrize("family", FAMILIES)
def test_accelerate_ort_fp32(host, synthetic, models, family, caplog):
    """UNet families and the transformers that export run on an ONNX Runtime engine (built from the
    family's own forward signature) that matches PyTorch; the others run PyTorch, said in one
    warning naming the family and the reason."""
    g = graph()
    m, pos, neg, latent = setup(synthetic, g, models(family), family, side=32)
    fast = g.node("SprintAccelerateUNet", model=m, backend="onnxruntime", precision="fp32", max_batch=2,
                  min_size=256, max_size=256, max_tokens=77)
    with caplog.at_level(logging.WARNING, logger="sprint"), harness.captured_events() as events:
        out = run_latent(host, g, ksampler(g, fast.out(0), pos, neg, latent))
    assert out.shape == expected_shape(synthetic, family, 32)
    warnings = [r.getMessage() for r in caplog.records if r.name == "sprint" and r.levelno >= logging.WARNING]
    if family in UNET_FAMILIES | ENGINE_TRANSFORMERS:
        assert any(e == "sprint.engine" and d.get("status") == "ready" for e, d in events), events
        assert not warnings, warnings                       # a PyTorch fallback always warns
        g = graph()
        m, pos, neg, latent = setup(synthetic, g, models(family), family, side=32)
        reference = run_latent(host, g, ksampler(g, m, pos, neg, latent))
        assert ((out - reference).norm() / reference.norm()).item() <= 1e-3
    else:
        assert len(warnings) == 1 and CLASS.get(family, family) in warnings[0], warnings
        assert REFUSAL[family] in warnings[0], warnings


@pytest.mark.parametrize("family", ["Flux", "QwenImage"])
def test_accelerate_transformer_int8_needs_no_calibration_run(host, synthetic, models, family, caplog):
    """Transformers quantize dynamically (INT8 MatMul weights, per-call activation scales): the
    first run already samples on the engine, with no PyTorch fallback (the node checks the
    engine against PyTorch on its first call and would say so)."""
    g = graph()
    m, pos, neg, latent = setup(synthetic, g, models(family), family, side=32)
    fast = g.node("SprintAccelerateUNet", model=m, backend="onnxruntime", precision="int8", max_batch=2,
                  min_size=256, max_size=256, max_tokens=77)
    with caplog.at_level(logging.WARNING, logger="sprint"), harness.captured_events() as events:
        run_latent(host, g, ksampler(g, fast.out(0), pos, neg, latent))
    ready = [d for e, d in events if e == "sprint.engine" and d.get("status") == "ready"]
    assert ready and ready[0]["precision"] == "int8", events
    assert not [r for r in caplog.records if r.name == "sprint" and r.levelno >= logging.WARNING]


@pytest.fixture(scope="module")
def light_decoders(host, synthetic):
    """Random-weight decoders of every variant the families need, in models/vae_approx."""
    import folder_paths
    import pathlib
    folder = pathlib.Path(folder_paths.get_folder_paths("vae_approx")[0])
    folder.mkdir(parents=True, exist_ok=True)
    present = set(folder.iterdir())
    written = [synthetic.write_light_decoder(variant, folder) for variant in sorted(set(LIGHT_VAE.values()))
               if not any(p.name.startswith(variant) for p in present)]    # other tests' files stay theirs
    yield
    for path in written:
        path.unlink()


@pytest.mark.parametrize("family", FAMILIES)
def test_light_vae_decode_picks_the_families_decoder(host, synthetic, models, family, light_decoders, caplog):
    frames = 5 if family in VIDEO else 1
    latent = synthetic.family_latent(family, 8, 8, frames)["samples"].normal_(generator=torch.Generator().manual_seed(0))
    g = graph()
    node = g.node("SprintLightVAEDecode", samples=harness.source(g, "LATENT", {"samples": latent}),
                  model=harness.source(g, "MODEL", models(family)), precision="fp32")
    g.node("PreviewImage", images=node.out(0))
    with caplog.at_level(logging.INFO, logger="sprint"):
        image = host.run(g.finalize()).output(node.id)
    side = 16 * 8 if family == "Wan22" else 8 * 8
    images = latent.shape[0] * (1 + 4 * (latent.shape[2] - 1) if latent.ndim == 5 else 1)
    assert image.shape == (images, side, side, 3) and torch.isfinite(image).all()
    assert any(LIGHT_VAE[family] in r.getMessage() for r in caplog.records if r.name == "sprint"), caplog.records


def _image_ids(ids, tokens, grid, tile, p):
    """Text ids + the ids of `tile`'s patches, out of a whole latent's rotary ids [N, 3]."""
    rows, cols = grid
    image = ids[tokens:].reshape(rows, cols, 3)[tile.y // p:(tile.y + tile.h) // p, tile.x // p:(tile.x + tile.w) // p]
    return torch.cat([ids[:tokens], image.reshape(-1, 3)])


@pytest.mark.parametrize("family", ["Flux", "QwenImage"])
def test_tiles_see_their_true_rotary_positions(host, synthetic, models, family):
    """Tiled through the node, every tile's rotary ids (text and image, what the model's
    pe_embedder gets) are the whole image's ids of that tile shifted by one constant: rotary
    attention depends on id differences only, so each tile attends as it would inside the image."""
    model, seen = models(family), []
    hook = model.model.diffusion_model.pe_embedder.register_forward_pre_hook(lambda m, a: seen.append(a[0][0].clone()))
    try:
        outputs = {}
        for tiled in (False, True):
            g = graph()
            m, pos, _, latent = setup(synthetic, g, model, family, side=40)
            if tiled:
                m = g.node("SprintTiledDiffusion", model=m, method="Mixture of Diffusers", tile_width=192,
                           tile_height=192, overlap=32, margin=0, tile_batch_size=1).out(0)
            seen.clear()
            run_latent(host, g, g.node("KSampler", model=m, positive=pos, negative=pos, latent_image=latent, seed=3,
                                       steps=1, cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0))
            outputs[tiled] = list(seen)
    finally:
        hook.remove()
    tiling = host.pack.nodes.tiled_diffusion
    plan = tiling.TiledConfig.from_pixels(192, 192, 32).plan(40, 40, tiling.patch_align(model.model.diffusion_model))
    (whole,), tiles = outputs[False], outputs[True]
    assert len(tiles) == len(plan.tiles) == 4
    p, tokens = 2, 8
    for tile, ids in zip(plan.tiles, tiles):
        offset = ids - _image_ids(whole, tokens, (20, 20), tile, p)
        assert torch.equal(offset, offset[:1].expand_as(offset)), (tile, offset.unique(dim=0))
    assert any(not torch.equal(a, tiles[0]) for a in tiles[1:])      # tiles do not all restart at 0


def test_sd3_tiles_take_their_crop_of_the_whole_position_embedding(host, models):
    """SD3 adds absolute position embeddings: inside a tile's call the model's cropped_pos_embed
    gives that tile's crop of the whole latent's table, not a centred table of the tile's size."""
    tiling = host.pack.nodes.tiled_diffusion
    dm = models("SD3").model.diffusion_model
    whole = dm.cropped_pos_embed((40, 40)).reshape(20, 20, -1)
    tile = tiling.tiling.Tile(index=1, y=16, x=8, h=24, w=24)
    with tiling.true_positions(dm, (40, 40))(tile):
        inside = dm.cropped_pos_embed((24, 24)).reshape(12, 12, -1)
    assert torch.equal(inside, whole[8:20, 4:16])
    assert not torch.equal(inside, dm.cropped_pos_embed((24, 24)).reshape(12, 12, -1))


@pytest.mark.parametrize("family", ["SD15", "QwenImage"])
def test_tiled_diffusion_default_tile_follows_the_family(host, synthetic, models, family, model_calls):
    """Default settings (tile 0 = auto) on a 1024 px latent: a UNet runs it in one 1024 px tile
    (untiled), a transformer in 512 px tiles (its memory follows the tile's tokens)."""
    calls = model_calls(models(family))
    g = graph()
    m, pos, _, latent = setup(synthetic, g, models(family), family, side=128)
    defaults = {i.id: i.default for i in host.pack.nodes.tiled_diffusion.SprintTiledDiffusion.define_schema().inputs
                if i.id != "model"}
    tiled = g.node("SprintTiledDiffusion", model=m, **defaults)
    run_latent(host, g, g.node("KSampler", model=tiled.out(0), positive=pos, negative=pos, latent_image=latent, seed=3,
                               steps=1, cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0))
    sides = {tuple(s[-2:]) for s in calls.shapes}
    if family == "SD15":
        assert sides == {(128, 128)} and len(calls.shapes) == 1
    else:
        assert len(calls.shapes) == 9 and all(max(s) <= 64 for s in sides), calls.shapes
