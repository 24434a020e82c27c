"""`bench-cfg`: what each dynamic CFG schedule saves and costs, measured through ComfyUI.

1. The class-labelled exact Gaussian mixture (shared/docs/evaluation.md): cond = one class, uncond =
   the whole mixture. Per schedule and sampler: UNet evaluations counted at apply_model, RMSE against
   the exact ODE of the schedule's own guided denoiser D_u + w(sigma) (D_c - D_u) and against the
   plain-CFG ODE, class fidelity and within-class spread (of the samples and of the exact ODE).
2. The tiny SD1.5-architecture UNet through KSampler: real UNet calls per schedule (txt2img and
   img2img), output difference against plain CFG, and a side-by-side wall-time ratio.
3. `--trained`: the trained dev models (bench/dev.py: EPS UNet on karras sigmas, flow MMDiT on simple
   sigmas): per schedule, UNet evaluations per image, class accuracy and mini-FID of the guided
   samples (with their bootstrap noise), and RMSE against plain CFG's samples from the same noise.
"""
import math
import time

import torch

from ..engines import evaluation, guidance
from ..engines.gmm import GaussianMixture
from ..nodes import dynamic_cfg
from . import dev, meters, synthetic
from .meters import ModelCalls, side_by_side


def schedules():
    """Benchmarked schedules: name -> SprintDynamicCFG settings (None = unpatched, plain CFG)."""
    defaults = {i.id: i.default for i in dynamic_cfg.SprintDynamicCFG.define_schema().inputs if i.id != "model"}
    return {
        "plain CFG": None,
        "constant": dict(defaults, schedule="constant"),
        "interval (default)": defaults,
        "phases 0/1/1": dict(defaults, schedule="phases"),
        "linear 0->1": dict(defaults, schedule="linear"),
        "cosine 0->1": dict(defaults, schedule="cosine"),
    }


def patched(model, settings):
    return model if settings is None else dynamic_cfg.patch(model, **settings)


def sample_gmm(model, sampler, sigmas, noise, positive, negative, cfg):
    """comfy.sample.sample_custom from pure noise; returns (x at sigmas[0], sample)."""
    import comfy.sample
    import comfy.samplers
    start = {}
    out = comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.ksampler(sampler), sigmas, positive, negative,
                                     torch.zeros_like(noise), callback=lambda i, x0, x, n: start.setdefault("x", x.clone()),
                                     disable_pbar=True, seed=0)
    return start["x"], out


def class_fidelity(mixture, x, label):
    """Fraction of samples whose final component (argmax posterior at sigma 0) belongs to `label`."""
    return (mixture.labels[mixture.responsibilities(x, 0.0).argmax(1)] == label).double().mean().item()


def spread(mixture, x):
    """Mean of |x - mu_k|^2 / tr(Sigma_k) for each sample's component k: 1 = the data's own spread,
    below 1 = samples pulled together (over-guidance), above 1 = pushed out."""
    k = mixture.responsibilities(x, 0.0).argmax(1)
    dist = (x.double() - mixture.means[k]).pow(2).flatten(1).sum(1)
    trace = (mixture.spectra * mixture.mult).flatten(1).sum(1)[k]
    return (dist / trace).mean().item()


def guided_reference(memo, mixture, schedule, cfg, label, x_T, sigma_from):
    """The exact solution at sigma 0 of the schedule's guided ODE, piece by piece between the
    schedule's window ends; a piece on which two schedules (from the same start) have the same scale
    is solved once."""
    x, key = x_T, ()
    for sigma_to in (schedule.sigma_high, schedule.sigma_low, 0.0):
        probe = torch.logspace(math.log10(max(sigma_to, 1e-5)), math.log10(sigma_from), 67)[1:-1].tolist()
        key += ((sigma_to, tuple(schedule.scale(cfg, v) for v in probe)),)
        if key not in memo:
            denoise = guidance.guided_denoiser(mixture.denoise, schedule, cfg, label, -1)
            memo[key] = evaluation.piecewise_reference(denoise, x, sigma_from, sigma_to)
        x, sigma_from = memo[key], sigma_to
    return x


def bench_gmm(args, offset):
    import comfy.samplers
    mixture = GaussianMixture.image_like(shape=args.shape, components=args.components, classes=args.classes,
                                         offset=offset, seed=args.mixture_seed)
    label = args.label
    noise = torch.randn((args.batch,) + args.shape, generator=torch.Generator().manual_seed(args.noise_seed))
    base = synthetic.gmm_model(mixture, "eps")
    model_sampling = base.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, args.scheduler, args.steps)
    positive, negative = synthetic.gmm_conditioning(label), synthetic.gmm_conditioning(-1)
    print(f"\n## Exact GMM {args.shape}, {args.components} components in {args.classes} classes, offset {offset} "
          f"(mixture seed {args.mixture_seed}), cond = class {label}, uncond = all; {args.batch} samples "
          f"(noise seed {args.noise_seed}); {args.steps} {args.scheduler} steps")
    for cfg in args.cfg:
        memo, plain_schedule, start = {}, guidance.GuidanceSchedule("constant"), time.perf_counter()
        print(f"\n### cfg {cfg}")
        print(f"{'schedule':<20} {'evals':>6} {'saved':>6} {'exact fid':>9} {'spread':>6} | "
              + " | ".join(f"{s + ' err mean/max':>24} {'vs plain':>8} {'fid':>5} {'spread':>6}" for s in args.samplers))
        for name, settings in schedules().items():
            schedule = plain_schedule if settings is None else dynamic_cfg.resolve_schedule(settings, model_sampling)
            model = patched(base, settings)
            results = []
            for sampler in args.samplers:
                with ModelCalls(base.model.diffusion_model) as calls:
                    x_T, x = sample_gmm(model, sampler, sigmas, noise, positive, negative, cfg)
                results.append((x, calls.rows / args.batch))
            exact, plain = (guided_reference(memo, mixture, s, cfg, label, x_T, float(sigmas[0]))
                            for s in (schedule, plain_schedule))
            evals = results[0][1]
            cells = []
            for x, _ in results:
                err = evaluation.summarize(evaluation.rmse(x, exact))
                cells.append(f"{err['mean']:>11.4f}/{err['max']:<12.4f} {evaluation.rmse(x, plain).mean().item():>8.4f} "
                             f"{class_fidelity(mixture, x, label):>5.2f} {spread(mixture, x):>6.3f}")
            print(f"{name:<20} {evals:>6.1f} {1 - evals / (2 * args.steps):>6.1%} "
                  f"{class_fidelity(mixture, exact, label):>9.2f} {spread(mixture, exact):>6.3f} | " + " | ".join(cells))
        print(f"({time.perf_counter() - start:.0f} s, exact references included)")


def bench_trained(args):
    import comfy.samplers
    from ..engines import metrics
    from .quality import SCHEDULE, Setup, index_metrics
    torch.set_num_threads(1)       # tiny models: one thread beats two on a busy CPU
    real, _ = dev.dataset("heldout", 256)
    classifier = dev.classifier()
    real_features = classifier.features(real)
    sampler = args.samplers[-1]
    for kind, cfg in ((kind, cfg) for kind in ("eps", "flow") for cfg in args.cfg):
        run = Setup(kind, args.trained_seeds, cfg, args.noise_seed)
        rows = len(run.labels)
        print(f"\n## trained dev {kind.upper()} model ({type(run.model.model).__name__}), {sampler} {SCHEDULE[kind]} "
              f"{args.steps} steps, cfg {cfg} vs the empty prompt, {rows} images ({len(dev.CLASSES)} classes); "
              f"mini-FID vs {len(real)} held-out real images; ± bootstrap std over the images")
        print(f"{'schedule':<20} {'window (sigma)':>15} {'evals':>6} {'saved':>6} {'accuracy':>15} {'mini-FID':>17} "
              f"{'RMSE vs plain':>13}")
        plain = None
        for name, settings in schedules().items():
            window = ""
            if settings is not None:
                schedule = dynamic_cfg.resolve_schedule(settings, run.model.get_model_object("model_sampling"))
                window = f"({schedule.sigma_low:.3g}, {schedule.sigma_high:.3g}]"
            unet = run.model.model.diffusion_model
            with ModelCalls(unet) as calls:
                out, _ = run.subset(slice(None), model=patched(run.model, settings))(comfy.samplers.sampler_object(sampler),
                                                                                 args.steps)
            fid_of, acc_of = index_metrics(classifier, run.images(out), run.labels, real_features)
            every = torch.arange(rows)
            acc, acc_noise = acc_of(every), metrics.bootstrap_std(acc_of, rows)
            fid, fid_noise = fid_of(every), metrics.bootstrap_std(fid_of, rows, draws=50)
            plain = out if plain is None else plain
            evals = calls.rows / rows
            print(f"{name:<20} {window:>15} {evals:>6.1f} {1 - evals / (2 * args.steps):>6.1%} {acc:>7.3f} ± {acc_noise:.3f} "
                  f"{fid:>8.4f} ± {fid_noise:.4f} {evaluation.rmse(out, plain).mean().item():>13.4f}", flush=True)


def bench_unet(args):
    import nodes
    model, clip = synthetic.sd15_model(args.unet, seed=0), synthetic.sd15_clip(tiny=args.unet == "tiny", seed=0)
    positive = nodes.CLIPTextEncode().encode(clip, "a lighthouse on a cliff at sunset")[0]
    negative = nodes.CLIPTextEncode().encode(clip, "blurry, low quality")[0]
    latent = nodes.EmptyLatentImage().generate(args.size, args.size, 1)[0]
    cfg = args.cfg[-1]

    def ksampler(m, denoise=1.0):
        return nodes.KSampler().sample(m, 1, args.steps, cfg, args.samplers[-1], args.scheduler, positive, negative,
                                       latent, denoise=denoise)[0]["samples"]

    print(f"\n## {args.unet} SD1.5-architecture UNet (random weights), KSampler {args.samplers[-1]} {args.scheduler} "
          f"{args.steps} steps, cfg {cfg}, {args.size}x{args.size} px, {meters.device_name(model.load_device)} "
          f"{model.model.get_dtype()}")
    print(f"{'schedule':<20} {'denoise':>7} {'UNet calls':>10} {'evals':>6} {'saved':>6} {'max|x - plain|':>15}")
    plain = {}
    for denoise in (1.0, 0.5):
        for name, settings in schedules().items():
            unet = model.model.diffusion_model
            with ModelCalls(unet, at=unet.out) as calls:     # counts evaluations that compute (not cache hits)
                out = ksampler(patched(model, settings), denoise)
            evals = calls.rows
            plain.setdefault(denoise, (out, evals))
            diff = (out - plain[denoise][0]).abs().max().item()
            print(f"{name:<20} {denoise:>7} {calls.calls:>10} {evals:>6} {1 - evals / plain[denoise][1]:>6.1%} {diff:>15.3g}")

    if args.repeat:
        fast = patched(model, schedules()["interval (default)"])
        t = side_by_side({"plain CFG": lambda i: ksampler(model), "interval": lambda i: ksampler(fast)}, args.repeat,
                         warmup=True)
        a, b = t["plain CFG"], t["interval"]
        print(f"wall time, median of {args.repeat} side-by-side runs on {model.load_device}: plain {a:.3f} s, "
              f"interval {b:.3f} s, ratio {a / b:.2f}x, time saved {1 - b / a:.1%} (a batch-2 UNet call costs less than two batch-1 calls, so "
              f"the time saved is below the evaluations saved)")


def configure(parser):
    """`bench-cfg`: dynamic CFG schedules vs plain CFG: UNet evaluations, exact-ODE error, class fidelity."""
    floats = lambda s: [float(v) for v in s.split(",")]  # noqa: E731
    parser.add_argument("--cfg", type=floats, default=[3.0, 7.0], help="guidance scales, comma-separated (default 3,7)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    parser.add_argument("--scheduler", default="karras", help="ComfyUI scheduler (default karras)")
    parser.add_argument("--samplers", type=lambda s: s.split(","), default=["euler", "dpmpp_2m"],
                        help="ComfyUI samplers, comma-separated (default euler,dpmpp_2m; the last one runs the UNet part)")
    parser.add_argument("--batch", type=int, default=16, help="GMM samples per schedule (default 16)")
    parser.add_argument("--offsets", type=floats, default=[0.6, 0.1],
                        help="GMM component offsets, one tier each (default 0.6,0.1: early and late class commitment)")
    parser.add_argument("--components", type=int, default=8, help="GMM components (default 8)")
    parser.add_argument("--classes", type=int, default=4, help="GMM classes (default 4)")
    parser.add_argument("--label", type=int, default=1, help="the conditional class (default 1)")
    parser.add_argument("--mixture-seed", type=int, default=1, help="evaluation mixture seed (default 1)")
    parser.add_argument("--noise-seed", type=int, default=1, help="evaluation noise seed (default 1)")
    parser.add_argument("--shape", type=lambda s: tuple(int(v) for v in s.split(",")), default=(4, 32, 32),
                        help="GMM latent shape C,H,W (default 4,32,32: SD1.5 at 256 px; 4,64,64 is 512 px, ~10x slower)")
    parser.add_argument("--unet", choices=["tiny", "shallow"], default="tiny", help="UNet for the ComfyUI part (default tiny)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels for the UNet part (default 64)")
    parser.add_argument("--repeat", type=int, default=3, help="side-by-side timed runs for the UNet part (0 = none)")
    parser.add_argument("--skip-gmm", action="store_true", help="only the UNet part")
    parser.add_argument("--trained", action="store_true", help="only the trained dev models (EPS and flow): accuracy, "
                                                                "mini-FID and evaluations per schedule")
    parser.add_argument("--trained-seeds", type=int, default=64, help="--trained: seeds per class (default 64)")
    parser.set_defaults(func=command)


def command(host, args):
    torch.set_grad_enabled(False)
    import comfy.model_management as mm
    print(f"bench-cfg on ComfyUI {host.comfy_path}, torch {torch.__version__}, {meters.device_name(mm.get_torch_device())}")
    if args.trained:
        bench_trained(args)
        return 0
    bench_unet(args)
    if not args.skip_gmm:
        print("\nerr: RMSE vs the exact ODE of the schedule's own guided denoiser D_u + w(sigma)(D_c - D_u) (mean/max); "
              "vs plain: RMSE vs the plain-CFG ODE; fid: class fidelity; spread: within-class |x-mu|^2/tr(Sigma) "
              "(1 = the data's); exact: of the schedule's exact ODE solution")
    for offset in [] if args.skip_gmm else args.offsets:
        bench_gmm(args, offset)
    return 0
