"""`bench`, the README's main job: ComfyUI's stock txt2img vs Sprint fast vs Sprint quality.

Default: on the trained dev EPS model (bench/dev.py; `--model flow`: the dev MMDiT), in minutes on
a CPU. The pipelines are the shipped graphs' sampling and guidance run through their own nodes,
in-process on dev.model_patcher (the 32-channel dev UNet does not load through
CheckpointLoaderSimple): stock = the stock graph's KSampler (euler/normal, 20 steps); fast and
quality = example_workflows/api/sprint_*.json's SprintDynamicCFG and SprintKSampler settings
(preset, steps, scheduler), each with its graph's cfg (8 in all three, which suits the dev model
too; --cfg overrides), the same prompts (every class against the empty prompt) and the same noise;
all decode through VAEDecode with the dev codec. Where fast rescales its CFG, stock+rcfg (the stock
graph with ComfyUI's RescaleCFG at that multiplier) runs too: the like-for-like baseline. Left out, and said so: quality's 2x two-stage upscale (the
dev model knows one size) and fast's light VAE (the codec is already exact and instant).

Per pipeline: end-to-end wall time (patch + sample + decode of the whole batch; rounds A B C A B C
..., each with a new seed; medians), UNet calls and evaluated rows, and quality: mini-FID of the
images of all rounds against held-out real images, class accuracy, both with their bootstrap
noise over the seeds, and RMSE against a fine solve of the pipeline's own guided ODE from round 1's
noise (a subset of rows). `--full`: the full-size measurement (bench/main_job_full.py).
"""
import statistics
import time

import torch

from ..engines import evaluation, metrics
from . import dev, main_job_full
from .main_job_full import PIPELINES, SAMPLERS, graph
from .meters import ModelCalls, device_name, timed
from .quality import Setup, index_metrics, reference_sampler

FULL_ONLY = ("arch", "ckpt", "light_decoder", "size")
RESCALED = "stock+rcfg"     # the stock graph with ComfyUI's RescaleCFG at the fast graph's rescale: like for like
NOISE_SIGMAS = 2            # a difference counts as worse when it exceeds this many bootstrap stds


def configure(parser):
    """`bench`: stock txt2img vs Sprint fast vs Sprint quality, side by side (trained dev model; --full: SD1.5 or SDXL size)."""
    parser.add_argument("--full", action="store_true", help="the full-size measurement: an SD1.5- or SDXL-architecture "
                        "(--arch) checkpoint (default: random weights, written once) through the real executor")
    parser.add_argument("--arch", choices=("sd15", "sdxl"), help="--full: the architecture of the random-weight "
                        "checkpoint and light decoder (default sd15, 2.1 GB; sdxl: 6.9 GB, 1024 px)")
    parser.add_argument("--ckpt", help="--full: checkpoint file (default: a full --arch model with random "
                                       "weights, written once and said so)")
    parser.add_argument("--light-decoder", help="--full: the light decoder file of --arch (taesd / taesdxl) for the "
                        "fast workflow's light VAE (default: random weights, same architecture)")
    parser.add_argument("--size", type=int, help="--full: image side in pixels (default 256, sdxl 1024; quality "
                                                 "upscales it 2x)")
    parser.add_argument("--steps", type=int, help="override every pipeline's steps (default: stock 20, the workflows "
                                                  "as shipped)")
    parser.add_argument("--repeat", type=int, help="timed rounds, each with new seeds (default 5; --full: 3, after one "
                                                   "untimed warm-up round)")
    parser.add_argument("--ref-steps", type=int, help="steps of the fine reference solves (default: 100 of a "
                                                      "3rd-order multistep; --full: 60 of dpmpp_2m)")
    parser.add_argument("--pipelines", default=",".join(PIPELINES), help="which of stock,fast,quality to run")
    parser.add_argument("--model", choices=tuple(dev.BLOCK), default="eps", help="trained dev model (default eps)")
    parser.add_argument("--seeds", type=int, default=32, help="seeds per class and round (a batch of seeds x 4 classes)")
    parser.add_argument("--ref-seeds", type=int, default=8, help="seeds per class of round 1 solved finely for RMSE")
    parser.add_argument("--cfg", type=float, help="guidance scale of every pipeline (default: each graph's own, 8)")
    dev.models_option(parser)
    parser.set_defaults(func=command)


def command(host, args):
    if args.full:
        args.arch, args.repeat = args.arch or "sd15", args.repeat or 3
        args.size, args.ref_steps = args.size or (1024 if args.arch == "sdxl" else 256), args.ref_steps or 60
        if args.dev_models:
            raise SystemExit("--dev-models: not with --full (it samples a full-size checkpoint)")
        return main_job_full.command(host, args)
    if given := [f"--{a.replace('_', '-')}" for a in FULL_ONLY if getattr(args, a) is not None]:
        raise SystemExit(f"{', '.join(given)}: only with --full (the default runs the trained dev model)")
    args.ref_steps, args.repeat = args.ref_steps or 100, args.repeat or 5
    return DevBench(host, args).run()


class Pipeline:
    """One pipeline's sampling and guidance as its graph ships them: (ModelSamplingAuraFlow shift or
    None, dynamic CFG settings or None, sampler node type, its widget inputs), and the dev model
    family the graph samples (`kind`: "flow" where its latent or model sampling is a flow one's).
    `rescale`: ComfyUI's RescaleCFG node on top, at that multiplier (RESCALED)."""

    def __init__(self, name, steps=None, cfg=None, rescale=None):
        inputs = {node["class_type"]: {k: v for k, v in node["inputs"].items() if not isinstance(v, list)}
                  for node in graph(name).values()}
        self.guidance, self.rescale = inputs.get("SprintDynamicCFG"), rescale
        self.shift = inputs.get("ModelSamplingAuraFlow", {}).get("shift")
        self.kind = "flow" if {"ModelSamplingAuraFlow", "EmptySD3LatentImage"} & inputs.keys() else "eps"
        self.sampler = next(t for t in SAMPLERS if t in inputs)
        self.inputs = dict(inputs[self.sampler], **({"steps": steps} if steps else {}), **({"cfg": cfg} if cfg is not None else {}))
        self.upscaled = "SprintTwoStageUpscale" in inputs

    def describe(self):
        s = self.inputs
        how = (f"{s['sampler_name']}/{s['scheduler']}" if self.sampler == "KSampler" else f"{s['preset']} preset, {s['scheduler']}")
        g = self.guidance
        cfg_text = ("plain CFG" if not g else "SprintDynamicCFG constant" if g["schedule"] == "constant" else
                    f"SprintDynamicCFG {g['schedule']} ({g['sigma_low']:g}, {g['sigma_high']:g}]")
        shift = f"ModelSamplingAuraFlow shift {self.shift:g}, " if self.shift is not None else ""
        if g and g["rescale"]:
            cfg_text += f", CFG rescale {g['rescale']:g}"
        rescale = f" + ComfyUI RescaleCFG {self.rescale:g}" if self.rescale else ""
        return f"{shift}{self.sampler} {how}, {s['steps']} steps, cfg {s['cfg']:g}, {cfg_text}{rescale}"

    @property
    def ode(self):
        """What fixes the guided ODE the pipeline solves: pipelines alike share one fine reference."""
        return repr((self.guidance, self.inputs["cfg"], self.rescale))

    def model(self, model):
        """The MODEL the sampler gets: the graph's ModelSamplingAuraFlow shift and SprintDynamicCFG,
        if it has them. The shift goes through the node's own patch with the model's own timestep
        multiplier: the node's 1.0 is the convention of the models it is made for (AuraFlow,
        Qwen-Image: their own multiplier too), the dev MMDiT keeps SD3's 1000."""
        from ..nodes.dynamic_cfg import SprintDynamicCFG
        if self.shift is not None:
            from comfy_extras.nodes_model_advanced import ModelSamplingAuraFlow
            multiplier = model.get_model_object("model_sampling").multiplier
            model = ModelSamplingAuraFlow().patch(model, self.shift, multiplier=multiplier)[0]
        if self.rescale:
            from comfy_extras.nodes_model_advanced import RescaleCFG
            model = RescaleCFG().patch(model, self.rescale)[0]
        return SprintDynamicCFG.execute(model, **self.guidance).args[0] if self.guidance else model

    def __call__(self, model, positive, negative, latent, seed, vae):
        """(LATENT samples, IMAGE) end to end through the nodes, as the executor would run them."""
        import nodes
        from ..nodes.sampler import SprintKSampler
        inputs = dict(self.inputs, seed=seed)
        with torch.inference_mode():
            patched = self.model(model)
            if self.sampler == "KSampler":
                samples = nodes.KSampler().sample(patched, positive=positive, negative=negative, latent_image=latent,
                                                  **inputs)[0]
            else:
                samples = SprintKSampler.execute(patched, positive=positive, negative=negative, latent_image=latent,
                                                 **inputs).args[0]
            return samples["samples"], nodes.VAEDecode().decode(vae, samples)[0]


class DevBench:
    """The default main job: stock vs fast vs quality on a trained dev model."""

    def __init__(self, host, args):
        import comfy.utils
        comfy.utils.PROGRESS_BAR_ENABLED = False          # one progress line per pipeline instead
        self.host, self.args = host, args
        self.names = [n for n in args.pipelines.split(",") if n]
        if unknown := set(self.names) - set(PIPELINES):
            raise SystemExit(f"unknown pipelines {sorted(unknown)}; choose from {', '.join(PIPELINES)}")
        self.pipelines = {n: Pipeline(n, args.steps, args.cfg) for n in self.names}
        rescale = (self.pipelines["fast"].guidance or {}).get("rescale") if "fast" in self.pipelines else None
        if rescale and "stock" in self.pipelines:     # fast's CFG rescale would help stock too: compare like for like
            self.pipelines[RESCALED] = Pipeline("stock", args.steps, args.cfg, rescale=rescale)
            self.names.insert(self.names.index("stock") + 1, RESCALED)
        self.folder = dev.models_folder(args.dev_models)
        self.setup = Setup(args.model, args.seeds, None, 0, self.folder)    # cfg: each pipeline's own
        self.vae = dev.comfy_vae(args.model, dev.metadata(args.model, self.folder)["gain"])
        self.rows = len(self.setup.labels)
        self.latent = {"samples": torch.zeros_like(self.setup.noise)}
        self.seconds_per_row, self.rows_done = 0.0, 0

    def progress(self, done_rows, left_rows, seconds):
        """Seconds left, from the seconds per evaluated row so far."""
        self.seconds_per_row = (self.seconds_per_row * self.rows_done + seconds) / (self.rows_done + done_rows)
        self.rows_done += done_rows
        return self.seconds_per_row * left_rows

    def run(self):
        args, setup, began = self.args, self.setup, time.perf_counter()
        model = setup.model
        device = model.load_device
        print(f"main job on the trained dev {args.model.upper()} model ({type(model.model).__name__}, "
              f"{self.folder}; {dev.SIZE}x{dev.SIZE} px, {len(dev.CLASSES)} classes {dev.CLASSES}) | device "
              f"{device_name(device)}", flush=True)
        print(f"{args.seeds} seeds x {len(dev.CLASSES)} classes per round (one batch), {args.repeat} timed round(s), "
              f"medians; each class prompt against the empty prompt; the same noise in every pipeline", flush=True)
        sources = {"stock": "ComfyUI's stock txt2img graph", RESCALED: "the same with ComfyUI's RescaleCFG node"}
        for name in self.names:
            p, source = self.pipelines[name], sources.get(name, f"example_workflows/api/sprint_{name}.json")
            left_out = "; its 2x two-stage upscale left out (the dev model knows one size)" if p.upscaled else ""
            print(f"  {name:<10} {source}: {p.describe()}{left_out}")
        print("  all decode with VAEDecode on the dev codec (exact block DCT; fast's light VAE has no dev variant)")

        print("held-out real images: classifier features ...", flush=True)
        real, _ = dev.dataset("heldout", 256)
        with torch.no_grad():
            real_features = setup.classifier.features(real)

        counter = ModelCalls(model.model.diffusion_model).__enter__()
        warm = slice(0, len(dev.CLASSES) * args.seeds, args.seeds)        # one row per class
        for p in self.pipelines.values():                                 # untimed: first-call costs
            part = setup.subset(warm)
            p(model, part.positive, part.negative, {"samples": self.latent["samples"][warm]}, 10**6, self.vae)
        counter.take()

        stats = {n: {"time": [], "calls": [], "rows": [], "latents": None, "images": []} for n in self.names}
        expected = {n: 2 * self.pipelines[n].inputs["steps"] * self.rows for n in self.names}   # upper bound
        ref_rows = self.ref_rows()
        ref_work = 2 * args.ref_steps * len(ref_rows) * len({p.ode for p in self.pipelines.values()})
        for round_ in range(args.repeat):
            for i, name in enumerate(self.names):
                counter.take()
                seconds, (latents, images) = timed(lambda: self.pipelines[name](
                    model, setup.positive, setup.negative, self.latent, round_, self.vae))
                calls, rows = counter.take()
                for key, value in (("time", seconds), ("calls", calls), ("rows", rows), ("images", images)):
                    stats[name][key].append(value)
                if round_ == 0:
                    stats[name]["latents"] = latents
                    expected[name] = rows
                left = sum(expected[n] for j, n in enumerate(self.names) if j > i) \
                    + (args.repeat - round_ - 1) * sum(expected.values()) + ref_work
                eta = self.progress(rows, left, seconds)
                print(f"round {round_ + 1}/{args.repeat} {name:<10} {seconds:6.1f} s  {calls:3d} UNet calls  "
                      f"{rows / self.rows:5.1f} evals/image  | ETA {eta:4.0f} s", flush=True)
        counter.__exit__()

        print(f"fine references: {args.ref_steps}-step 3rd-order multistep solves of each guidance's ODE, "
              f"{len(ref_rows)} rows of round 1, ETA {self.seconds_per_row * ref_work:.0f} s ...", flush=True)
        errors = self.errors(stats, ref_rows)
        self.table(stats, errors, real_features, time.perf_counter() - began)
        return 0

    def ref_rows(self):
        """Round 1's rows solved finely: the first --ref-seeds seeds of every class."""
        seeds = min(self.args.ref_seeds, self.args.seeds)
        return torch.cat([torch.arange(seeds) + c * self.args.seeds for c in range(len(dev.CLASSES))])

    def errors(self, stats, rows):
        """Mean RMSE (scaled latents) of each pipeline's round-1 rows against a fine solve of its own
        guided ODE from the same noise (one solve per distinct guidance)."""
        import comfy.sample
        setup = self.setup
        setup.noise = comfy.sample.prepare_noise(self.latent["samples"], 0)       # round 1's seed, as the nodes
        refs, errors = {}, {}
        for name, p in self.pipelines.items():
            key = p.ode
            if key not in refs:
                solve = setup.subset(rows, p.model(setup.model), p.inputs["cfg"])
                refs[key] = solve(reference_sampler(self.args.ref_steps), 20)[0]
            got = setup.latent_format.process_in(stats[name]["latents"][rows])
            errors[name] = evaluation.rmse(got, refs[key]).mean().item()
        # how fine is fine: the last guidance solved again at twice the steps, on one row per class
        some = slice(0, len(rows), max(1, len(rows) // len(dev.CLASSES)))
        finer = solve.subset(some)(reference_sampler(2 * self.args.ref_steps), 20)[0]
        gap = evaluation.rmse(finer, refs[key][some]).max().item()
        print(f"a {2 * self.args.ref_steps}-step solve differs from it by RMSE {gap:.2g} (max of {len(finer)} rows)")
        return errors

    def scores(self, gray, labels, real_features):
        return index_metrics(self.setup.classifier, gray, labels, real_features)

    def table(self, stats, errors, real_features, seconds):
        args, names = self.args, self.names
        pooled = self.rows * args.repeat
        every = torch.arange(pooled)
        labels = self.setup.labels.repeat(args.repeat)
        scores = {n: self.scores(dev.to_gray(torch.cat(stats[n]["images"])), labels, real_features) for n in names}
        train, train_labels = dev.dataset("train", pooled // len(dev.CLASSES))
        scores["real"] = self.scores(train, train_labels, real_features)
        noise = lambda fn: metrics.bootstrap_std(fn, pooled)                     # noqa: E731
        base = statistics.median(stats[names[0]]["time"])
        print(f"\n== main job: {' vs '.join(names)} on the trained dev {args.model.upper()} model, "
              f"{device_name(self.setup.model.load_device)}, {pooled} images per pipeline "
              f"({args.repeat} rounds x {args.seeds} seeds x {len(dev.CLASSES)} classes) ==")
        print(f"{'pipeline':<10} {'median s':>9} {'speed-up':>9} {'UNet calls':>11} {'evals/img':>10} "
              f"{'mini-FID':>8} {'± noise':<7} {'accuracy':>8} {'± noise':<7} {'RMSE vs fine':>13}")
        for name in (*names, "real"):
            fid, acc = scores[name]
            quality = f"{fid(every):>8.4f} ± {noise(fid):<5.4f} {acc(every):>8.3f} ± {noise(acc):<5.3f}"
            if name == "real":
                print(f"{'real':<10} {'':>9} {'':>9} {'':>11} {'':>10} {quality} {'':>13}   "
                      f"({len(train)} training images: the floor)")
                continue
            s = stats[name]
            median = statistics.median(s["time"])
            print(f"{name:<10} {median:>9.2f} {base / median:>8.2f}x {statistics.median(s['calls']):>11.0f} "
                  f"{statistics.median(s['rows']) / self.rows:>10.1f} {quality} {errors[name]:>13.4g}")
        print(f"speed-up vs {names[0]}, end to end (patch + sample + decode of the batch); evals/img: UNet rows per image "
              f"(cond and uncond count apart); noise: bootstrap std over the {pooled} seeds (200 resamplings); "
              f"RMSE: scaled latents, mean over {len(self.ref_rows())} rows of round 1 vs a {args.ref_steps}-step "
              f"solve of the pipeline's own guided ODE; mini-FID vs {len(real_features)} held-out real images")
        if {"stock", "fast"} <= set(names):
            self.verdict(stats, scores, pooled)
        print(f"whole job {seconds:.0f} s (after ComfyUI's boot)")

    def verdict(self, stats, scores, pooled):
        """Issue 16's bar: fast >= 3x faster than stock end to end at mini-FID and accuracy no worse
        than stock's beyond NOISE_SIGMAS paired bootstrap stds; where fast rescales its CFG, the same
        against stock with that rescale (like for like)."""
        every = torch.arange(pooled)
        for base in [n for n in ("stock", RESCALED) if n in stats]:
            speed = statistics.median(stats[base]["time"]) / statistics.median(stats["fast"]["time"])
            parts = [f"speed-up {speed:.2f}x (bar >= 3x: {'met' if speed >= 3 else 'NOT met'})"]
            for what, k, worse in (("mini-FID", 0, 1), ("accuracy", 1, -1)):
                fast, stock = scores["fast"][k], scores[base][k]
                change = fast(every) - stock(every)
                sigma = metrics.bootstrap_std(lambda i: fast(i) - stock(i), pooled)
                ok = worse * change <= NOISE_SIGMAS * sigma
                parts.append(f"{what} {change:+.4f} ± {sigma:.4f} ({'met' if ok else 'NOT met'})")
            what = "issue 16's bar, fast vs stock" if base == "stock" else f"like for like, fast vs {base}"
            print(f"{what} (quality no worse beyond {NOISE_SIGMAS} paired-bootstrap stds): " + "; ".join(parts))
