"""`bench-engines`: PyTorch FP32 vs ONNX Runtime FP32 vs ONNX Runtime INT8 vs the torch backend
(torch.compile) per UNet call on CPU, side by side in one run, plus INT8 accuracy after calibration
on a real sampling run and the torch backend's error.

Everything goes through SprintAccelerateUNet's own code: the INT8 engine is calibrated by an
ordinary sampling run of the model (euler, CFG), then measured on the UNet inputs of another
run with a different seed and prompt (held out), and by that run's final latent.
"""
import functools
import statistics

import torch

from ..engines.evaluation import relative_error
from ..engines.unet import build as chain, torch_backend
from ..nodes import accelerate as acc
from . import meters, synthetic
from .meters import side_by_side, timed


def configure(parser):
    """`bench-engines`: UNet engines (PyTorch vs ORT FP32 vs ORT INT8 vs torch.compile) on CPU, timed and scored."""
    parser.add_argument("--unet", default="shallow", choices=["tiny", "shallow", "full"],
                        help="SD1.5-architecture UNet with random weights (shallow: 320 ch, 2 levels, context 768)")
    parser.add_argument("--latent", type=int, default=32, help="latent side (pixels / 8)")
    parser.add_argument("--steps", type=int, default=10, help="steps of the calibration and evaluation runs")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (A B C A B C ...)")
    parser.add_argument("--torch-only", action="store_true",
                        help="only the torch backend vs eager PyTorch per UNet call, on the device ComfyUI runs the "
                             "model on (--gpu: CUDA graphs, ComfyUI's fp16/bf16), batch 2")
    parser.add_argument("--family", choices=TRANSFORMERS,
                        help="a transformer family instead of the SD1.5 UNet: its random-weight build (Qwen-Image: one "
                             "block at the real width), PyTorch FP32 vs ORT FP32 / FP16 / INT8 (dynamic MatMuls) per call")
    parser.set_defaults(func=command)


TRANSFORMERS = ("Flux", "QwenImage", "HiDream")       # the families whose engines export (test_families)


@torch.no_grad()
def transformer_command(family, side, rounds, steps=2):
    """Per-call error and time of each ORT precision vs PyTorch FP32 on one transformer call,
    the one a sampling run through SprintAccelerateUNet traced its engine from."""
    model = synthetic.bench_family_model(family, seed=0)
    conds = [synthetic.bench_family_conditioning(family, seed=s) for s in (1, 2)]
    latent = synthetic.family_latent(family, side, side)["samples"]
    profile = acc.profile_from(max_batch=2, min_size=64, max_size=side * 8, max_tokens=77)
    params = sum(p.numel() for p in model.model.diffusion_model.parameters())
    print(f"{family} random weights ({params / 1e6:.1f} M parameters), latent {tuple(latent.shape)}, batch 2 (cond + uncond), "
          f"CPU threads {torch.get_num_threads()}")
    engines, call = {}, None
    for precision in ("fp32", "fp16", "int8"):
        fast, slot = acc.accelerate(model, "onnxruntime", precision, profile)
        seconds, _ = timed(lambda: _sample_latent(fast, conds, latent, steps, seed=1))
        if slot.runtime is None:
            print(f"  ORT {precision}: no engine ({'; '.join(sorted(slot.reasons))})")
            continue
        engines[f"ORT {precision.upper()}"], call = slot.runtime, (slot.call_inputs, slot.call_fixed)
        print(f"  ORT {precision}: built and sampled {steps} steps in {seconds:.0f} s, {slot.runtime.nbytes / 2**20:.1f} MiB")
    tensors, fixed = call
    unet = model.model.diffusion_model
    x = next(iter(tensors.values()))
    runs = {"PyTorch FP32": lambda i: unet(**fixed, **tensors, transformer_options=acc.TRACE_OPTIONS)}
    reference = runs["PyTorch FP32"](0).float()
    runs.update({name: functools.partial(lambda e, i: e.run(tensors, x), e) for name, e in engines.items()})
    med = side_by_side(runs, rounds, warmup=True)
    print(f"per call, median of {rounds} interleaved rounds; relative error vs PyTorch FP32:")
    for name, m in med.items():
        error = relative_error(runs[name](0).float(), reference)
        print(f"  {name:13s} {m * 1e3:9.2f} ms  {med['PyTorch FP32'] / m:5.2f}x  error {error:.2e}")
    return 0


def _sample_latent(model, conds, latent, steps, seed):
    import comfy.sample
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, 4.0, "euler", "simple", conds[0], conds[1], latent,
                               disable_pbar=True, seed=seed)


def _sample(model, conds, side, steps, seed):
    import comfy.sample
    latent = torch.zeros(1, 4, side, side)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, 7.0, "euler", "karras", conds[0], conds[1], latent,
                               disable_pbar=True, seed=seed)


def _recording(model, calls):
    """A clone that records every UNet call's inputs (x, timesteps, context) and runs PyTorch."""
    import comfy.patcher_extension

    def record(executor, x, timesteps, context, *args, **kwargs):
        calls.append((x.clone(), timesteps.clone(), context.clone()))
        return executor(x, timesteps, context, *args, **kwargs)
    model = model.clone()
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "sprint.bench", record)
    return model


@torch.no_grad()
def torch_vs_eager(model, context_dim, side, rounds, batch=2):
    """Per-call time of the torch backend vs the UNet as ComfyUI runs it (its own attention),
    on the model's load device and dtype; returns the speed-up."""
    import comfy.model_management as mm
    mm.load_models_gpu([model])
    unet, device, dtype = model.model.diffusion_model, model.load_device, model.model.get_dtype()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, side, side, generator=g).to(device, dtype)
    t = torch.linspace(999, 1, batch).to(device)
    c = torch.randn(batch, 77, context_dim, generator=g).to(device, dtype)
    compiled = torch_backend.TorchUNet(unet, device, options=acc.TRACE_OPTIONS)
    seconds, out = timed(lambda: compiled(x, t, c))
    print(f"torch backend ({torch_backend.version(device)}) on {meters.device_name(device)} {dtype}: first call incl. "
          f"compile {seconds:.0f} s; graph pool {compiled.nbytes / 2**20:.0f} MiB; latent {side}x{side}, batch {batch}")
    error = relative_error(out.float(), unet(x, t, c).float())
    med = side_by_side({"PyTorch eager": lambda i: unet(x, t, c), "torch backend": lambda i: compiled(x, t, c)},
                       rounds, warmup=True)
    for name, m in med.items():
        print(f"  {name:14s} {m * 1e3:9.2f} ms per call")
    speedup = med["PyTorch eager"] / med["torch backend"]
    print(f"torch backend speed-up per step: {speedup:.2f}x vs eager (goal 1.3x at 512 px SD1.5 batch 2 on a GPU); "
          f"relative error {error:.1e}")
    return speedup


@torch.no_grad()
def command(host, args):
    if args.family:
        return transformer_command(args.family, args.latent, args.rounds)
    model = synthetic.sd15_model(args.unet, seed=0)
    context_dim = synthetic.UNET_SIZES[args.unet][3]
    side = args.latent
    if args.torch_only:
        torch_vs_eager(model, context_dim, side, args.rounds)
        return 0
    profile = acc.profile_from(max_batch=2, min_size=side * 8, max_size=side * 8, max_tokens=77)
    calib = (synthetic.random_conditioning(context_dim, 1), synthetic.random_conditioning(context_dim, 2))
    held = (synthetic.random_conditioning(context_dim, 3), synthetic.random_conditioning(context_dim, 4))
    print(f"{args.unet} SD1.5-architecture UNet (random weights), latent {side}x{side}, UNet batch 2 "
          f"(1 image, cond + uncond), euler/karras {args.steps} steps, cfg 7, CPU threads {torch.get_num_threads()}")

    int8, slot = acc.accelerate(model, "onnxruntime", "int8", profile)
    seconds, _ = timed(lambda: _sample(int8, calib, side, args.steps, seed=1))   # calibration run (PyTorch, recorded)
    print(f"export + calibration run + INT8 quantization: {seconds:.0f} s "
          f"({len(slot.reasons) and '; '.join(slot.reasons) or 'no fallbacks'})")
    fp32 = chain.load(acc.store().lookup(chain.source_key(slot.key)), "cpu")
    q8 = chain.load(acc.store().lookup(slot.key), "cpu")
    unet = model.model.diffusion_model

    calls = []
    reference = _sample(_recording(model, calls), held, side, args.steps, seed=5)
    on_int8 = _sample(int8, held, side, args.steps, seed=5)
    fp32_model, _ = acc.accelerate(model, "onnxruntime", "fp32", profile)
    on_fp32 = _sample(fp32_model, held, side, args.steps, seed=5)

    compiled = torch_backend.TorchUNet(unet, "cpu", options=acc.TRACE_OPTIONS)
    seconds, _ = timed(lambda: compiled(*calls[0]))
    print(f"torch backend ({torch_backend.version('cpu')}): first call incl. compile {seconds:.0f} s")
    errors = {"ORT FP32": [], "ORT INT8": [], "torch": []}
    for x, t, c in calls:
        ref = unet(x, t, c).float()
        errors["ORT FP32"].append(relative_error(fp32(x, t, c), ref))
        errors["ORT INT8"].append(relative_error(q8(x, t, c), ref))
        errors["torch"].append(relative_error(compiled(x, t, c).float(), ref))
    print(f"\nper-call relative error vs PyTorch on {len(calls)} held-out calls (another seed and prompt):")
    for name, e in errors.items():
        print(f"  {name}: median {statistics.median(e):.2e}  max {max(e):.2e}  per step "
              + " ".join(f"{v:.3f}" for v in e))
    print(f"{args.steps}-step sampling run, final latent relative error vs PyTorch: "
          f"ORT FP32 {relative_error(on_fp32, reference):.2e}, ORT INT8 {relative_error(on_int8, reference):.4f}")

    x, t, c = calls[len(calls) // 2]
    runs = {"PyTorch FP32": lambda i: unet(x, t, c), "ORT FP32": lambda i: fp32(x, t, c), "ORT INT8": lambda i: q8(x, t, c),
            "torch": lambda i: compiled(x, t, c)}
    med = side_by_side(runs, args.rounds, warmup=True)
    print(f"\nper-call time, median of {args.rounds} interleaved rounds (A B C A B C ...):")
    for name, m in med.items():
        print(f"  {name:13s} {m:.3f} s")
    print(f"INT8 speed-up: {med['PyTorch FP32'] / med['ORT INT8']:.2f}x vs PyTorch FP32 (bar 2x), "
          f"{med['ORT FP32'] / med['ORT INT8']:.2f}x vs ORT FP32 (bar 1.5x); "
          f"INT8 per-call error max {max(errors['ORT INT8']):.3f} (bar 0.05)")
    print(f"torch backend speed-up: {med['PyTorch FP32'] / med['torch']:.2f}x vs PyTorch FP32 per call "
          f"(per-call error max {max(errors['torch']):.1e})")
    return 0
