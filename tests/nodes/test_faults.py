"""The fault matrix (issue 18): each fault, what Sprint does, and that nothing is lost.

Real faults where the machine allows (tests/faults.py: a small tmpfs that fills up, read-only bind
mounts, a sidecar planted through the server's own upload route); the engine tier has the
store-level twins (tests/engines/test_prompt_cache.py, test_files.py, unet/test_artifacts.py: a
real SIGKILL mid-build, a symlinked lock file, malformed indexes and sidecars).

| fault                                         | Sprint                                                   |
|-----------------------------------------------|----------------------------------------------------------|
| full disk under the prompt cache              | memory-only, one warning; every encode still exact       |
| read-only models volume, folders not created  | every node loads (the real server too) and runs; cache memory-only, engines PyTorch, one warning each |
| read-only existing cache folder               | stats, hits and clear work                               |
| malformed index.json, a user's .safetensors   | index repaired; the user's file never adopted or deleted |
| engine name outside the store (crafted prompt)| clear error naming the allowed engines; nothing outside read; the queue keeps working |
| sidecar without key / non-dict entry / {}     | ArtifactError: refused, rebuilt from its settings        |
| unknown combo value, NaN or out-of-range number | clear error naming the input and what it allows        |
| denoise 0                                     | the latent back unchanged (as KSampler)                  |
| empty batch, 5-D latent to the light VAE      | a clear one-line error                                   |
| light VAE tile_size below the halo            | raised to the minimum, with a warning; same image        |
| routes: index lock held elsewhere, bad bodies | the event loop keeps serving; 400 for bad bodies         |
| 50 prompts back to back (load)                | RSS flat after the first 10; replaced engines released   |
"""
import json
import logging
import math
import pathlib
import threading
import urllib.error
import urllib.request
import uuid

import faults
import pytest
import torch

pytestmark = pytest.mark.host

TEXT = "a lighthouse on a cliff"


@pytest.fixture
def pack(host):
    return host.pack.nodes


@pytest.fixture
def tc(pack, tmp_path, monkeypatch):
    """nodes.prompt_cache with a fresh store in a temp folder."""
    module = pack.prompt_cache
    monkeypatch.setattr(module, "_cache", module.prompt_cache.PromptCache(64 << 20, tmp_path / "store", 64 << 20))
    return module


def fresh(clip, text=TEXT):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def same(a, b):
    return all(torch.equal(ca, cb) and torch.equal(ea["pooled_output"], eb["pooled_output"]) for (ca, ea), (cb, eb) in zip(a, b))


def sample(model, conds, steps=2, seed=3):
    import comfy.sample
    latent = torch.zeros(1, 4, 8, 8)
    return comfy.sample.sample(model, comfy.sample.prepare_noise(latent, seed), steps, 6.0, "euler", "karras",
                               conds[0], conds[1], latent, disable_pbar=True, seed=seed)


@pytest.fixture(scope="module")
def conds(tiny_clip):
    return fresh(tiny_clip, "a photo of a cat"), fresh(tiny_clip, "blurry")


# ---- disks: full, read-only, shared with the user's own files ----

def test_full_disk_under_the_prompt_cache(tc, tiny_clip, tmp_path, caplog):
    texts = [f"{TEXT} {i} " + "and a long description " * 120 for i in range(12)]     # ~7 chunks: large entries
    with faults.tmpfs(tmp_path / "disk", "1m") as disk:
        tc._cache = tc.prompt_cache.PromptCache(64 << 20, disk, 64 << 20)
        with caplog.at_level(logging.WARNING, "sprint"):
            for text in texts:
                got, outcome = tc.encode(tiny_clip, text)
                assert outcome == "miss" and same(got, fresh(tiny_clip, text))
        assert caplog.text.count("memory-only") == 1 and "No space left" in caplog.text
        assert all(tc.encode(tiny_clip, text)[1] == "memory" for text in texts)
        assert not list(disk.glob(".*partial"))


@pytest.fixture
def read_only_models(pack, tmp_path, monkeypatch):
    """Sprint's model folders on a read-only volume where they do not exist yet (Docker, NFS)."""
    import folder_paths
    volume = tmp_path / "models"
    volume.mkdir()
    for name in ("sprint_text_cache", "sprint_engines"):
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([str(volume / name)], set()))
    monkeypatch.setattr(pack.prompt_cache, "_cache", None)
    with faults.read_only(volume):
        yield volume


def test_read_only_models_volume(host, pack, read_only_models, tiny_clip, tiny_model, conds, caplog):
    for name in host.sprint_nodes():                      # every node's schema (the loader lists engines)
        host.nodes.NODE_CLASS_MAPPINGS[name].define_schema()
    with caplog.at_level(logging.WARNING, "sprint"):
        for i, mode in enumerate(("off", "memory", "memory + disk", "memory + disk")):     # each a new text: a miss
            text = f"{TEXT} {i}"
            assert same(pack.prompt_cache.SprintCachedTextEncode.execute(tiny_clip, text, mode).args[0], fresh(tiny_clip, text))
        line = pack.prompt_cache.SprintTextCache.execute(256, 1024, "clear memory + disk").args[0]
        model = pack.accelerate.SprintAccelerateUNet.execute(tiny_model, "onnxruntime", "fp32", 4, 64, 128, 231).args[0]
        assert torch.equal(sample(model, conds), sample(tiny_model, conds))
        assert torch.equal(sample(model, conds, seed=4), sample(tiny_model, conds, seed=4))
    assert "disk 0 entries" in line and "Read-only file system" in line
    assert caplog.text.count("memory-only") == 1 and caplog.text.count("Sprint engine failed") == 1
    assert list(read_only_models.iterdir()) == []


def test_read_only_cache_folder_serves_stats_and_hits(tc, tiny_clip, tmp_path):
    assert tc.encode(tiny_clip, TEXT)[1] == "miss"
    (tmp_path / "store" / "index.json.lock").unlink()
    with faults.read_only(tmp_path / "store"):
        tc._cache = tc.prompt_cache.PromptCache(64 << 20, tmp_path / "store", 64 << 20)
        assert "disk 1 entries" in tc.SprintTextCache.execute(256, 1024, "stats").args[0]
        got, outcome = tc.encode(tiny_clip, TEXT)
        assert outcome == "disk" and same(got, fresh(tiny_clip))
        tc.SprintTextCache.execute(256, 1024, "clear memory + disk")


def test_malformed_index_and_a_users_own_file(tc, tiny_clip, tmp_path):
    import safetensors.torch
    folder = tmp_path / "store"
    assert tc.encode(tiny_clip, TEXT)[1] == "miss"
    users = folder / "my_embedding.safetensors"
    safetensors.torch.save_file({"w": torch.ones(8)}, str(users))
    (folder / "index.json").write_text(json.dumps({"entries": [1, 2]}))
    assert tc.encode(tiny_clip, TEXT + " 2")[1] == "miss"
    assert "disk 2 entries" in tc.SprintTextCache.execute(256, 1024, "stats").args[0]
    tc.SprintTextCache.execute(256, 1024, "clear memory + disk")
    assert [p.name for p in folder.glob("*.safetensors")] == [users.name]


# ---- engines: crafted names and sidecars ----

def test_engine_name_outside_the_store(pack, tiny_model, tmp_path):
    import folder_paths
    planted = pathlib.Path(folder_paths.get_input_directory()) / "x"
    planted.mkdir(parents=True, exist_ok=True)
    (planted / "sprint.json").write_text(json.dumps({"format": "sprint-unet-engine/1",
                                                     "files": {"../../../../dev/zero": {"bytes": 0, "digest": ""}}}))
    for name in ("../../input/x", str(planted), "../sprint_text_cache"):
        with pytest.raises(ValueError, match="engine .* is not one of") as error:
            pack.accelerate.SprintLoadUNetEngine.execute(tiny_model, name)
        assert "zero" not in str(error.value)


@pytest.mark.parametrize("record", [{"files": {"unet.onnx": {"bytes": 1, "digest": ""}}},
                                    {"key": {}, "files": {"unet.onnx": 1}}])
def test_malformed_sidecar_is_refused_clearly(pack, tiny_model, record):
    root = pack.accelerate.store().root
    folder = root / f"planted-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    (folder / "sprint.json").write_text(json.dumps({"format": "sprint-unet-engine/1", **record}))
    try:
        with pytest.raises(ValueError, match="no key or no file list|has no size and digest"):
            pack.accelerate.SprintLoadUNetEngine.execute(tiny_model, folder.name)
    finally:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()


# ---- inputs the host does not check ----

def bogus_combo_cases(pack, tiny_clip):
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    return [
        (pack.light_vae.SprintLightVAEDecode, dict(samples=latent, variant="bogus"), "variant"),
        (pack.light_vae.SprintLightVAEDecode, dict(samples=latent, precision="fp8"), "precision"),
        (pack.tiled_diffusion.SprintTiledDiffusion, dict(model=None, method="bogus", tile_width=1024, tile_height=1024,
                                                         overlap=64, margin=0, tile_batch_size=1), "method"),
        (pack.accelerate.SprintAccelerateUNet, dict(model=None, backend="bogus", precision="fp32", max_batch=4,
                                                   min_size=64, max_size=128, max_tokens=231), "backend"),
        (pack.prompt_cache.SprintTextCache, dict(memory_mb=256, disk_mb=1024, action="bogus"), "action"),
        (pack.prompt_cache.SprintCachedTextEncode, dict(clip=tiny_clip, text=TEXT, cache="bogus"), "cache"),
        (pack.sampler.SprintAdaptiveSampler, dict(preset="bogus", tolerance=0.0, eta=0.0), "preset"),
        (pack.sampler.SprintAdaptiveSampler, dict(preset="balanced", tolerance=math.nan, eta=0.0), "tolerance"),
        (pack.sampler.SprintAdaptiveSampler, dict(preset="balanced", tolerance=0.0, eta=math.nan), "eta"),
        (pack.sampler.SprintAdaptiveSampler, dict(preset="balanced", tolerance=0.0, eta=-1.0), "eta"),
        (pack.dynamic_cfg.SprintDynamicCFG, dict(model=None, schedule="interval", rescale=math.inf), "rescale"),
    ]


def test_unknown_combo_values_and_nan_are_clear_errors(pack, tiny_clip, tc):
    tc.store().put("k", [[torch.zeros(1)]], disk=False)
    for node, inputs, name in bogus_combo_cases(pack, tiny_clip):
        with pytest.raises(ValueError, match=f"{name} .* (is not one of|is not a finite number in)"):
            node.execute(**inputs)
    assert tc.store().stats(disk=False)["memory_entries"] == 1          # "bogus" action cleared nothing


@pytest.mark.parametrize("field", ["denoise", "cfg", "seed"])
def test_nan_numbers_of_the_samplers(pack, tiny_model, conds, field):
    inputs = dict(model=tiny_model, seed=0, steps=2, cfg=6.0, preset="balanced", scheduler="karras",
                  positive=conds[0], negative=conds[1], latent_image={"samples": torch.zeros(1, 4, 8, 8)}, denoise=1.0)
    with pytest.raises(ValueError, match=f"{field} nan is not a finite number"):
        pack.sampler.SprintKSampler.execute(**dict(inputs, **{field: math.nan}))
    two_stage = dict(model=tiny_model, positive=conds[0], negative=conds[1], latent={"samples": torch.zeros(1, 4, 8, 8)},
                     seed=0, steps=2, cfg=6.0, scheduler="simple", denoise=0.2, scale_by=math.nan,
                     upscale_method="latent bislerp", tile_size=0, tile_overlap=64)
    with pytest.raises(ValueError, match="scale_by nan"):
        pack.two_stage.SprintTwoStageUpscale.execute(**two_stage)
    with pytest.raises(ValueError, match="upscale_method 'bogus' is not one of"):
        pack.two_stage.SprintTwoStageUpscale.execute(**dict(two_stage, scale_by=2.0, upscale_method="bogus"))


def test_denoise_zero_returns_the_latent_unchanged(pack, tiny_model, conds):
    latent = torch.randn(1, 4, 8, 8)
    out = pack.sampler.SprintKSampler.execute(tiny_model, 0, 4, 6.0, "balanced", "karras", conds[0], conds[1],
                                              {"samples": latent}, 0.0).args[0]
    assert torch.equal(out["samples"], latent)


def test_empty_batches_and_5d_latents_are_clear_errors(pack, tiny_model, conds):
    with pytest.raises(ValueError, match="latent_image: the batch is empty"):
        pack.sampler.SprintKSampler.execute(tiny_model, 0, 4, 6.0, "balanced", "karras", conds[0], conds[1],
                                            {"samples": torch.zeros(0, 4, 8, 8)}, 1.0)
    with pytest.raises(ValueError, match="samples: got a 5-D latent .* takes 4-D latents"):   # taef1 is image-only
        pack.light_vae.SprintLightVAEDecode.execute({"samples": torch.zeros(1, 16, 2, 8, 8)}, variant="taef1")


def test_light_vae_tiles_below_the_halo_are_raised_to_the_minimum(pack, light_decoder, caplog):
    latent = {"samples": torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(0))}
    whole = pack.light_vae.SprintLightVAEDecode.execute(latent, variant="taesd", precision="fp32").args[0]
    with caplog.at_level(logging.WARNING, "sprint"):
        tiny = pack.light_vae.SprintLightVAEDecode.execute(latent, variant="taesd", tile_size=8, precision="fp32").args[0]
    assert "tile_size 8 px is below the minimum" in caplog.text
    assert (tiny - whole).abs().max() < 1e-4


# ---- routes on the real server ----

def test_routes_never_block_the_event_loop(comfy_server):
    """Another process holds the index lock: the stats request waits for it in a worker thread while
    the server keeps answering everything else."""
    from sprint.engines.files import file_lock
    folder = comfy_server.base_dir / "models" / "sprint_text_cache"
    folder.mkdir(parents=True, exist_ok=True)
    answers = []
    with file_lock(folder / "index.json"):
        waiting = threading.Thread(target=lambda: answers.append(comfy_server.get("/sprint/text_cache", timeout=120)))
        waiting.start()
        for _ in range(3):
            assert "devices" in comfy_server.get("/system_stats", timeout=5)
        assert waiting.is_alive() and not answers            # still waiting for the lock, not the loop
    waiting.join(60)
    assert answers and "disk_entries" in answers[0]          # answered once the lock was released


def post_raw(server, path, body):
    request = urllib.request.Request(server.url + path, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_clear_route_answers_400_to_bad_bodies(comfy_server):
    for body in (b"{not json", b'{"disk": "false"}', b'{"disk": 1}', b"[true]"):
        assert post_raw(comfy_server, "/sprint/text_cache/clear", body) == 400, body
    assert post_raw(comfy_server, "/sprint/text_cache/clear", b'{"disk": false}') == 200
    assert comfy_server.post("/sprint/prompt_cache/clear", {})["memory_entries"] == 0


def upload(server, subfolder, name, data):
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\n{subfolder}\r\n'.encode(),
             f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n",
             f"--{boundary}--\r\n".encode()]
    request = urllib.request.Request(server.url + "/upload/image", data=b"".join(parts),
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def test_a_crafted_engine_prompt_against_the_real_server(comfy_server, sd15_checkpoint):
    """A sidecar uploaded through ComfyUI's own /upload/image, naming /dev/zero, and a prompt whose
    engine points at it: a clear error, nothing outside Sprint's folders read, the queue alive."""
    sidecar = {"format": "sprint-unet-engine/1", "files": {"../../../../dev/zero": {"bytes": 0, "digest": ""}}}
    upload(comfy_server, "x", "sprint.json", json.dumps(sidecar).encode())
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15_checkpoint}},
              "2": {"class_type": "SprintLoadUNetEngine", "inputs": {"model": ["1", 0], "engine": "../../input/x"}},
              "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}
    prompt_id = comfy_server.post("/prompt", {"prompt": prompt, "client_id": "faults"})["prompt_id"]
    for _ in range(240):
        assert "devices" in comfy_server.get("/system_stats", timeout=5)
        history = comfy_server.get(f"/history/{prompt_id}")
        if history:
            break
        threading.Event().wait(0.5)
    status = history[prompt_id]["status"]
    assert status["status_str"] == "error"
    error = next(d for e, d in status["messages"] if e == "execution_error")
    assert "engine '../../input/x' is not one of" in error["exception_message"]
    assert "zero" not in error["exception_message"]
    assert comfy_server.get("/queue")["queue_running"] == []


# ---- load: 50 prompts back to back ----

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_fifty_prompts_hold_memory_and_release_engines(host, pack, tc, tiny_model, tiny_clip):
    """Cached encode + SprintKSampler + SprintAccelerateUNet (onnxruntime fp32) on the tiny model
    through the executor, 50 prompts, each a new text and a new accelerated MODEL (its source
    changes, so the executor re-runs Accelerate): RSS growth after the first 10 stays under 50 MB,
    and the engine slots and ONNX Runtime sessions of replaced models are released with them."""
    import gc
    import weakref
    import harness
    from comfy_execution.graph_utils import GraphBuilder
    ort = host.pack.engines.unet.ort
    sessions, made, rss = weakref.WeakSet(), [], {}
    created = ort.OrtUNet.__init__

    def tracked(self, *args, **kwargs):
        created(self, *args, **kwargs)
        sessions.add(self)
        made.append(1)
    ort.OrtUNet.__init__ = tracked
    try:
        for i in range(1, 51):
            g = GraphBuilder()
            model = g.node("SprintAccelerateUNet", model=harness.source(g, "MODEL", tiny_model), backend="onnxruntime",
                           precision="fp32", max_batch=4, min_size=64, max_size=128, max_tokens=231)
            clip = harness.source(g, "CLIP", tiny_clip)
            positive = g.node("SprintCachedTextEncode", clip=clip, text=f"a photo of a cat, number {i}")
            negative = g.node("SprintCachedTextEncode", clip=clip, text="blurry")
            latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
            sampler = g.node("SprintKSampler", model=model.out(0), seed=i, steps=4, cfg=6.0, preset="balanced",
                             scheduler="karras", positive=positive.out(0), negative=negative.out(0),
                             latent_image=latent.out(0), denoise=1.0)
            g.node("PreviewAny", source=sampler.out(0))
            host.run(g.finalize())
            if i in (1, 10, 50):
                gc.collect()
                rss[i] = rss_mb()
    finally:
        ort.OrtUNet.__init__ = created
    gc.collect()
    slots = [o for o in gc.get_objects() if type(o).__name__ == "Slot" and type(o).__module__.endswith("accelerate")]
    print(f"\n50 prompts: RSS {rss[1]:.0f} MB after prompt 1, {rss[10]:.0f} MB after 10, {rss[50]:.0f} MB after 50 "
          f"(+{rss[50] - rss[10]:.1f} MB); live engine slots {len(slots)}, live ORT sessions {len(sessions)} of {len(made)} made")
    assert rss[50] - rss[10] < 50
    assert len(made) == 50 and len(slots) <= 2 and len(sessions) <= 2      # each prompt's engine ran, then went
    assert tc.store().stats(disk=False)["hits_memory"] >= 49            # the negative prompt, every time


def test_a_server_on_a_read_only_models_volume_loads_every_node(host, tmp_path):
    """The real server booted with its models folder read-only (Docker/NFS), Sprint's folders not
    created: every Sprint node loads, the routes answer, nothing is written there."""
    import harness
    base = tmp_path / "base"
    (base / "models").mkdir(parents=True)
    with faults.read_only(base / "models"):
        server = harness.Server(host.comfy_path, base)
        try:
            server.wait()
            listed = sorted(k for k in server.get("/object_info") if k.startswith("Sprint"))
            stats = server.get("/sprint/text_cache")
            cleared = server.post("/sprint/text_cache/clear", {"disk": True})
        finally:
            server.stop()
        assert listed == host.sprint_nodes()
        assert stats["disk_entries"] == 0 and cleared["disk_entries"] == 0
        log = (base / "server.log").read_text(errors="replace")
        assert not [line for line in log.splitlines() if "IMPORT FAILED" in line and "Sprint" in line]
        assert list((base / "models").iterdir()) == []
