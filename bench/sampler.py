"""`bench-sampler`: Sprint's adaptive sampler against every ComfyUI sampler on the exact Gaussian
mixture (shared/docs/evaluation.md), then model calls on an SD1.5-architecture model.

Every sampler runs through ComfyUI (comfy.sample.sample_custom on the GMM model, float32) from the
same noise; errors are RMSE against a fine float64 reference solve to sigma = 0 from the same x_T,
cached on disk (it is the expensive part). Nothing is asserted; everything is printed.
"""
import pathlib
import time

import torch

from ..engines import evaluation, files, gmm as G
from ..nodes import sampler as sampler_node
from . import synthetic
from .host import cache_dir
from .meters import ModelCalls, side_by_side

DETERMINISTIC = ["euler", "heun", "dpm_2", "lms", "dpmpp_2m", "ipndm", "ipndm_v", "deis", "res_multistep",
                 "gradient_estimation", "uni_pc", "uni_pc_bh2"]
TWO_CALLS = {"heun", "dpm_2", "dpmpp_sde"}    # two model calls per step, one on the last (Euler to 0)
STOCHASTIC = ["dpmpp_3m_sde", "dpmpp_2m_sde", "dpmpp_sde", "euler_ancestral"]
SCHEDULES = ["karras", "exponential", "normal", "beta", "ays"]
RTOLS = [0.2, 0.1, 0.05, 0.02, 0.01]
CALLS = [6, 8, 10, 12, 14, 16, 20]
CHUNK = 32                              # rows per cached reference file


def configure(parser):
    """`bench-sampler`: the adaptive sampler vs ComfyUI's samplers on the exact GMM (error vs calls)."""
    parser.add_argument("--seeds", type=int, default=256, help="noise seeds (rows) scored")
    parser.add_argument("--nfe", default="6,8,10,12,16,20", help="model-call budgets for the fixed-step peers")
    parser.add_argument("--schedules", default=",".join(SCHEDULES), help="schedules for the peers")
    parser.add_argument("--samplers", default=",".join(DETERMINISTIC), help="deterministic peers")
    parser.add_argument("--calls", default=",".join(map(str, CALLS)), help="calls sweep of the adaptive sampler (balanced's early stop)")
    parser.add_argument("--budget", type=int, default=20, help="karras steps given to the adaptive sampler")
    parser.add_argument("--dist-samples", type=int, default=512, help="rows for the stochastic samplers' mode frequencies")
    parser.add_argument("--noise-seed", type=int, default=0, help="seed of the evaluation noise (development used others)")
    parser.add_argument("--mixture-seed", type=int, default=0, help="seed of the evaluation mixture")
    parser.add_argument("--ref-steps", type=int, default=evaluation.REFERENCE_STEPS, help="steps of the fine reference")
    parser.add_argument("--batch", type=int, default=64, help="rows per sampling call")
    parser.add_argument("--sd", default="shallow", choices=["tiny", "shallow", "none"],
                        help="SD1.5-architecture model (random weights) for the model-call comparison")
    parser.add_argument("--cache", help="reference cache folder (default: $SPRINT_CACHE/bench, ~/.cache/sprint/bench)")
    parser.add_argument("--quick", action="store_true", help="64 seeds, karras and exponential only")
    parser.add_argument("--toy", action="store_true", help="seconds: a 4x16x16 mixture, 4 seeds, tiny model")
    parser.set_defaults(func=command)


def floats(text):
    return [float(v) for v in text.split(",") if v]


def schedule(model_sampling, name, steps):
    import comfy.samplers
    if name == "ays":       # Align Your Steps (SD1 levels, log-linearly resampled as ComfyUI's node does)
        from comfy_extras.nodes_align_your_steps import NOISE_LEVELS, loglinear_interp
        levels = NOISE_LEVELS["SD1"]
        levels = levels if steps + 1 == len(levels) else loglinear_interp(levels, steps + 1)
        return torch.tensor([*levels[:-1], 0.0], dtype=torch.float32)
    return comfy.samplers.calculate_sigmas(model_sampling, name, steps).cpu()


def reference(mix, x_T, sigma_from, steps, cache, check=True):
    """evaluation.reference_solution to sigma = 0, cached per CHUNK rows under a digest of
    everything it depends on; 2 rows of the first chunk are checked against a 2x finer solve."""
    out = []
    for start in range(0, x_T.shape[0], CHUNK):
        rows = x_T[start:start + CHUNK]
        key = files.digest(rows, mix.means, mix.spectra, mix.log_weights, float(sigma_from), steps, "tapered")
        path = pathlib.Path(cache) / f"gmm-reference-{key}.pt"
        if path.exists():
            out.append(torch.load(path))
            continue
        began = time.perf_counter()
        ref = evaluation.reference_solution(mix.denoise, rows, sigma_from, steps=steps, check=False)
        if start == 0 and check:
            gap = evaluation.check_reference(mix.denoise, rows[:2], ref[:2], sigma_from, steps=steps)
            print(f"  reference check: a 2x finer solve differs by RMSE {gap:.2e} (2 rows)", flush=True)
        files.atomic_save(path, lambda tmp: torch.save(ref, tmp))
        print(f"  reference rows {start}-{start + len(rows) - 1}: {time.perf_counter() - began:.0f} s (cached in {path.parent})", flush=True)
        out.append(ref)
    return torch.cat(out)


class Scored:
    """One sampler setting on the evaluation rows: per-sample error, calls, mode agreement."""

    def __init__(self, name, err, calls, modes, extra=""):
        self.name, self.err, self.modes, self.extra = name, err, modes, extra
        self.calls = torch.as_tensor(calls, dtype=torch.float64)

    @classmethod
    def of(cls, name, out, ref, mix, calls, extra=""):
        return cls(name, evaluation.rmse(out, ref), calls, evaluation.mode_agreement(mix, out.double(), ref), extra)

    def row(self):
        e, c = evaluation.summarize(self.err), evaluation.summarize(self.calls)
        return (f"{self.name:<34} calls {c['mean']:5.2f} p95 {c['p95']:4.1f} max {c['max']:3.0f} | "
                f"RMSE {e['mean']:.3e} p95 {e['p95']:.3e} max {e['max']:.3e} | mode agreement {self.modes:.3f}"
                + (f" | {self.extra}" if self.extra else ""))


class GMMRunner:
    """ComfyUI's sample_custom on the GMM model in row chunks, counting the model's calls."""

    def __init__(self, mix, noise, batch):
        import comfy.sample
        self.sample_custom = comfy.sample.sample_custom
        self.model = synthetic.gmm_model(mix)
        self.cond = synthetic.gmm_conditioning(-1)
        self.noise, self.batch = noise, batch

    def x_T(self, sigmas):
        ms = self.model.get_model_object("model_sampling")
        return ms.noise_scaling(sigmas[0], self.noise, torch.zeros_like(self.noise), True)

    def peer(self, label, name, sigmas, ref, mix, cache, options=None):
        """A ComfyUI sampler scored on the reference rows; scores are cached on disk (the peers do
        not change between runs of this benchmark, only Sprint's sampler does)."""
        import comfy.samplers
        rows = ref.shape[0]
        key = files.digest(name, sorted((options or {}).items()), sigmas, self.noise[:rows], ref, self.batch)
        path = pathlib.Path(cache) / f"peer-{key}.pt"
        if path.exists():
            stats = torch.load(path)
        else:
            sampler = comfy.samplers.ksampler(name, options) if options else comfy.samplers.sampler_object(name)
            out, calls = self(sampler, sigmas, rows)
            s = Scored.of(label, out, ref, mix, [sum(calls) / len(calls)] * rows)
            stats = {"err": s.err, "calls": s.calls, "modes": s.modes}
            files.atomic_save(path, lambda tmp: torch.save(stats, tmp))
        return Scored(label, **stats)

    def __call__(self, sampler, sigmas, rows=None, seed=0):
        """(output, model calls per chunk) for the first `rows` rows."""
        noise = self.noise[:rows]
        outs, calls = [], []
        for chunk in noise.split(self.batch):
            with ModelCalls(self.model.model.diffusion_model) as meter:
                outs.append(self.sample_custom(self.model, chunk, 1.0, sampler, sigmas, self.cond, self.cond,
                                               torch.zeros_like(chunk), disable_pbar=True, seed=seed))
            calls.append(meter.calls)
        return torch.cat(outs), calls


def steps_for(name, nfe):
    return (nfe + 1) // 2 if name in TWO_CALLS else nfe


def command(host, args):
    if args.toy:
        args.seeds, args.nfe, args.schedules, args.calls = 4, "8", "karras", "8,16"
        args.samplers, args.dist_samples, args.ref_steps, args.sd = "euler,ipndm", 8, 200, "tiny"
    elif args.quick:
        args.seeds, args.schedules = 64, "karras,exponential"
    shape = (4, 16, 16) if args.toy else (4, 64, 64)
    cache = args.cache or cache_dir() / "bench"
    import comfy.samplers
    mix = G.GaussianMixture.image_like(shape=shape, seed=args.mixture_seed)
    noise = torch.randn((max(args.seeds, args.dist_samples),) + shape,
                        generator=torch.Generator().manual_seed(args.noise_seed))
    run = GMMRunner(mix, noise, args.batch)
    ms = run.model.get_model_object("model_sampling")
    n = args.seeds
    print(f"exact GMM {'x'.join(map(str, shape))}, K={mix.components}, mixture seed {args.mixture_seed}, "
          f"noise seed {args.noise_seed}, {n} rows, float32 sampling through comfy.sample.sample_custom, "
          f"reference: {args.ref_steps}-step 3M float64 to sigma=0 (tapered log-SNR grid) "
          + ("(toy: unchecked)" if args.toy else "(2x finer check on 2 rows)"), flush=True)
    budget_sigmas = schedule(ms, "karras", args.budget)
    x_T = run.x_T(budget_sigmas)[:n].double()
    began = time.perf_counter()
    ref = reference(mix, x_T, float(budget_sigmas[0]), args.ref_steps, cache, check=not args.toy)
    print(f"reference ready ({time.perf_counter() - began:.0f} s)", flush=True)

    def adaptive(budget, label="sprint", **options):
        info = {}
        out, calls = run(sampler_node.adaptive_sampler("balanced", info=info, **options), budget, n)
        return Scored.of(label, out, ref, mix, info["nfe"],
                         f"batch calls {max(calls)}, est. error {info['est_error'].mean():.2e}")

    # 1. The bar: default options on the 20-step karras budget vs every peer at 12 karras steps.
    print(f"\n== default adaptive sampler (balanced) on a {args.budget}-step karras budget vs peers on 12 karras steps ==")
    ours = adaptive(budget_sigmas, f"sprint balanced ({args.budget}-step budget)")
    print(ours.row())
    peers12 = []
    for name in args.samplers.split(","):
        peers12.append(run.peer(f"{name} karras", name, schedule(ms, "karras", steps_for(name, 12)), ref, mix, cache))
        print(peers12[-1].row(), flush=True)
    best = min(peers12, key=lambda p: p.err.mean().item())
    print(f"best peer at 12 calls: {best.name} RMSE {best.err.mean():.3e} (mode agreement {best.modes:.3f}); "
          f"sprint: {ours.calls.mean():.2f} calls (p95 {ours.calls.quantile(0.95):.0f}), RMSE {ours.err.mean():.3e} "
          f"(mode agreement {ours.modes:.3f}) -> RMSE ratio {ours.err.mean() / best.err.mean():.2f}x")

    # 2. Error vs calls: every deterministic peer on every schedule, dpm_adaptive's rtol sweep.
    print("\n== error vs model calls (RMSE mean / p95 vs the reference) ==")
    curves = {}
    for sched in args.schedules.split(","):
        for name in args.samplers.split(","):
            points = []
            for nfe in sorted(set(int(v) for v in floats(args.nfe))):
                s = run.peer(f"{name} {sched} {steps_for(name, nfe)} steps", name,
                             schedule(ms, sched, steps_for(name, nfe)), ref, mix, cache)
                print(s.row(), flush=True)
                points.append((float(s.calls.mean()), float(s.err.mean())))
            curves[f"{name} {sched}"] = sorted(points)
    points = []
    for rtol in floats(",".join(map(str, RTOLS))) if not args.toy else [0.05]:
        s = run.peer(f"dpm_adaptive rtol {rtol}", "dpm_adaptive", budget_sigmas, ref, mix, cache, {"rtol": rtol})
        print(s.row(), flush=True)
        points.append((float(s.calls.mean()), float(s.err.mean())))
    curves["dpm_adaptive"] = sorted(points)

    # 3. The calls sweep, and where it lies against the best peer at equal calls/error.
    print(f"\n== calls sweep on the {args.budget}-step karras budget ==")
    sweep = []
    for n_calls in sorted(int(v) for v in floats(args.calls)):
        s = adaptive(budget_sigmas, f"sprint {n_calls} calls", calls=n_calls)
        sweep.append((n_calls, s))
        print(s.row(), flush=True)
    errors = [s.err.mean().item() for _, s in sweep]
    print("achieved error falls with the calls:", all(a >= b for a, b in zip(errors, errors[1:])))
    print("\n== sweep vs the best peer frontier (every sampler, every schedule) ==")
    ratios = []
    for tol, s in sweep:
        c, e = s.calls.mean().item(), s.err.mean().item()
        best_at = evaluation.best_at(curves, c)
        line = f"calls {tol:<3} {c:5.2f} used, RMSE {e:.3e}"
        line += (f" | best peer at {c:.1f} calls: {best_at[0]} {best_at[1]:.3e} ({'below' if e < best_at[1] else 'ABOVE'})"
                 if best_at else " | no peer measured at these calls")
        need = evaluation.calls_at_equal_error(curves, c, e)
        print(line + " | " + need.text(), flush=True)
        ratios.append((tol, need.ratio))
        per_schedule = []
        for sched in args.schedules.split(","):
            mine = evaluation.calls_at_equal_error({k: v for k, v in curves.items() if k.endswith(" " + sched)}, c, e)
            if mine.ratio is not None:
                per_schedule.append(f"{sched} {mine.ratio:.2f}x ({mine.peer.split()[0]})")
        print("    per schedule, calls the best peer needs / sprint's:", ", ".join(per_schedule) or "none in range", flush=True)
    measured = [r for _, r in ratios if r is not None]
    print(f"fewer calls than the best peer at equal error (>= 1.0x / >= 1.3x): {sum(r >= 1.0 for r in measured)} / "
          f"{sum(r >= 1.3 for r in measured)} of {len(ratios)} settings"
          + (f", ratios {min(measured):.2f}x to {max(measured):.2f}x" if measured else "")
          + (f"; out of the peers' measured range: calls {', '.join(str(t) for t, r in ratios if r is None)}"
             if len(measured) < len(ratios) else ""), flush=True)

    # 4. A budget shorter than the tolerance wants: every call is spent; error vs the best peer at as many.
    print("\n== a binding budget: sprint balanced on short karras budgets vs the best peer at the same calls ==")
    for nfe in sorted(set(int(v) for v in floats(args.nfe))):
        if nfe >= ours.calls.mean():
            continue
        s = adaptive(schedule(ms, "karras", nfe), f"sprint balanced ({nfe}-step budget)")
        c, e = s.calls.mean().item(), s.err.mean().item()
        best = evaluation.best_at(curves, c)
        print(s.row(), flush=True)
        print(f"    best peer at {c:.0f} calls: {best[0]} {best[1]:.3e} -> sprint's error {e / best[1]:.2f}x of it"
              if best else f"    no peer measured at {c:.2f} calls", flush=True)

    # 5. Distribution: stochastic samplers (and ours) on mode frequencies vs the mixture weights.
    m = args.dist_samples
    print(f"\n== mode frequencies vs pi on {m} rows (total variation; stochastic samplers on distribution only) ==")
    pi = mix.log_weights.exp()
    draws = torch.multinomial(pi.expand(200, -1), m, replacement=True, generator=torch.Generator().manual_seed(0))
    floor = torch.stack([torch.bincount(d, minlength=len(pi)) / m for d in draws]).sub(pi).abs().sum(1).mean() / 2
    print(f"{'exact sampling (multinomial) expected':<34} TV {floor:.4f}")

    def tv(out):
        freq = torch.bincount(mix.responsibilities(out.double(), 0.0).argmax(1), minlength=len(pi)) / out.shape[0]
        return (freq - pi).abs().sum().item() / 2
    for name in STOCHASTIC if not args.toy else STOCHASTIC[:1]:
        out, calls = run(comfy.samplers.ksampler(name), schedule(ms, "karras", steps_for(name, 20)), m, seed=1)
        print(f"{name + ' karras':<34} TV {tv(out):.4f} | calls {calls[0]}", flush=True)
    for label, options in (("sprint balanced", {}), ("sprint balanced eta 1", {"eta": 1.0})):
        info = {}
        out, _ = run(sampler_node.adaptive_sampler("balanced", info=info, **options), budget_sigmas, m, seed=1)
        print(f"{label:<34} TV {tv(out):.4f} | calls {info['nfe'].double().mean():.2f}", flush=True)

    # 6. An SD1.5-architecture UNet (random weights) through the nodes: model calls, side by side.
    if args.sd != "none":
        sd_calls(args.sd, 8 if args.toy else 32)
    return 0


def sd_calls(size, side):
    """SprintKSampler vs KSampler (dpmpp_2m) on the same noise, 20 steps karras, batch 2."""
    import comfy.utils
    import nodes
    comfy.utils.PROGRESS_BAR_ENABLED = False
    model = synthetic.sd15_model(size, seed=0)
    context = synthetic.UNET_SIZES[size][-1]
    pos, neg = synthetic.random_conditioning(context, 0), synthetic.random_conditioning(context, 1)
    latent = {"samples": torch.zeros(2, 4, side, side)}
    print(f"\n== SD1.5-architecture UNet '{size}' (random weights: call counts and timings are real, images are not), "
          f"{side * 8}x{side * 8} px, batch 2, 20 steps karras, cfg 6 ==")
    result = {}
    times = side_by_side({
        "KSampler dpmpp_2m": lambda i: nodes.common_ksampler(model, 1, 20, 6.0, "dpmpp_2m", "karras", pos, neg, latent),
        "SprintKSampler balanced": lambda i: result.update(out=sampler_node.SprintKSampler.execute(
            model, 1, 20, 6.0, "balanced", "karras", pos, neg, latent, 1.0))}, rounds=2)
    print("KSampler dpmpp_2m: 20 model calls per image")
    print("SprintKSampler:", result["out"].ui.value)
    for name, t in times.items():
        print(f"{name}: median {t:.2f} s over 2 runs (A B A B)")
