"""UNet engines: SprintAccelerateUNet runs the diffusion model through ONNX Runtime (FP32, FP16,
INT8) or TensorRT, building the engine on first use and reusing it from the Sprint models folder,
or through torch.compile (CUDA-graph replay on NVIDIA GPUs), compiled in memory per process.

Transformer families take their own forward signature (Flux: y, guidance; Qwen-Image: 5-D x;
HiDream: Llama states...): the call's tensor arguments become the graph's inputs by name, the
rest (None, counts) are fixed and part of the key with the shapes, since the tracer freezes the
position tables and patching of one shape. Each new engine is compared with PyTorch on its first
call; a graph that does not reproduce the model (Wan: NaN) or will not run (Lumina 2) sends the
family to PyTorch with that reason, once.

Hook: a keyed DIFFUSION_MODEL wrapper, i.e. exactly where the UNet's forward(x, timesteps,
context, y, control, transformer_options) runs, below ComfyUI's input scaling, CFG and every
sampler, so those keep working unchanged. Each call the engine cannot reproduce (ControlNet
residuals, attention/block patches, extra inputs, shapes outside the profile) runs the PyTorch
UNet instead, with its reason logged once. An OUTER_SAMPLE wrapper computes the artifact key
from the patched weights at the start of every sampling run (a LoRA added anywhere upstream or
downstream changes it: new engine), and after an INT8 calibration run quantizes.

Memory: the engine is an additional model of the patched MODEL (EnginePatcher), so
load_models_gpu counts its real size (artifact bytes, plus TensorRT's activation memory) next to
the PyTorch UNet, which stays loaded for the fallbacks; evicting it releases the session. The
torch backend shares the UNet's weights: its size is the CUDA-graph memory pool it captured.
"""
import functools
import inspect
import logging

import torch

import comfy.ldm.modules.attention
import comfy.model_management as mm
import comfy.model_patcher
import comfy.patcher_extension
import comfy.sample
from comfy_api.latest import io, ui

from . import common
from ..engines.files import digest
from ..engines.unet import build as chain, ort, torch_backend
from ..engines.unet.artifacts import ArtifactError, ArtifactStore, read
from ..engines.unet.export import ShapeProfile, export_call, export_unet
from ..engines.unet.int8 import CalibrationSet

log = logging.getLogger("sprint")

FOLDER = "sprint_engines"
KEY = "sprint.accelerate"


def store():
    return ArtifactStore(common.model_folder(FOLDER))


def _plain_attention(func, *args, **kwargs):
    """Export and compile with PyTorch SDPA: ComfyUI's CPU default (sub-quadratic chunking) bakes
    the traced shapes into Python branches, and sizes its chunks by the memory free at the time."""
    return comfy.ldm.modules.attention.attention_pytorch(*args, **kwargs)


TRACE_OPTIONS = {"optimized_attention_override": _plain_attention}


class Slot:
    """The live side of one accelerated MODEL: settings, the loaded engine, the run's key.

    Held by the MODEL's own wrappers and its EnginePatcher (ModelPatcher.clone copies wrapper
    lists, not their contents), so it lives and is released with the models that use it."""

    def __init__(self, backend, precision, profile):
        self.backend, self.precision, self.profile = backend, precision, profile
        self.runtime = self.runtime_key = self.key = self.run_reason = self.calibration = None
        self.arch = self.device = self.family = self.base_key = None
        self.transformer = False
        self.call_inputs, self.call_fixed = {}, {}     # the transformer call an export traces
        self.run_calls = 0
        self.checked = set()          # transformer engines compared with PyTorch once per process
        self.estimate = 0
        self.reasons = set()
        self.stats = {"engine_calls": 0, "pytorch_calls": 0}

    def fallback(self, reason):
        self.stats["pytorch_calls"] += 1
        self.note(reason)

    def note(self, reason):
        """Log and report a reason to run PyTorch, once per reason."""
        if reason not in self.reasons:
            self.reasons.add(reason)
            log.warning("Sprint engine: running the PyTorch UNet: %s", reason)
            common.send_event("engine", {"fallback": reason})

    def nbytes(self):
        if self.runtime is not None:
            return self.runtime.nbytes
        if self.key and self.key["backend"] in chain.IN_MEMORY:
            return self.estimate
        try:
            artifact = self.key and store().lookup(self.key)
        except OSError:             # an unreadable models volume: the estimate will do
            artifact = None
        return artifact.nbytes if artifact else self.estimate

    def release(self):
        self.runtime = self.runtime_key = None

    def begin_run(self, patcher):
        """Key the run on the weights the sampler will use (base + patches/LoRA)."""
        config = patcher.model.model_config.unet_config
        self.run_reason = self.key = self.base_key = None
        self.run_calls = 0
        self.family = type(patcher.model.model_config).__name__
        self.transformer = not common.is_unet(patcher)
        if self.transformer:
            # traced per call signature (see transformer_call); the profile bounds what is built
            self.arch, multiple = {"in_channels": None, "context_dim": None, "y_dim": None}, 1
            if self.backend not in ("auto", "onnxruntime"):
                self.run_reason = (f"{self.family} is a transformer: its engines run on ONNX Runtime only "
                                   f"(the {self.backend} backend takes UNet inputs)")
                return
        else:
            self.arch, multiple = chain.describe(config)
        self.profile = ShapeProfile.from_dict({**self.profile.as_dict(), "multiple": multiple})
        if any(k.startswith("diffusion_model.") for k in patcher.object_patches):
            self.run_reason = "object patches replace parts of the UNet"
            return
        try:
            backend, device = chain.resolve("onnxruntime" if self.transformer else self.backend, patcher.load_device)
            self.device = device
            key = chain.make_key(common.patcher_fingerprint(patcher, "diffusion_model."), digest(config, self.family),
                                 self.profile, self.precision, backend, device, self.transformer)
        except (ort.RuntimeMissing, ValueError) as e:
            self.run_reason = str(e)
            return
        # a transformer's runtime key adds its call to the run's key: only new weights count here
        if self.runtime_key is not None and (self.runtime_key["weights"] != key["weights"] if self.transformer
                                             else key != self.runtime_key):
            log.info("Sprint engine: the model's weights or settings changed (LoRA/patches): using another engine")
            self.release()
        params = sum(p.numel() for p in patcher.model.diffusion_model.parameters())
        # the torch backend holds no weights of its own (its graph pool is measured once captured)
        self.estimate = 0 if backend in chain.IN_MEMORY else params * chain.BYTES_PER_WEIGHT[self.precision]
        self.key = self.base_key = key

    def transformer_call(self, unet, args, kwargs):
        """(engine key, tensor inputs by name, fixed arguments) of one transformer call, or a
        reason it cannot run on an engine. The engine is traced at the call's shapes: its key
        holds the argument names, shapes and fixed values."""
        bound = inspect.signature(unet.forward).bind(*args, **kwargs).arguments
        bound.update(bound.pop("kwargs", {}))
        options = bound.pop("transformer_options", {})
        for name in ("control", "ref_latents"):
            if bound.get(name) is not None:
                return f"{self.family}: {name} inputs (the engine has none for them)"
        patches = sorted(k for k, v in options.get("patches", {}).items() if v)
        replaced = sorted(k for k, v in options.get("patches_replace", {}).items() if v)
        if patches or replaced:
            return f"model patches the engine cannot apply ({', '.join(patches + replaced)})"
        tensors = {k: v for k, v in bound.items() if torch.is_tensor(v)}
        fixed = {k: v for k, v in bound.items() if not torch.is_tensor(v)}
        if any(v is not None and not isinstance(v, (bool, int, float, str)) for v in fixed.values()):
            return f"{self.family}: non-tensor inputs the engine cannot take ({', '.join(sorted(fixed))})"
        x, context = next(iter(tensors.values())), tensors.get("context")
        # transformers' text encoders give any token count: only the profile's maximum bounds it
        tokens = max(context.shape[1] if context is not None else 0, self.profile.tokens[0])
        violation = self.profile.violation((x.shape[0], 0, *x.shape[-2:]), tokens)
        if violation:
            return violation
        call = {"inputs": {k: list(v.shape) for k, v in tensors.items()}, "fixed": fixed}
        return dict(self.base_key, arch=digest(self.base_key["arch"], call)), tensors, fixed
    def engine(self, unet):
        """The loaded engine for this run's key, building it if needed; None while an INT8
        calibration run records (that run samples in PyTorch)."""
        if self.runtime is not None and self.runtime_key == self.key:
            return self.runtime
        if self.key["backend"] in chain.IN_MEMORY:
            log.info("Sprint engine: compiling the UNet with torch.compile (%s) at each input shape it meets",
                     torch_backend.mode(self.device))
            self.runtime = torch_backend.TorchUNet(unet, self.device, self.arch["y_dim"] is not None, TRACE_OPTIONS)
            self.runtime_key = self.key
            common.send_event("engine", {"status": "ready", "backend": "torch", "precision": "model dtype"})
            return self.runtime
        artifacts = store()
        artifact = artifacts.lookup(self.key)
        if artifact is None:
            export = functools.partial(self.export, unet)
            int8_graph = chain.calibration_graph(self.key)
            if chain.needs_calibration(self.key) and artifacts.lookup(int8_graph) is None:
                if self.calibration is None:
                    self._build(chain.source_key(int8_graph), export, "exporting the FP32 graph")
                    self.calibration = CalibrationSet()
                    log.warning("Sprint engine: INT8 calibration: this run samples in PyTorch and records the "
                                "UNet inputs; the INT8 engine is built when it ends")
                    common.send_event("engine", {"status": "calibrating"})
                return None
            artifact = self._build(self.key, export, "building")
        self.runtime, self.runtime_key = chain.load(artifact, self.device), self.key
        common.send_event("engine", {"status": "ready", "artifact": artifact.name, "bytes": artifact.nbytes,
                                     "backend": self.key["backend"], "precision": self.precision})
        return self.runtime

    def export(self, unet, folder):
        if self.transformer:
            export_call(unet, folder, list(self.call_inputs), list(self.call_inputs.values()),
                        dict(self.call_fixed, transformer_options=TRACE_OPTIONS),
                        check=mm.throw_exception_if_processing_interrupted)
            return
        export_unet(unet, folder, self.profile, self.arch["in_channels"], self.arch["context_dim"], self.arch["y_dim"],
                    forward_kwargs={"transformer_options": TRACE_OPTIONS},
                    check=mm.throw_exception_if_processing_interrupted)

    def _build(self, key, export, what, calibration=None):
        artifacts = store()
        steps = chain.missing_builds(artifacts, key)
        log.info("Sprint engine: %s %s/%s (%d step(s))", what, key["backend"], key["precision"], steps)
        common.send_event("engine", {"status": "building", "backend": key["backend"], "precision": key["precision"]})
        bar = common.Progress(steps + len(calibration or ()))
        return chain.build(artifacts, key, export, self.arch, calibration, bar.update)

    def finish_run(self):
        """After an INT8 calibration run: quantize on what it recorded."""
        calibration, self.calibration = self.calibration, None
        if calibration is None or not len(calibration):
            return
        export = functools.partial(_no_export, self.key)
        self._build(self.key, export, "quantizing", calibration.select(chain.CALIBRATION_CALLS))

    def call_reason(self, x, context, y, control, transformer_options, kwargs):
        """Why this call cannot run on the engine, or None."""
        if self.run_reason or self.key is None:
            return self.run_reason or "the UNet was called outside a sampler run"
        if control is not None:
            return "ControlNet/T2I-Adapter residuals (the engine has no inputs for them)"
        patches = sorted(k for k, v in transformer_options.get("patches", {}).items() if v)
        replaced = sorted(k for k, v in transformer_options.get("patches_replace", {}).items() if v)
        if patches or replaced:
            return f"model patches the engine cannot apply ({', '.join(patches + replaced)})"
        extra = sorted(k for k, v in kwargs.items() if v is not None)
        if extra:
            return f"extra UNet inputs ({', '.join(extra)})"
        if context is None or (y is None) != (self.arch["y_dim"] is None):
            return "conditioning the engine was not built for"
        return self.profile.violation(tuple(x.shape), context.shape[1])


def _no_export(key, folder):
    raise RuntimeError(f"the FP32 graph for {key['backend']}/{key['precision']} vanished during calibration")


def _outer_sample(slot, executor, *args, **kwargs):
    patcher = executor.class_obj.model_patcher
    slot.begin_run(patcher)
    try:
        result = executor(*args, **kwargs)
    except BaseException:
        slot.calibration = None          # an interrupted run calibrates nothing
        raise
    if slot.run_calls == 0:
        # SD3's MMDiT (ComfyUI 0.3.64) runs its forward without the host's diffusion-model wrappers
        slot.note(f"{slot.family}: ComfyUI runs its {type(patcher.model.diffusion_model).__name__} without "
                  "diffusion-model wrappers, so no engine can take its calls")
    try:
        slot.finish_run()
    except mm.InterruptProcessingException:
        raise
    except Exception:
        log.warning("Sprint engine: INT8 quantization failed; the model keeps running in PyTorch", exc_info=True)
    return result


def _unet_inputs(x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
    """The UNet's forward arguments by name (UNetModel.forward's signature)."""
    return x, timesteps, context, y, control, transformer_options, kwargs


# An engine's output against PyTorch on the call it first serves: above this, the graph the
# tracer recorded is not the model (a shape-dependent branch it froze), and the family runs PyTorch.
CHECK_TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "int8": 0.1}


def _transformer(slot, executor, args, kwargs):
    """A transformer family's call on its engine (traced at this call's signature and shapes)."""
    found = slot.transformer_call(executor.class_obj, args, kwargs)
    if isinstance(found, str):
        slot.fallback(found)
        return executor(*args, **kwargs)
    key, tensors, fixed = found
    try:
        slot.key = key
        slot.call_inputs, slot.call_fixed = tensors, fixed
        engine = slot.engine(executor.class_obj)
        x = next(iter(tensors.values()))
        out = engine.run(tensors, x).to(x.dtype)
        check = digest(key)
        if check not in slot.checked:
            reference = executor(*args, **kwargs)
            error = ((out.float() - reference.float()).norm() / reference.float().norm().clamp_min(1e-12)).item()
            if not error <= CHECK_TOLERANCE[slot.precision]:
                what = "gives NaN" if error != error else f"is off by relative error {error:.2g}"
                slot.run_reason = (f"{slot.family}: its exported ONNX graph {what} against the PyTorch model on the "
                                   "call it was traced from")
                slot.fallback(slot.run_reason)
                return reference
            slot.checked.add(check)
        slot.stats["engine_calls"] += 1
        return out
    except mm.InterruptProcessingException:
        raise
    except Exception as e:          # a failed export, build or run costs speed for this run, never the image
        slot.run_reason = f"{slot.family}: the engine failed ({type(e).__name__}: {str(e).splitlines()[0][:300]})"
        if slot.run_reason not in slot.reasons:     # the one warning is the fallback line
            log.info("Sprint engine failed", exc_info=True)
        slot.fallback(slot.run_reason)
        return executor(*args, **kwargs)


def _diffusion_model(slot, executor, *args, **kwargs):
    """Every family's own forward(*args, **kwargs) reaches here: UNets run on a UNet engine,
    transformers on one traced from their own signature; the rest pass through unchanged."""
    slot.run_calls += 1
    if slot.run_reason is not None:
        slot.fallback(slot.run_reason)
        return executor(*args, **kwargs)
    if slot.transformer:
        return _transformer(slot, executor, args, kwargs)
    x, timesteps, context, y, control, transformer_options, extra = _unet_inputs(*args, **kwargs)
    reason = slot.call_reason(x, context, y, control, transformer_options, extra)
    if reason is None:
        try:
            engine = slot.engine(executor.class_obj)
            if engine is not None:
                out = engine(x, timesteps, context, y).to(x.dtype)
                slot.stats["engine_calls"] += 1
                return out
            slot.calibration.record(x, timesteps, context, y)
        except mm.InterruptProcessingException:
            raise
        except torch_backend.Uncompiled as e:   # this call only
            reason = str(e)
        except Exception as e:          # a failed build or run costs speed for this run, never the image
            reason = slot.run_reason = f"the engine failed ({type(e).__name__}: {e})"
            if reason not in slot.reasons:       # e.g. a read-only models volume: once, not every run
                log.warning("Sprint engine failed", exc_info=True)
    if reason is not None:
        slot.fallback(reason)
    return executor(*args, **kwargs)


class EngineFootprint(torch.nn.Module):
    """What ComfyUI's memory manager sees of an engine: no torch weights, a device."""

    def __init__(self, slot, device):
        super().__init__()
        self.slot, self.device = slot, device


class EnginePatcher(comfy.model_patcher.ModelPatcher):
    """An engine as a model ComfyUI loads and evicts: its size is the engine's real size
    (before the first build, parameters x bytes per weight), eviction releases the session."""

    def slot(self):
        return self.model.slot

    def model_size(self):
        return self.slot().nbytes()

    def loaded_size(self):
        return self.model_size() if self.slot().runtime is not None else 0

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
        return 0                       # the engine loads itself on its first call

    def partially_unload(self, device_to, memory_to_free=0):
        freed = self.loaded_size()
        self.slot().release()
        return freed

    def detach(self, unpatch_all=True):
        self.slot().release()
        return self.model


def accelerate(model, backend, precision, profile):
    """A clone of MODEL whose UNet runs on an engine; returns (model, slot)."""
    slot = Slot(backend, precision, profile)
    model = model.clone()
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, KEY, functools.partial(_outer_sample, slot))
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, KEY, functools.partial(_diffusion_model, slot))
    device = model.load_device
    model.set_additional_models(KEY, [EnginePatcher(EngineFootprint(slot, device), device, device)])
    return model, slot


profile_from = chain.profile_from_pixels


BACKEND_TIP = ("auto: TensorRT on an NVIDIA GPU when installed, else ONNX Runtime (CPU, or CUDA with "
               "onnxruntime-gpu), else torch. torch: torch.compile of the UNet (CUDA-graph replay on NVIDIA "
               "GPUs) in its own dtype, compiled in memory on each run's first calls, no files. A missing "
               "package is named once and the model runs in PyTorch.")
PRECISION_TIP = ("ONNX Runtime/TensorRT: fp32: same results as PyTorch (relative error ~1e-6). fp16: half-size weights, for GPUs. "
                 "int8: static quantization calibrated on the first sampling run (which runs in PyTorch and "
                 "records the UNet inputs); ~2-3x faster than PyTorch on CPU, a few % per-call error. torch: the model's "
                 "own dtype whatever is chosen here (fp32/fp16), int8 is not available.")


def engine_inputs():
    return [
        io.Combo.Input("backend", options=["auto", *chain.BACKENDS], default="auto", tooltip=BACKEND_TIP),
        io.Combo.Input("precision", options=list(chain.PRECISIONS), default="fp32", tooltip=PRECISION_TIP),
        io.Int.Input("max_batch", default=4, min=1, max=64, tooltip="Largest UNet batch (images x 2 with CFG: cond and uncond run together)."),
        io.Int.Input("min_size", default=256, min=64, max=8192, step=64, tooltip="Smallest image side in pixels the engine accepts."),
        io.Int.Input("max_size", default=1024, min=64, max=8192, step=64, tooltip="Largest image side in pixels; larger images run in PyTorch."),
        io.Int.Input("max_tokens", default=231, min=77, max=77 * 16, step=77, tooltip="Longest prompt in tokens (77 per chunk); longer prompts run in PyTorch."),
    ]


MODEL_TIP = "The model to accelerate (a LoRA or other weight patch applied before or after this node changes the engine key: a new engine is built)."


class SprintAccelerateUNet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SprintAccelerateUNet", display_name="Sprint Accelerate UNet", category="Sprint/engines",
            description="Runs the UNet on ONNX Runtime (FP32/FP16/INT8), TensorRT or torch.compile. Builds the engine on the first "
                        "sampling run (progress bar) into models/sprint_engines and reuses it. Changing the weights "
                        "(LoRA, merges) builds a new engine. ControlNet, attention/block patches and sizes outside "
                        "the profile run in PyTorch with the reason logged once: never a failure. Transformers "
                        "(Flux, Qwen-Image, HiDream) get ONNX Runtime engines traced from their own forward, one per "
                        "input shape, checked against PyTorch on their first call; SD3, Lumina 2 and Wan run PyTorch, "
                        "the reason said once.",
            inputs=[io.Model.Input("model", tooltip=MODEL_TIP), *engine_inputs()],
            outputs=[io.Model.Output(tooltip="The same model, its UNet calls running on the engine.")])

    @classmethod
    def execute(cls, model, backend, precision, max_batch, min_size, max_size, max_tokens):
        common.check_inputs(cls, locals())
        return io.NodeOutput(accelerate(model, backend, precision, profile_from(max_batch, min_size, max_size, max_tokens))[0])


class SprintBuildUNetEngine(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SprintBuildUNetEngine", display_name="Sprint Build UNet Engine", category="Sprint/engines",
            description="Builds an engine ahead of time by running one calibration sampling pass (euler) with the "
                        "given prompts and latent: for INT8 its UNet inputs are the calibration data. Outputs the "
                        "accelerated model and the artifact's name for Sprint Load UNet Engine.",
            inputs=[io.Model.Input("model", tooltip=MODEL_TIP),
                    io.Conditioning.Input("positive", tooltip="Prompt used for the calibration run."),
                    io.Conditioning.Input("negative", tooltip="Negative prompt used for the calibration run."),
                    io.Latent.Input("latent_image", tooltip="Latent of the size you will generate (must fit the profile)."),
                    io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, tooltip="Noise seed of the calibration run (any integer, 0 to 2^64-1)."),
                    io.Int.Input("steps", default=10, min=1, max=100, tooltip="Steps of the calibration run, 1-100 (its UNet calls are the INT8 calibration set)."),
                    io.Float.Input("cfg", default=7.0, min=0.0, max=30.0, step=0.1, tooltip="CFG scale of the calibration run, 0-30 (1 = no guidance; use the cfg you will generate with)."),
                    *engine_inputs()],
            outputs=[io.Model.Output(tooltip="The accelerated model (engine loaded)."),
                     io.String.Output(tooltip="Artifact name in models/sprint_engines (empty for the torch backend: nothing is written).")],
            is_output_node=True)

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed, steps, cfg, backend, precision,
                max_batch, min_size, max_size, max_tokens):
        common.check_inputs(cls, locals())
        common.check_latent(latent_image["samples"], "latent_image")
        model, slot = accelerate(model, backend, precision, profile_from(max_batch, min_size, max_size, max_tokens))
        latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
        noise = comfy.sample.prepare_noise(latent, seed)
        for _ in range(2 if precision == "int8" else 1):      # INT8: calibration run, then a run on the engine
            comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative, latent,
                                disable_pbar=True, seed=seed)
        if slot.key and slot.key["backend"] in chain.IN_MEMORY and slot.stats["engine_calls"]:
            return io.NodeOutput(model, "", ui=ui.PreviewText(f"torch.compile on {slot.key['device']}: compiled in "
                                                              "memory for this process, no engine file"))
        artifact = slot.key and store().lookup(slot.key)
        if artifact is None or slot.stats["engine_calls"] == 0:
            raise RuntimeError("Sprint engine was not built: " + (slot.run_reason or "; ".join(sorted(slot.reasons))
                                                                   or "the sampling run never called the model"))
        text = f"{artifact.name}: {artifact.nbytes / 2**20:.0f} MiB, {slot.key['backend']} {slot.precision} on {slot.key['device']}"
        return io.NodeOutput(model, artifact.name, ui=ui.PreviewText(text))


class SprintLoadUNetEngine(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SprintLoadUNetEngine", display_name="Sprint Load UNet Engine", category="Sprint/engines",
            description="Uses a pre-built engine from models/sprint_engines with its own backend, precision and "
                        "profile. Its sidecar key is checked against the model: an engine built for other weights "
                        "or runtime, or a corrupt one, is rebuilt for this model (logged), never loaded blindly.",
            inputs=[io.Model.Input("model", tooltip=MODEL_TIP),
                    io.Combo.Input("engine", options=store().names(), tooltip="An engine folder in models/sprint_engines.")],
            outputs=[io.Model.Output(tooltip="The model, its UNet calls running on the engine.")])

    @classmethod
    def execute(cls, model, engine):
        common.check_inputs(cls, locals())      # engine: one of the store's names (the host does not check)
        path = store().folder(engine)
        try:
            key = read(path).key
        except ArtifactError as e:
            try:
                key = chain.recorded_key(path)      # corrupt files, readable settings: rebuild it
            except ArtifactError:
                raise ValueError(f"{e}: choose another engine or build one with Sprint Accelerate UNet") from None
        profile = ShapeProfile.from_dict(key["profile"])
        return io.NodeOutput(accelerate(model, key["backend"], key["precision"], profile)[0])


NODES = [SprintAccelerateUNet, SprintBuildUNetEngine, SprintLoadUNetEngine]
