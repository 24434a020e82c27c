"""SprintCachedTextEncode in the host: hits equal fresh encodes bit for bit, every ingredient of
the output changes the key, SD1 and SDXL (two encoders) CLIPs, stats node and route."""
import pytest
import torch

import harness

pytestmark = pytest.mark.host

TEXT = "a (red:1.2) lighthouse on a cliff at sunset"


@pytest.fixture
def tc(host, tmp_path, monkeypatch):
    """nodes.text_cache with a fresh store in a temp folder."""
    module = host.pack.nodes.prompt_cache
    monkeypatch.setattr(module, "_cache", module.prompt_cache.PromptCache(64 << 20, tmp_path / "store", 64 << 20))
    return module


def fresh(clip, text=TEXT):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def assert_identical(a, b):
    assert len(a) == len(b)
    for (cond_a, extra_a), (cond_b, extra_b) in zip(a, b):
        assert cond_a.dtype == cond_b.dtype and torch.equal(cond_a, cond_b)
        assert extra_a.keys() == extra_b.keys()
        for k in extra_a:
            va, vb = extra_a[k], extra_b[k]
            assert torch.equal(va, vb) if isinstance(va, torch.Tensor) else va == vb, k


def test_hit_is_bit_identical_to_clip_text_encode_through_the_executor(host, tc, tiny_clip):
    from comfy_execution.graph_utils import GraphBuilder
    outputs = []
    for extra_node in (False, True):     # the second graph differs, so ComfyUI's own cache does not answer
        g = GraphBuilder()
        clip = harness.source(g, "CLIP", tiny_clip)
        stock = g.node("CLIPTextEncode", clip=clip, text=TEXT)
        cached = g.node("SprintCachedTextEncode", clip=clip, text=TEXT)
        for node in (stock, cached):      # an output node makes the executor run them
            g.node("PreviewAny", source=node.out(0))
        if extra_node:
            g.node("PreviewAny", source=g.node("SprintCachedTextEncode", clip=clip, text="something else").out(0))
        result = host.run(g.finalize())
        outputs.append((result.output(stock.id), result.output(cached.id)))
    assert tc.store().stats()["hits_memory"] >= 1
    for stock, cached in outputs:
        assert_identical(cached, stock)
    assert "pooled_output" in outputs[1][1][0][1]


def test_every_ingredient_of_the_output_changes_the_key(tc, synthetic, tiny_clip):
    def outcome(clip, text=TEXT):
        got, how = tc.encode(clip, text)
        assert_identical(got, fresh(clip, text))
        return how

    assert outcome(tiny_clip) == "miss"
    assert outcome(tiny_clip) == "memory"
    assert outcome(tiny_clip.clone()) == "memory"                       # a clone is the same encoder
    assert outcome(tiny_clip, TEXT + ".") == "miss"                      # text
    assert outcome(tiny_clip, "a (red:1.3) lighthouse on a cliff at sunset") == "miss"   # prompt weights
    assert outcome(synthetic.sd15_clip(tiny=True, seed=1)) == "miss"    # other weights
    lora = tiny_clip.clone()
    key = "clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
    weight = lora.patcher.model.state_dict()[key]
    lora.add_patches({key: ("diff", (torch.ones_like(weight),))}, 0.5)
    assert outcome(lora) == "miss"                                       # a LoRA
    assert outcome(lora) == "memory"
    stronger = tiny_clip.clone()
    stronger.add_patches({key: ("diff", (torch.ones_like(weight),))}, 0.8)
    assert outcome(stronger) == "miss"                                   # its strength
    skip = tiny_clip.clone()
    skip.clip_layer(-2)
    assert outcome(skip) == "miss"                                       # clip skip
    assert outcome(tiny_clip) == "memory"                                # and back


def test_tokenizer_options_act_through_the_tokens(tc, tiny_clip):
    """The key digests the tokenizer's output, so an option that changes the tokens changes the
    key (SD1's position table cannot encode the longer sequence, so this checks the key only)."""
    padded = tiny_clip.clone()
    padded.set_tokenizer_option("clip_l_min_length", 100)
    assert len(padded.tokenize(TEXT)["l"][0]) == 100
    assert tc.cache_key(padded, padded.tokenize(TEXT)) != tc.cache_key(tiny_clip, tiny_clip.tokenize(TEXT))


def test_embedding_files_are_keyed_by_content(tc, synthetic, tmp_path):
    import comfy.sd
    import comfy.supported_models
    import safetensors.torch
    folder = tmp_path / "embeddings"
    folder.mkdir()
    clip = comfy.sd.CLIP(comfy.supported_models.SD15({}).clip_target(), embedding_directory=str(folder),
                         model_options={"clip_l_model_config": synthetic.TINY_CLIP_CONFIG})
    synthetic.init_weights_(clip.cond_stage_model, 0)
    text = "a photo of embedding:style, detailed"

    def write(seed):
        safetensors.torch.save_file({"clip_l": torch.randn(2, 64, generator=torch.Generator().manual_seed(seed))},
                                    str(folder / "style.safetensors"))

    def outcome():
        got, how = tc.encode(clip, text)
        assert_identical(got, fresh(clip, text))
        return how

    write(0)
    assert outcome() == "miss"
    assert outcome() == "memory"
    write(0)                          # rewritten with the same vectors (new mtime): still a hit
    assert outcome() == "memory"
    write(1)                          # other vectors: a miss
    assert outcome() == "miss"


def test_hooks_bypass_the_cache(tc, tiny_clip):
    import comfy.hooks
    hooked = tiny_clip.clone()
    hooked.apply_hooks_to_conds = comfy.hooks.HookGroup()
    got, how = tc.encode(hooked, TEXT)
    assert how.startswith("bypass") and "hooks" in how
    assert_identical(got, fresh(hooked))
    assert tc.store().stats()["bypassed"] == 1


def test_disk_entry_serves_a_new_process_with_a_new_clip(host, tc, synthetic, tmp_path):
    """A 'restart': a new store on the same folder and a CLIP rebuilt from the same weights."""
    assert tc.encode(synthetic.sd15_clip(tiny=True, seed=5), TEXT)[1] == "miss"
    tc._cache = tc.prompt_cache.PromptCache(64 << 20, tmp_path / "store", 64 << 20)
    rebuilt = synthetic.sd15_clip(tiny=True, seed=5)
    got, how = tc.encode(rebuilt, TEXT)
    assert how == "disk"
    assert_identical(got, fresh(rebuilt))
    assert tc.encode(rebuilt, TEXT, "memory")[1] == "memory"
    assert tc.encode(rebuilt, TEXT, "off")[1].startswith("bypass")


@pytest.fixture(scope="module")
def sdxl_clip(synthetic):
    """SDXL's two text encoders (CLIP-L and CLIP-G classes, tiny widths) with random weights."""
    import comfy.sd
    import comfy.sdxl_clip
    import comfy.supported_models_base
    target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
    config = synthetic.TINY_CLIP_CONFIG
    clip = comfy.sd.CLIP(target, model_options={"clip_l_model_config": dict(config, num_hidden_layers=3),
                                                "clip_g_model_config": dict(config, hidden_size=96, num_hidden_layers=3)})
    synthetic.init_weights_(clip.cond_stage_model, 2)
    return clip


def test_sdxl_dual_encoder(tc, sdxl_clip):
    got, how = tc.encode(sdxl_clip, TEXT)
    assert how == "miss"
    cond, extra = got[0]
    assert cond.shape == (1, 77, 64 + 96) and extra["pooled_output"].shape == (1, 96)
    hit, how = tc.encode(sdxl_clip, TEXT)
    assert how == "memory"
    assert_identical(hit, fresh(sdxl_clip))
    skip = sdxl_clip.clone()
    skip.clip_layer(-1)
    assert tc.encode(skip, TEXT)[1] == "miss"


def test_stats_node_reports_and_clears(host, tc, tiny_clip):
    from comfy_execution.graph_utils import GraphBuilder
    tc.encode(tiny_clip, TEXT)
    g = GraphBuilder()
    stats = g.node("SprintTextCache", memory_mb=32, disk_mb=16, action="stats")
    text = host.run(g.finalize()).ui[stats.id]["text"][0]
    assert "misses 1" in text and "memory 1 entries" in text and "disk 1 entries" in text
    assert tc.store().memory_limit == 32 << 20 and tc.store().disk.limit == 16 << 20
    g = GraphBuilder()
    stats = g.node("SprintTextCache", memory_mb=32, disk_mb=16, action="clear memory + disk")
    text = host.run(g.finalize()).ui[stats.id]["text"][0]
    assert "memory 0 entries" in text and "disk 0 entries" in text


def test_stats_route_on_the_real_server(comfy_server):
    stats = comfy_server.get("/sprint/text_cache")
    assert {"hits_memory", "hits_disk", "misses", "memory_limit", "disk_folder"} <= set(stats)
    assert comfy_server.post("/sprint/text_cache/clear", {"disk": False})["memory_entries"] == 0
