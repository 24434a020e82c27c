"""`bench-tiling`: what SprintTiledDiffusion and SprintTwoStageUpscale cost and save, side by side.

1. Compute overhead of the default tile plans (evaluated area / image area) at growing sizes.
2. One UNet evaluation (batch 1) untiled vs tiled with the default settings, at growing latent
   sizes: time, and peak memory above the loaded model. Each measurement runs in a fresh process
   (what an earlier one freed cannot hide in the allocator): on CPU the growth of the process's
   peak resident set (reset through /proc/self/clear_refs, read from VmHWM) over its resident set
   before the evaluation; on CUDA the growth of torch's peak allocation.
3. Direct high-resolution generation vs two-stage (stage 1 at half the side, then
   SprintTwoStageUpscale to 2x) with the same sampler, scheduler and steps: UNet calls, latent
   pixels evaluated, UNet FLOPs (torch's FlopCounterMode around every model call) and time,
   alternating the two (A B A B ...).

The models are SD1.5-architecture networks with random weights (bench/synthetic.py): time, memory
and FLOPs do not depend on weight values.
"""
import argparse
import gc
import json
import os
import statistics
import subprocess
import sys

import torch

from ..engines import tiling
from ..nodes import tiled_diffusion, two_stage
from ..nodes.tiled_diffusion import ALIGN
from . import synthetic
from .host import PACK_ROOT
from .meters import ModelCalls, PeakMemory, device_name, timed

OVERHEAD_SIZES = (64, 96, 128, 160, 192, 256, 320, 384, 512)


def configure(parser):
    """`bench-tiling`: tiled vs untiled memory/time, plan overhead, two-stage vs direct compute."""
    parser.add_argument("--model", choices=("full", "shallow", "tiny"), default="full",
                        help="SD1.5-architecture UNet with random weights (full: the real 860 M one)")
    parser.add_argument("--family", choices=list(synthetic.FAMILIES), default="SD15",
                        help="memory/time table: the model family (SD15 uses --model; the others one block at the "
                             "family's real width, synthetic.bench_family_model); latents in the family's shape")
    parser.add_argument("--sizes", default="64,128,256", help="latent sides for the memory/time table")
    parser.add_argument("--tile", type=int, default=0,
                        help="tile size in pixels (0: SprintTiledDiffusion's auto default for the family)")
    parser.add_argument("--overlap", type=int, default=64, help="tile overlap in pixels (the node's default)")
    parser.add_argument("--attention", choices=("pytorch", "sub-quad"), default="pytorch",
                        help="ComfyUI attention: PyTorch SDPA (GPU default; memory linear in tokens) or "
                             "sub-quadratic (CPU default; its chunks grow with the memory free at the time); "
                             "read before ComfyUI boots")
    parser.add_argument("--two-stage-size", type=int, default=64, help="stage-1 latent side (64 = 512 px)")
    parser.add_argument("--steps", type=int, default=10, help="steps of both generations")
    parser.add_argument("--cfg", type=float, default=1.0,
                        help="guidance (1.0: one UNet pass per step on both sides; the ratio is the same)")
    parser.add_argument("--sampler", default="euler", help="ComfyUI sampler of both generations")
    parser.add_argument("--scheduler", default="simple", help="ComfyUI scheduler of both generations")
    parser.add_argument("--denoise", type=float, default=None, help="two-stage denoise (default: the node's)")
    parser.add_argument("--repeat", type=int, default=1, help="A B rounds of the two-stage comparison")
    parser.add_argument("--parts", default="overhead,memory,two-stage", help="which parts to run")
    parser.add_argument("--measure", help=argparse.SUPPRESS)   # worker: one SIZE:MODE measurement
    parser.set_defaults(func=command)


def conditioning(model, seed=0):
    """A random text context of the model's width: timings do not depend on its values."""
    return synthetic.random_conditioning(model.model.model_config.unet_config["context_dim"], seed)


def evaluate(model, size, cond, family="SD15"):
    """Exactly one model evaluation (batch 1, no guidance) on a size x size latent."""
    import comfy.sample
    import comfy.samplers
    latent = synthetic.family_latent(family, size, size)["samples"]
    comfy.sample.sample_custom(model, torch.randn(latent.shape), 1.0, comfy.samplers.sampler_object("euler"),
                               torch.tensor([1.0, 0.0]), cond, cond, latent, disable_pbar=True, seed=0)


def measure(args):
    """Worker: one evaluation at --measure SIZE:MODE; prints a JSON line."""
    size, mode = args.measure.split(":")
    size = int(size)
    if args.family == "SD15":
        model, cond = synthetic.sd15_model(args.model, seed=0), None
    else:
        model, cond = synthetic.bench_family_model(args.family), synthetic.bench_family_conditioning(args.family)
    if mode == "tiled":
        model = tiled_diffusion.apply_tiling(model, tiled_diffusion.TiledConfig.from_pixels(args.tile, args.tile, args.overlap))
    cond = cond or conditioning(model)
    evaluate(model, 16, cond, args.family)       # loads the model and initialises kernels
    gc.collect()
    cuda = torch.cuda.is_available() and not isinstance(model.load_device, str) and model.load_device.type == "cuda"
    with PeakMemory(cuda) as memory:
        seconds, _ = timed(lambda: evaluate(model, size, cond, args.family))
    peak, baseline = memory.peak, memory.start
    print(json.dumps({"size": size, "mode": mode, "peak_bytes": peak, "seconds": seconds, "baseline_bytes": baseline,
                      "method": memory.method, "reserved_bytes": memory.reserved, "cuda": cuda}))
    return 0


def run_worker(host, args, size, mode):
    cmd = [sys.executable, str(PACK_ROOT), "--comfyui", str(host.comfy_path)] + (["--gpu"] if args.gpu else [])
    cmd += ["bench-tiling", "--model", args.model, "--family", args.family, "--attention", args.attention, "--tile", str(args.tile),
            "--overlap", str(args.overlap), "--measure", f"{size}:{mode}"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if run.returncode != 0:
        raise RuntimeError(f"measurement {size}:{mode} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def plan(args, size):
    return tiling.plan_tiles(size, size, args.tile // 8, args.tile // 8, args.overlap // 8, ALIGN)


def print_overhead(args):
    print(f"\nCompute overhead of the plans (tiles <= {args.tile} px, overlap >= {args.overlap} px, starts on "
          f"multiples of {ALIGN} latent px): evaluated area / image area")
    print(f"  {'latent':>7} {'image px':>9} {'tiles':>6} {'tile (latent)':>14} {'overhead':>9}")
    for size in OVERHEAD_SIZES:
        p = plan(args, size)
        print(f"  {size:>7} {size * 8:>9} {len(p.tiles):>6} {p.tile_height:>8} x {p.tile_width:<4} {p.overhead:>9.3f}")
    return plan(args, 256).overhead


def print_memory(host, args):
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = {}
    print(f"\nOne {args.family} model evaluation (batch 1), untiled vs tiled (tiles <= {args.tile} px, overlap >= {args.overlap} px), "
          "each in a fresh process")
    print(f"  {'latent':>7} {'image px':>9} {'tiles':>6} {'untiled MB':>11} {'tiled MB':>9} {'memory':>7} "
          f"{'untiled s':>10} {'tiled s':>8} {'time':>6}")
    for size in sizes:
        plain, tiled = run_worker(host, args, size, "untiled"), run_worker(host, args, size, "tiled")
        rows[size] = (plain, tiled)
        tiles = len(plan(args, size).tiles)
        print(f"  {size:>7} {size * 8:>9} {tiles:>6} {plain['peak_bytes'] / 2**20:>11.0f} {tiled['peak_bytes'] / 2**20:>9.0f} "
              f"{tiled['peak_bytes'] / plain['peak_bytes']:>7.1%} {plain['seconds']:>10.1f} {tiled['seconds']:>8.1f} "
              f"{tiled['seconds'] / plain['seconds']:>5.2f}x", flush=True)
    print(f"  memory, time: tiled / untiled; memory: {plain['method']} during the evaluation, above the process with the model loaded "
          f"(baseline {plain['baseline_bytes'] / 2**30:.1f} GiB)")
    if plain["cuda"]:
        print("  peak reserved (torch.cuda.max_memory_reserved, whole process), untiled / tiled MiB: " + ", ".join(
            f"{size} latent {p['reserved_bytes'] / 2**20:.0f} / {t['reserved_bytes'] / 2**20:.0f}" for size, (p, t) in rows.items()))
    return rows


def print_two_stage(args):
    import comfy.sample
    import comfy.samplers
    node = two_stage.SprintTwoStageUpscale
    denoise = args.denoise if args.denoise is not None else next(
        i.default for i in node.GET_SCHEMA().inputs if i.id == "denoise")
    base = synthetic.sd15_model(args.model, seed=0)
    positive, negative = conditioning(base, 1), conditioning(base, 2)
    sampler = comfy.samplers.sampler_object(args.sampler)
    small, big = args.two_stage_size, 2 * args.two_stage_size

    def generate(model, size, seed):
        latent = torch.zeros(1, 4, size, size)
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), args.scheduler, args.steps)
        return comfy.sample.sample_custom(model, torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed)),
                                          args.cfg, sampler, sigmas, positive, negative, latent, disable_pbar=True, seed=seed)

    def direct(model, seed):
        generate(model, big, seed)

    def staged(model, seed):
        stage1 = generate(model, small, seed)
        node.execute(model=model, positive=positive, negative=negative, latent={"samples": stage1}, seed=seed,
                     steps=args.steps, cfg=args.cfg, scheduler=args.scheduler, denoise=denoise, scale_by=2.0,
                     upscale_method="latent bislerp", tile_size=args.tile, tile_overlap=args.overlap, sampler=sampler)

    results = {"direct": [], "two-stage": []}
    generate(base, 16, 0)                                  # load the model before timing
    for round_ in range(args.repeat):
        for name, run in (("direct", direct), ("two-stage", staged)):
            with ModelCalls(base.model.diffusion_model, flops=True) as meter:
                seconds, _ = timed(lambda: run(base.clone(), round_))
            results[name].append((meter, seconds))
    print(f"\nDirect {big * 8} px vs two-stage {small * 8} px -> 2x ({args.sampler}, {args.scheduler}, {args.steps} steps, "
          f"cfg {args.cfg}; two-stage: latent bislerp, denoise {denoise}), {args.repeat} A B round(s), median time")
    print(f"  {'':>10} {'UNet calls':>11} {'latent px':>11} {'TFLOP':>8} {'time s':>8}")
    summary = {}
    for name, runs in results.items():
        meter = runs[0][0]
        summary[name] = (meter.calls, meter.pixels, meter.flops / 1e12, statistics.median(t for _, t in runs))
        print(f"  {name:>10} {summary[name][0]:>11} {summary[name][1]:>11} {summary[name][2]:>8.2f} {summary[name][3]:>8.1f}")
    ratio = [b / a for a, b in zip(summary["direct"], summary["two-stage"])]
    print(f"  {'ratio':>10} {ratio[0]:>11.1%} {ratio[1]:>11.1%} {ratio[2]:>8.1%} {ratio[3]:>8.1%}")
    return ratio


def command(host, args):
    if not args.tile:      # the node's auto size: the UNet families are the ones built with a context_dim
        args.tile = tiled_diffusion.AUTO_TILE["unet" if "context_dim" in synthetic.FAMILIES[args.family][1] else "transformer"]
    if args.measure:
        return measure(args)
    import platform

    import comfy.model_management as mm
    parts = set(args.parts.split(","))
    print(f"Sprint bench-tiling | ComfyUI at {host.comfy_path} | {device_name(mm.get_torch_device())}, "
          f"{platform.processor() or platform.machine()} | "
          + (f"SD1.5 '{args.model}'" if args.family == "SD15" else
             f"{args.family} ({'one block at the real width' if args.family in synthetic.BENCH_WIDTHS else 'tiny'})")
          + f" architecture, random weights (time, memory and FLOPs do not depend on weight values) | "
          f"attention: {args.attention}", flush=True)
    bars = []
    if "overhead" in parts:
        overhead = print_overhead(args)
        bars.append(f"compute overhead at 256 x 256 latent (2048 px): {overhead:.3f} (bar <= 1.3 at the defaults)")
    if "memory" in parts:
        rows = print_memory(host, args)
        if 256 in rows:
            plain, tiled = rows[256]
            bars.append(f"peak memory of one UNet evaluation at 256 x 256 latent, tiled / untiled: "
                        f"{tiled['peak_bytes'] / plain['peak_bytes']:.1%} (bar <= 30% at the defaults)")
    if "two-stage" in parts:
        ratio = print_two_stage(args)
        bars.append(f"two-stage 2x / direct with the same steps: UNet FLOPs {ratio[2]:.1%}, UNet calls x latent px "
                    f"{ratio[1]:.1%}, time {ratio[3]:.1%} (bar <= 40%)")
    print("\nBars:")
    for line in bars:
        print("  " + line)
    return 0
