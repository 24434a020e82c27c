"""SprintAccelerateUNet on the tiny SD1.5-architecture model through ComfyUI's own sampler:
engine results against PyTorch, fallbacks that reproduce PyTorch exactly, INT8 calibration,
LoRA keys, memory accounting, builder and loader."""
import logging
import sys

import pytest
import torch

import harness
from sprint.engines.unet.artifacts import artifact_name

pytestmark = pytest.mark.host

PROFILE = dict(max_batch=4, min_size=64, max_size=128, max_tokens=231)


@pytest.fixture(scope="module")
def acc(host):
    return host.pack.nodes.accelerate


@pytest.fixture(scope="module")
def conds(tiny_clip):
    def encode(text):
        return tiny_clip.encode_from_tokens_scheduled(tiny_clip.tokenize(text))
    return encode("a photo of a cat"), encode("blurry")


def sample(model, conds, size=128, steps=4, seed=3):
    import comfy.sample
    latent = torch.zeros(1, 4, size // 8, size // 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, 6.0, "euler", "karras", conds[0], conds[1], latent,
                               disable_pbar=True, seed=seed)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def require_ort_on(device):
    """The ONNX Runtime tests need its provider for the host's device (CUDA tier: onnxruntime-gpu)."""
    if device.type != "cpu":
        ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime engine tests on CUDA need onnxruntime-gpu")
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            pytest.skip("ONNX Runtime engine tests on CUDA need onnxruntime-gpu (CUDAExecutionProvider)")


def accelerated(acc, model, precision="fp32", **profile):
    require_ort_on(model.load_device)
    return acc.accelerate(model, "onnxruntime", precision, acc.profile_from(**{**PROFILE, **profile}))


def test_fp32_engine_matches_pytorch(acc, tiny_model, conds):
    model, slot = accelerated(acc, tiny_model)
    ref = sample(tiny_model, conds)
    out = sample(model, conds)
    assert slot.stats["engine_calls"] == 4 and slot.stats["pytorch_calls"] == 0
    assert rel(out, ref) <= 1e-3
    again = sample(model, conds, seed=4)                  # reused, not rebuilt
    assert rel(again, sample(tiny_model, conds, seed=4)) <= 1e-3
    assert len(acc.store().names()) >= 1


def fallback_records(caplog):
    return [r for r in caplog.records if "running the PyTorch UNet" in r.getMessage()]


def test_out_of_profile_runs_pytorch_once_logged(acc, tiny_model, conds, caplog):
    model, slot = accelerated(acc, tiny_model)
    with caplog.at_level(logging.WARNING, logger="sprint"):
        out = sample(model, conds, size=192)                 # latent 24 > profile max 16
    assert torch.equal(out, sample(tiny_model, conds, size=192))
    assert slot.stats["pytorch_calls"] == 4 and slot.stats["engine_calls"] == 0
    [record] = fallback_records(caplog)
    assert "outside the engine profile" in record.getMessage()


class ConstantControl:
    """A minimal ControlNet stand-in: adds a fixed residual to the middle block."""

    def __new__(cls, *args):
        import comfy.controlnet

        class Control(comfy.controlnet.ControlBase):
            def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
                b, _, h, w = x_noisy.shape
                return {"middle": [torch.full((b, 64, h // 2, w // 2), 0.5)], "input": [], "output": []}

            def copy(self):
                c = Control()
                self.copy_to(c)
                return c
        return Control()


def test_controlnet_runs_pytorch_with_its_residuals(acc, tiny_model, conds):
    model, slot = accelerated(acc, tiny_model)
    control = ConstantControl()
    with_control = tuple([[c[0], dict(c[1], control=control)] for c in cond] for cond in conds)
    out = sample(model, with_control)
    ref = sample(tiny_model, with_control)
    assert torch.equal(out, ref)
    assert rel(ref, sample(tiny_model, conds)) > 1e-3         # the residual mattered
    assert any("ControlNet" in r for r in slot.reasons)


def test_attention_patch_runs_pytorch(acc, tiny_model, conds):
    patched = tiny_model.clone()
    patched.set_model_attn1_patch(lambda q, k, v, extra_options: (q, k, v * 0.5))
    model, slot = accelerated(acc, patched)
    assert torch.equal(sample(model, conds), sample(patched, conds))
    assert any("attn1_patch" in r for r in slot.reasons)


def test_missing_runtime_is_named_once(acc, tiny_model, conds, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)       # import onnxruntime -> ImportError
    with caplog.at_level(logging.WARNING, logger="sprint"):
        model, slot = accelerated(acc, tiny_model)
        out = sample(model, conds)
    assert torch.equal(out, sample(tiny_model, conds))
    assert "pip install onnx onnxruntime" in slot.run_reason
    assert len(fallback_records(caplog)) == 1


def test_lora_patch_gets_its_own_engine(acc, tiny_model, conds):
    lora = tiny_model.clone()
    key = "diffusion_model.input_blocks.1.0.in_layers.2.weight"
    weight = lora.get_model_object(key)
    lora.add_patches({key: (torch.randn_like(weight) * 0.2,)}, 1.0)
    base_model, base_slot = accelerated(acc, tiny_model)
    lora_model, lora_slot = accelerated(acc, lora)
    sample(base_model, conds)
    out = sample(lora_model, conds)
    assert lora_slot.key["weights"] != base_slot.key["weights"]
    assert {k: v for k, v in lora_slot.key.items() if k != "weights"} == {k: v for k, v in base_slot.key.items() if k != "weights"}
    ref = sample(lora, conds)
    assert rel(out, ref) <= 1e-3 and rel(ref, sample(tiny_model, conds)) > 1e-3


def test_profile_and_precision_change_key(acc, tiny_model):
    slots = [accelerated(acc, tiny_model, **kw)[1] for kw in ({}, {"max_size": 256}, {"precision": "fp16"})]
    for slot in slots:
        slot.begin_run(tiny_model)
    keys = [s.key for s in slots]
    assert len({artifact_name(k) for k in keys}) == 3 and len({k["weights"] for k in keys}) == 1


def test_engine_memory_is_reported(acc, tiny_model, conds):
    import comfy.model_management as mm
    model, slot = accelerated(acc, tiny_model)
    sample(model, conds)
    artifact = acc.store().lookup(slot.key)
    engines = [m.model for m in mm.current_loaded_models if isinstance(m.model, acc.EnginePatcher)]
    assert any(e.slot() is slot for e in engines)
    patcher = next(e for e in engines if e.slot() is slot)
    assert patcher.model_size() == artifact.nbytes == slot.runtime.nbytes > 0
    patcher.detach()                                         # eviction releases the session
    assert slot.runtime is None and patcher.loaded_size() == 0


def test_slot_is_shared_by_clones_and_released_with_its_models(acc, tiny_model, conds):
    """No module-level registry: ModelPatcher.clone copies the wrapper lists, not their contents,
    so a clone (as every downstream patch node makes) drives the same Slot, and the Slot with its
    ONNX Runtime session goes when the last model holding it goes."""
    import gc
    import weakref
    import comfy.model_management as mm
    model, slot = accelerated(acc, tiny_model)
    clone = model.clone()
    clone.model_options["transformer_options"]["sprint.test"] = True     # a patch node's typical change
    sample(clone, conds)
    assert slot.stats["engine_calls"] == 4 and slot.runtime is not None
    released = weakref.ref(slot.runtime)
    slot_ref = weakref.ref(slot)
    del model, clone, slot
    mm.cleanup_models_gc()
    gc.collect()
    assert slot_ref() is None and released() is None


def test_int8_calibrates_on_first_run_then_runs_quantized(acc, tiny_model, conds):
    model, slot = accelerated(acc, tiny_model, precision="int8")
    ref = sample(tiny_model, conds, steps=8)
    first = sample(model, conds, steps=8)
    assert torch.equal(first, ref)                            # calibration run: PyTorch, recorded
    assert acc.store().lookup(slot.key) is not None
    second = sample(model, conds, steps=8)
    assert slot.stats["engine_calls"] == 8
    error = rel(second, ref)
    print(f"tiny UNet INT8, 8-step euler run: final-latent relative error {error:.4f}")
    assert 0 < error < 0.1


def test_builder_and_loader_nodes(acc, host, tiny_model, conds, tmp_path):
    require_ort_on(tiny_model.load_device)
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    out = acc.SprintBuildUNetEngine.execute(tiny_model, conds[0], conds[1], latent, 0, 2, 5.0, "onnxruntime",
                                            "fp32", 4, 64, 128, 231)
    model, name = out.args
    path = acc.store().root / name
    assert (path / "sprint.json").is_file()
    loaded = acc.SprintLoadUNetEngine.execute(tiny_model, name).args[0]
    assert rel(sample(loaded, conds), sample(tiny_model, conds)) <= 1e-3
    # a corrupt artifact is refused and rebuilt, never loaded
    key = acc.read(path).key
    data = path / "unet.onnx.data"
    data.write_bytes(data.read_bytes()[:-4] + b"\0\0\0\0")
    assert acc.store().lookup(key) is None
    rebuilt = acc.SprintLoadUNetEngine.execute(tiny_model, name).args[0]
    assert rel(sample(rebuilt, conds), sample(tiny_model, conds)) <= 1e-3
    assert acc.store().lookup(key) is not None
    foreign = acc.store().root / "not-an-engine"
    foreign.mkdir()
    (foreign / "sprint.json").write_text("{}")
    with pytest.raises(ValueError, match="not a sprint-unet-engine"):
        acc.SprintLoadUNetEngine.execute(tiny_model, "not-an-engine")


def test_accelerate_node_in_a_prompt(host, acc, tiny_model, tiny_clip, taesd_vae, monkeypatch):
    from comfy_execution.graph_utils import GraphBuilder
    events = []
    executed = sys.modules[host.nodes.NODE_CLASS_MAPPINGS["SprintAccelerateUNet"].__module__]  # ComfyUI's copy
    monkeypatch.setattr(executed.common, "send_event", lambda event, data: events.append((event, data)))
    g = GraphBuilder()
    acc_node = g.node("SprintAccelerateUNet", model=harness.source(g, "MODEL", tiny_model), backend="auto",
                      precision="fp32", max_batch=4, min_size=64, max_size=128, max_tokens=231)
    clip = harness.source(g, "CLIP", tiny_clip)
    pos = g.node("CLIPTextEncode", clip=clip, text="a photo of a cat")
    neg = g.node("CLIPTextEncode", clip=clip, text="blurry")
    latent = g.node("EmptyLatentImage", width=128, height=128, batch_size=1)
    ks = g.node("KSampler", model=acc_node.out(0), positive=pos.out(0), negative=neg.out(0), latent_image=latent.out(0),
                seed=1, steps=3, cfg=6.0, sampler_name="euler", scheduler="karras", denoise=1.0)
    decode = g.node("VAEDecode", samples=ks.out(0), vae=harness.source(g, "VAE", taesd_vae))
    g.node("SaveImage", images=decode.out(0), filename_prefix="sprint_engine")
    result = host.run(g.finalize())
    assert torch.isfinite(result.output(ks.id)["samples"]).all()
    auto = acc.chain.resolve("auto", tiny_model.load_device)[0]       # onnxruntime here; torch on a bare GPU
    assert any(e == "engine" and d.get("status") == "ready" and d["backend"] == auto for e, d in events)


def test_engine_failure_runs_pytorch(acc, tiny_model, conds, monkeypatch):
    def broken(artifact, device):
        raise RuntimeError("session creation failed")
    monkeypatch.setattr(acc.chain, "load", broken)
    model, slot = accelerated(acc, tiny_model)
    assert torch.equal(sample(model, conds), sample(tiny_model, conds))
    assert slot.stats["pytorch_calls"] == 4 and "session creation failed" in slot.run_reason


def test_torch_backend_matches_pytorch_compiled_in_memory(acc, tiny_model, conds, caplog):
    """torch.compile (inductor) of the tiny UNet through ComfyUI's sampler: same key fields, no
    artifact on disk, one compile per shape, out-of-profile calls eager and logged once."""
    before = set(acc.store().names())
    model, slot = acc.accelerate(tiny_model, "torch", "fp32", acc.profile_from(**PROFILE))
    ref = sample(tiny_model, conds)
    out = sample(model, conds)
    assert slot.stats["engine_calls"] == 4 and slot.stats["pytorch_calls"] == 0
    error = rel(out, ref)
    tol = 1e-3 if tiny_model.model.get_dtype() == torch.float32 else 1e-2     # CUDA tier: ComfyUI's fp16/bf16
    print(f"tiny UNet, torch backend ({slot.key['runtime']}), 4-step euler: final-latent relative error {error:.2e}")
    assert error <= tol
    assert slot.key["backend"] == "torch" and "in memory" in slot.key["artifact"] and "exporter" not in slot.key
    assert set(acc.store().names()) == before                 # nothing written
    assert rel(sample(model, conds, seed=4), sample(tiny_model, conds, seed=4)) <= tol
    assert len(slot.runtime.shapes) == 1                      # batch 2 (cond + uncond), one latent size
    engines = [m.model for m in __import__("comfy.model_management").model_management.current_loaded_models
               if isinstance(m.model, acc.EnginePatcher) and m.model.slot() is slot]
    assert engines and engines[0].model_size() == slot.runtime.nbytes       # 0 on CPU: the UNet's own weights
    with caplog.at_level(logging.WARNING, logger="sprint"):
        big = sample(model, conds, size=192)
    assert torch.equal(big, sample(tiny_model, conds, size=192))
    [record] = fallback_records(caplog)
    assert "outside the engine profile" in record.getMessage()


def test_torch_backend_refuses_int8_and_runs_pytorch(acc, tiny_model, conds):
    model, slot = acc.accelerate(tiny_model, "torch", "int8", acc.profile_from(**PROFILE))
    assert torch.equal(sample(model, conds, steps=2), sample(tiny_model, conds, steps=2))
    assert "int8 needs onnxruntime or tensorrt" in slot.run_reason
