"""`bench-unet`: PyTorch FP32 vs ONNX Runtime FP32 vs ONNX Runtime INT8 per UNet call on CPU,
side by side in one run, plus INT8 accuracy after calibration on a real sampling run.

Everything goes through SprintAccelerateUNet's own code: the INT8 engine is calibrated by an
ordinary sampling run of the model (euler, CFG), then measured on the UNet inputs of another
run with a different seed and prompt (held out), and by that run's final latent. ComfyUI is
imported only after boot_for() has set its arguments.
"""
import statistics
import time

import torch

from .headless import boot_for


def configure_bench_unet(parser):
    """`bench-unet`: UNet engines (PyTorch vs ORT FP32 vs ORT INT8) on CPU, timed and scored."""
    parser.add_argument("--unet", default="shallow", choices=["tiny", "shallow", "full"],
                        help="SD1.5-architecture UNet with random weights (shallow: 320 ch, 2 levels, context 768)")
    parser.add_argument("--latent", type=int, default=32, help="latent side (pixels / 8)")
    parser.add_argument("--steps", type=int, default=10, help="steps of the calibration and evaluation runs")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (A B C A B C ...)")
    parser.set_defaults(func=bench_unet)


def _conditioning(context_dim, seed):
    """Prompt-embedding stand-ins with CLIP-like statistics (no text encoder weights here)."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 77, context_dim, generator=g), {}]]


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


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@torch.no_grad()
def bench_unet(args):
    host = boot_for(args)
    synthetic, acc = host.module("nodes.synthetic"), host.module("nodes.accelerate")
    from ..engines import unet_engine
    model = synthetic.sd15_model(args.unet, seed=0)
    context_dim = synthetic.UNET_SIZES[args.unet][3]
    side = args.latent
    profile = acc.profile_from(max_batch=2, min_size=side * 8, max_size=side * 8, max_tokens=77)
    calib = (_conditioning(context_dim, 1), _conditioning(context_dim, 2))
    held = (_conditioning(context_dim, 3), _conditioning(context_dim, 4))
    print(f"{args.unet} SD1.5-architecture UNet (random weights), latent {side}x{side}, UNet batch 2 "
          f"(1 image, cond + uncond), euler/karras {args.steps} steps, cfg 7, CPU threads {torch.get_num_threads()}")

    int8, slot = acc.accelerate(model, "onnxruntime", "int8", profile)
    start = time.perf_counter()
    _sample(int8, calib, side, args.steps, seed=1)             # calibration run (PyTorch, recorded)
    print(f"export + calibration run + INT8 quantization: {time.perf_counter() - start:.0f} s "
          f"({len(slot.reasons) and '; '.join(slot.reasons) or 'no fallbacks'})")
    fp32_key = unet_engine.source_key(slot.key)
    fp32 = unet_engine.load(acc.store().lookup(fp32_key), "cpu")
    q8 = unet_engine.load(acc.store().lookup(slot.key), "cpu")
    unet = model.model.diffusion_model

    calls = []
    reference = _sample(_recording(model, calls), held, side, args.steps, seed=5)
    on_int8 = _sample(int8, held, side, args.steps, seed=5)
    fp32_model, _ = acc.accelerate(model, "onnxruntime", "fp32", profile)
    on_fp32 = _sample(fp32_model, held, side, args.steps, seed=5)

    errors = {"ORT FP32": [], "ORT INT8": []}
    for x, t, c in calls:
        ref = unet(x, t, c).float()
        errors["ORT FP32"].append(_rel(fp32(x, t, c), ref))
        errors["ORT INT8"].append(_rel(q8(x, t, c), ref))
    print(f"\nper-call relative error vs PyTorch on {len(calls)} held-out calls (another seed and prompt):")
    for name, e in errors.items():
        print(f"  {name}: median {statistics.median(e):.2e}  max {max(e):.2e}  per step "
              + " ".join(f"{v:.3f}" for v in e))
    print(f"{args.steps}-step sampling run, final latent relative error vs PyTorch: "
          f"ORT FP32 {_rel(on_fp32, reference):.2e}, ORT INT8 {_rel(on_int8, reference):.4f}")

    x, t, c = calls[len(calls) // 2]
    runs = {"PyTorch FP32": lambda: unet(x, t, c), "ORT FP32": lambda: fp32(x, t, c), "ORT INT8": lambda: q8(x, t, c)}
    for run in runs.values():
        run()                                                     # warm-up
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"\nper-call time, median of {args.rounds} interleaved rounds (A B C A B C ...):")
    for name, m in med.items():
        print(f"  {name:13s} {m:.3f} s")
    print(f"INT8 speed-up: {med['PyTorch FP32'] / med['ORT INT8']:.2f}x vs PyTorch FP32 (bar 2x), "
          f"{med['ORT FP32'] / med['ORT INT8']:.2f}x vs ORT FP32 (bar 1.5x); "
          f"INT8 per-call error max {max(errors['ORT INT8']):.3f} (bar 0.05)")
    return 0
