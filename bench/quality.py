"""`bench-quality`: samplers on the trained development models (bench/dev.py), scored by quality.

Per model (EPS UNet on karras sigmas, flow MMDiT on simple sigmas), seeds x classes rows sampled
through comfy.sample.sample_custom with CFG against the empty prompt, from the same noise:
Sprint's adaptive sampler (balanced and a tolerance sweep, on a --budget-step schedule) and
ComfyUI samplers at fixed step counts. Each is scored against a fine reference solve of the same
guided ODE from the same noise: trajectory RMSE (scaled latents), PSNR/SSIM of the decoded images,
class accuracy of the classifier on them, and the mini-FID (classifier features) against held-out
real images. Nothing is asserted; everything is printed.
"""
import copy
import time

import torch

from ..engines import evaluation, metrics
from ..engines.sampling import sample_dpmpp_multistep
from ..nodes import sampler as sampler_node
from . import dev
from .meters import ModelCalls

SCHEDULE = {"eps": "karras", "flow": "simple"}
CALLS = [6, 8, 10, 12, 16]
TOLS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05]
DETERMINISTIC = ["ipndm", "ipndm_v", "deis", "uni_pc", "uni_pc_bh2", "dpmpp_2m", "res_multistep", "gradient_estimation"]


def configure(parser):
    """`bench-quality`: samplers on the trained dev models: calls, RMSE vs a fine reference, accuracy, mini-FID."""
    parser.add_argument("--models", default="eps,flow", help="which trained models (eps, flow)")
    parser.add_argument("--seeds", type=int, default=64, help="noise seeds per class")
    parser.add_argument("--steps", default="8,12,16", help="step counts of the fixed-step samplers")
    parser.add_argument("--samplers", default=",".join(DETERMINISTIC), help="ComfyUI samplers compared")
    parser.add_argument("--schedules", help="schedules of the compared samplers (default: the model's own; "
                                            "'all': every ComfyUI scheduler)")
    parser.add_argument("--budget", type=int, default=20, help="steps given to the adaptive sampler")
    parser.add_argument("--budget-schedule", help="the adaptive sampler's schedule (default: the model's own)")
    parser.add_argument("--calls", default=",".join(map(str, CALLS)), help="the adaptive sampler's calls sweep "
                        "(on the --budget schedule, and as binding budgets of that many steps)")
    parser.add_argument("--tols", default=",".join(map(str, TOLS)), help="early-stop tolerances calibrated: what "
                        "the calls an image skipped would have changed, with every call of the budget allowed")
    parser.add_argument("--cfg", type=float, default=3.0, help="guidance scale (negative: the empty prompt)")
    parser.add_argument("--ref-steps", type=int, default=800, help="steps of the fine reference (3rd-order multistep; 800 vs 1600 steps agree to ~1e-5 RMSE on both dev models)")
    parser.add_argument("--noise-seed", type=int, default=0, help="seed of the evaluation noise")
    parser.add_argument("--toy", action="store_true", help="seconds: 2 seeds, one sampler at 8 steps, 40-step reference")
    dev.models_option(parser)
    parser.set_defaults(func=command)


def reference_sampler(steps):
    """A KSAMPLER solving the sampled ODE finely from sigmas[0] to the schedule's last noise level
    (evaluation.reference_grid), then jumping to its x0 prediction, as every compared sampler
    does: below the schedule's sigma_min the trained nets were never trained, and solving on to
    SIGMA_FLOOR there left a flow reference unconverged (200 vs 400 steps: RMSE 1.07e-2)."""
    import comfy.samplers

    def fn(model, x, sigmas, extra_args=None, callback=None, disable=None):
        last = float(sigmas[sigmas > 0][-1])
        grid = torch.cat([evaluation.reference_grid(float(sigmas[0]), last, steps), torch.zeros(1, dtype=torch.float64)])
        return sample_dpmpp_multistep(model, x, grid.to(x.dtype), extra_args)
    return comfy.samplers.KSAMPLER(fn)


class Setup:
    """One trained model with its prompts, codec, classifier and the evaluation noise."""

    def __init__(self, kind, seeds, cfg, noise_seed, folder=None):
        import comfy.sample
        self.kind, self.cfg = kind, cfg
        self.sample_custom = comfy.sample.sample_custom
        self.model = dev.model_patcher(kind, folder)
        self.latent_format = self.model.model.latent_format
        self.codec = dev.BlockDCT(dev.BLOCK[kind], dev.metadata(kind, folder)["gain"])
        self.classifier = dev.classifier(folder)
        table = dev.prompts(folder)
        self.labels = torch.arange(len(dev.CLASSES)).repeat_interleave(seeds)
        context = torch.cat([table[c][0] for c in dev.CLASSES]).repeat_interleave(seeds, 0)
        pooled = torch.cat([table[c][1] for c in dev.CLASSES]).repeat_interleave(seeds, 0)
        empty = table[""]
        rows = len(self.labels)
        self.positive = [[context, {"pooled_output": pooled}]]
        self.negative = [[empty[0].expand(rows, -1, -1).clone(), {"pooled_output": empty[1].expand(rows, -1).clone()}]]
        side = dev.SIZE // dev.BLOCK[kind]
        self.noise = torch.randn(rows, dev.BLOCK[kind] ** 2, side, side, generator=torch.Generator().manual_seed(noise_seed))
        ms = self.model.get_model_object("model_sampling")
        import comfy.samplers
        self.sigmas = lambda steps, schedule=SCHEDULE[kind]: comfy.samplers.calculate_sigmas(ms, schedule, steps).cpu()

    def subset(self, rows, model=None, cfg=None):
        """The same setup on some rows only (and, if given, another MODEL, e.g. a patched one, or cfg)."""
        part = copy.copy(self)
        part.labels, part.noise = self.labels[rows], self.noise[rows]
        part.positive, part.negative = ([[c[0][rows], {"pooled_output": c[1]["pooled_output"][rows]}] for c in conds]
                                        for conds in (self.positive, self.negative))
        part.model, part.cfg = model or self.model, self.cfg if cfg is None else cfg
        return part

    def __call__(self, sampler, steps, schedule=None):
        """(scaled latents, model calls) of one sampler on the evaluation rows."""
        sigmas = self.sigmas(steps, schedule or SCHEDULE[self.kind])
        with ModelCalls(self.model.model.diffusion_model) as meter, torch.inference_mode():   # as the executor
            out = self.sample_custom(self.model, self.noise, self.cfg, sampler, sigmas, self.positive,
                                     self.negative, torch.zeros_like(self.noise), disable_pbar=True, seed=0)
        return self.latent_format.process_in(out), meter.calls

    def images(self, latents):
        """Decoded gray images in [-1, 1] (the classifier's input)."""
        return self.codec.decode(self.latent_format.process_out(latents))[:, :1].clamp(-1, 1)

    def scores(self, latents, ref, ref_images, real_features):
        images = self.images(latents)
        with torch.no_grad():
            logits, features = self.classifier(images), self.classifier.features(images)
        return {"rmse": evaluation.rmse(latents, ref).mean().item(),
                "psnr": metrics.psnr((images + 1) / 2, (ref_images + 1) / 2).mean().item(),
                "ssim": metrics.ssim((images + 1) / 2, (ref_images + 1) / 2).mean().item(),
                "acc": metrics.class_accuracy(logits, self.labels),
                "fid": metrics.feature_frechet(features, real_features)}


def index_metrics(classifier, gray, labels, real_features):
    """(mini-FID, accuracy) of gray images [N, 1, H, W], each a function of row indices (for
    metrics.bootstrap_std: the seed-to-seed noise)."""
    with torch.no_grad():
        features, logits = classifier.features(gray), classifier(gray)
    return (lambda i: metrics.feature_frechet(features[i], real_features),
            lambda i: metrics.class_accuracy(logits[i], labels[i]))


def line(name, calls, s):
    return (f"{name:<30} calls {calls:5.2f} | RMSE {s['rmse']:.3e} | PSNR {s['psnr']:5.1f} dB SSIM {s['ssim']:.4f} | "
            f"accuracy {s['acc']:.3f} | mini-FID {s['fid']:.4f}")


def command(host, args):
    torch.set_num_threads(1)       # on a busy CPU one thread beats two by far for these tiny models
    if args.toy:
        args.seeds, args.steps, args.samplers, args.calls, args.ref_steps = 2, "8", "ipndm", "8", 40
    folder = dev.models_folder(args.dev_models)
    classifier = dev.classifier(folder)
    real, _ = dev.dataset("heldout", 256)
    train, _ = dev.dataset("train", 256)
    with torch.no_grad():
        real_features = classifier.features(real)
        floor = metrics.feature_frechet(classifier.features(train), real_features)
    print(f"trained dev models ({folder}), {len(dev.CLASSES)} classes {dev.CLASSES} x {args.seeds} seeds, "
          f"cfg {args.cfg} vs the empty prompt; mini-FID against {len(real)} held-out real images "
          f"(train vs held-out real: {floor:.4f})", flush=True)
    for kind in args.models.split(","):
        run = Setup(kind, args.seeds, args.cfg, args.noise_seed, folder)
        own = args.budget_schedule or SCHEDULE[kind]    # Sprint's schedule
        print(f"\n== {kind} ({type(run.model.model).__name__}; Sprint on the {own} schedule, the reference on "
              f"{SCHEDULE[kind]}) ==", flush=True)
        began = time.perf_counter()
        ref, _ = run(reference_sampler(args.ref_steps), args.budget)
        rows = slice(0, min(8, len(ref)))
        check, _ = run.subset(rows)(reference_sampler(2 * args.ref_steps), args.budget)
        gap = evaluation.rmse(check, ref[rows]).max().item()
        ref_images = run.images(ref)
        print(f"reference: {args.ref_steps}-step 3rd-order multistep to the last sigma, then its x0 ({time.perf_counter() - began:.0f} s); "
              f"a {2 * args.ref_steps}-step solve differs by RMSE {gap:.2e} (max of {rows.stop} rows)", flush=True)
        print(line("reference", args.ref_steps, run.scores(ref, ref, ref_images, real_features)), flush=True)
        import comfy.samplers
        schedules = (comfy.samplers.SCHEDULER_NAMES if args.schedules == "all"
                     else (args.schedules or SCHEDULE[kind]).split(","))
        curves = {}                                     # "sampler schedule" -> sorted (calls, RMSE)
        for schedule in schedules:
            for name in args.samplers.split(","):
                for steps in [int(s) for s in args.steps.split(",")]:
                    out, calls = run(comfy.samplers.sampler_object(name), steps, schedule)
                    s = run.scores(out, ref, ref_images, real_features)
                    curves.setdefault(f"{name} {schedule}", []).append((calls, s["rmse"]))
                    print(line(f"{name} {schedule} {steps} steps", calls, s), flush=True)
        curves = {k: sorted(v) for k, v in curves.items()}
        on_own = {k: v for k, v in curves.items() if k.endswith(" " + own)}
        print("best peer per calls: " + "; ".join(f"{c:g}: {e:.3e} ({n})" for c, (n, e) in (
            (c, evaluation.best_at(curves, c)) for c in sorted({c for p in curves.values() for c, _ in p}))), flush=True)
        sweeps = [(f"sprint {p} ({args.budget}-step budget)", p, {}, args.budget) for p in sampler_node.PRESETS]
        sweeps += [(f"sprint {c} calls ({args.budget}-step budget)", "balanced", {"calls": c}, args.budget)
                   for c in map(int, args.calls.split(","))]
        sweeps += [(f"sprint balanced, {c}-step budget", "balanced", {}, c) for c in map(int, args.calls.split(","))]
        for label, preset, options, budget in sweeps:
            info = {}
            out, _ = run(sampler_node.adaptive_sampler(preset, info=info, **options), budget, args.budget_schedule)
            calls = info["nfe"].double().mean().item()
            s = run.scores(out, ref, ref_images, real_features)
            versus = ""
            for peers, where in ((curves, ""), (on_own, f" on {own}")):
                peer = evaluation.best_at(peers, calls)          # interpolated at fractional calls
                if peer and (where or peer[0].split()[-1] != own):   # one column where both are the same peer
                    versus += f" | best peer{where} at {calls:.2f} calls {peer[1]:.3e} ({peer[0]}): {peer[1] / s['rmse']:.2f}x"
            print(line(label, calls, s) + versus + " | " + evaluation.calls_at_equal_error(curves, calls, s["rmse"]).text(),
                  flush=True)
        calibrate(run, args, ref, curves)
    return 0


def calibrate(run, args, ref, curves):
    """The early stop's promise: an image stops once the calls it has left could change it by less
    than tol. Per tolerance, the budget's every call allowed, the stopped images' RMSE to their own
    run without the early stop (what the skipped calls would have changed) and how much finishing
    would have lowered their error against the reference, both against tol, and the calls the best
    peer (`curves`) needs for the same error against the calls spent."""
    def solve(tol):
        info = {}
        out, _ = run(sampler_node.adaptive_sampler("balanced", calls=args.budget, tol=tol, info=info), args.budget,
                     args.budget_schedule)
        return out, info["nfe"]
    full, full_nfe = solve(0.0)
    print(f"early stop, {args.budget} calls allowed: tol 0 (no stop) {full_nfe.double().mean():.2f} calls, "
          f"RMSE vs reference {evaluation.rmse(full, ref).mean().item():.3e}", flush=True)
    errors = []
    for tol in sorted(map(float, args.tols.split(","))):
        out, nfe = solve(tol)
        stopped = nfe < full_nfe
        calls, error = nfe.double().mean().item(), evaluation.rmse(out, ref).mean().item()
        errors.append(error)
        head = f"tol {tol:<6g} {calls:5.2f} calls, {stopped.double().mean():4.0%} stopped early"
        if stopped.any():
            skipped = evaluation.rmse(out[stopped], full[stopped]).double()
            cut = (evaluation.rmse(out[stopped], ref[stopped]) - evaluation.rmse(full[stopped], ref[stopped])).max()
            head += (f"; what their skipped calls would change: median {skipped.median():.2e} "
                     f"({skipped.median() / tol:.2f} tol), max {skipped.max():.2e} ({skipped.max() / tol:.2f} tol), "
                     f"cut from the error at most {cut:.2e} ({cut / tol:.2f} tol)")
        print(f"{head}; RMSE vs reference {error:.3e} | {evaluation.calls_at_equal_error(curves, calls, error).text()}",
              flush=True)
    print("achieved error grows with the tolerance:", all(a <= b for a, b in zip(errors, errors[1:])), flush=True)
