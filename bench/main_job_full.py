"""`bench --full`, the main job at full size: ComfyUI's stock txt2img vs Sprint's bundled fast and
quality workflows on one checkpoint, seed and prompt, through the real executor. Also the
pipelines' graphs as shipped (`graph`), which the default, trained-model `bench` reads too.

Stock is ComfyUI's default graph (KSampler euler/normal, 20 steps, cfg 8, full VAE decode); fast
and quality are example_workflows/api/sprint_*.json as shipped (their own steps and presets), given the same
checkpoint, size, seed and prompt. Per pipeline: end-to-end wall time (rounds A B C A B C ...,
medians; every round a new seed), UNet calls and batch rows, peak memory, and the error of its final
latent against a fine-step reference of the same pipeline (same model, guidance schedule, seed and
noise; only the sampling made fine: dpmpp_2m with --ref-steps steps).

What is cached between runs is what ComfyUI itself keeps: the loaded checkpoint (the same loader
inputs in every pipeline) stays; the executor drops the outputs the next prompt does not share, so
every run re-encodes its prompts as after switching workflows, which Sprint's prompt cache answers.
"""
import copy
import json
import statistics

from ..engines.evaluation import rmse
from .host import WORKFLOWS
from .meters import ModelCalls, PeakMemory, device_name, timed
from .run import NEGATIVE, POSITIVE, provide_checkpoint, provide_light_decoder, stock_txt2img, with_checkpoint, with_seed

PIPELINES = ("stock", "fast", "quality")
SAMPLERS = ("KSampler", "SprintKSampler")
DECODERS = ("VAEDecode", "SprintLightVAEDecode")


def graph(name):
    """The API prompt of a pipeline as it ships: ComfyUI's stock txt2img (no checkpoint named) or a
    bundled workflow."""
    if name == "stock":
        return stock_txt2img("")
    return json.loads((WORKFLOWS / "api" / f"sprint_{name}.json").read_text())


def load_pipeline(name, ckpt_name, size, steps=None):
    """The API prompt of a pipeline with the bench's checkpoint, size and prompt (and steps, if given)."""
    if name == "stock":
        return stock_txt2img(ckpt_name, size, size, steps or 20, positive=POSITIVE, negative=NEGATIVE)
    prompt = with_checkpoint(graph(name), ckpt_name)
    texts = iter((POSITIVE, NEGATIVE))
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] in ("EmptyLatentImage", "EmptySD3LatentImage"):
            inputs["width"] = inputs["height"] = size
        elif node["class_type"] in ("CLIPTextEncode", "SprintCachedTextEncode"):
            inputs["text"] = next(texts)
        if "steps" in inputs and steps:
            inputs["steps"] = steps
    return prompt


def reference(prompt, steps):
    """The same pipeline with fine sampling: every sampler becomes dpmpp_2m over `steps` steps of its
    own scheduler (same model patches, cfg, seed, denoise); two-stage refines with dpmpp_2m over the
    tail of a `steps`-step schedule."""
    prompt = copy.deepcopy(prompt)
    for node_id, node in list(prompt.items()):
        inputs = node["inputs"]
        if node["class_type"] in SAMPLERS:
            node["class_type"] = "KSampler"
            node["inputs"] = {k: inputs[k] for k in ("model", "positive", "negative", "latent_image", "seed", "cfg",
                                                     "scheduler", "denoise")}
            node["inputs"].update(steps=steps, sampler_name="dpmpp_2m")
        elif node["class_type"] == "SprintTwoStageUpscale":
            prompt[f"{node_id}.ref_sampler"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}}
            inputs.update(steps=steps, sampler=[f"{node_id}.ref_sampler", 0])
    return prompt


def final_latent(prompt):
    """(node id, output slot) of the latent the pipeline decodes."""
    return next(node["inputs"]["samples"] for node in prompt.values() if node["class_type"] in DECODERS)


def latent_rmse(a, b):
    return rmse(a.reshape(1, -1), b.reshape(1, -1)).item()


def command(host, args):
    import comfy.model_management
    ckpt_name = provide_checkpoint(args.ckpt, args.arch)
    provide_light_decoder(args.light_decoder, args.arch)
    names = [n for n in args.pipelines.split(",") if n]
    if unknown := set(names) - set(PIPELINES):
        raise SystemExit(f"unknown pipelines {sorted(unknown)}; choose from {', '.join(PIPELINES)}")
    prompts = {n: load_pipeline(n, ckpt_name, args.size, args.steps) for n in names}
    device = comfy.model_management.get_torch_device()
    cuda = getattr(device, "type", "cpu") == "cuda"
    print(f"ComfyUI {host.comfy_path} | device {device_name(device)} | checkpoint {ckpt_name}"
          + ("" if args.ckpt else f" ({args.arch.upper()} architecture, random weights: times and calls are real, "
                                  "images are noise)"))
    budgets = {n: [v["inputs"]["steps"] for v in p.values() if "steps" in v["inputs"]] for n, p in prompts.items()}
    print(f"{args.size}x{args.size} px, prompt {POSITIVE!r}, steps {budgets}; quality upscales to 2x; "
          f"{args.repeat} timed round(s) after a warm-up, medians")

    warm = host.run(with_seed(prompts[names[0]], 10**6))         # loads the checkpoint, untimed
    loader = next(k for k, v in prompts[names[0]].items() if v["class_type"] == "CheckpointLoaderSimple")
    # the loader's MODEL stays in the executor's cache (same inputs) for every later prompt
    loaded = warm.output(loader, 0).model
    print(f"UNet dtype {loaded.get_dtype()} (ComfyUI's choice for this device)")
    counter = ModelCalls(loaded.diffusion_model).__enter__()
    stats = {n: {"time": [], "calls": [], "rows": [], "peak": [], "reserved": []} for n in names}
    latents = {}
    for round_ in range(args.repeat + 1):                       # round 0: warm-up, and the latents scored
        for name in names:
            prompt = with_seed(prompts[name], round_)
            counter.take()
            with PeakMemory(cuda) as memory:
                seconds, result = timed(lambda: host.run(prompt))
            calls, rows = counter.take()
            if round_ == 0:
                node, slot = final_latent(prompt)
                latents[name] = result.output(node, slot)["samples"]
                continue
            for key, value in (("time", seconds), ("calls", calls), ("rows", rows), ("peak", memory.peak),
                               ("reserved", memory.reserved)):
                stats[name][key].append(value)
        if round_ > 0:
            print(f"round {round_}: " + ", ".join(f"{n} {stats[n]['time'][-1]:.1f} s" for n in names), flush=True)

    errors = {}
    for name in names:
        ref = reference(prompts[name], args.ref_steps)
        result = host.run(with_seed(ref, 0))
        node, slot = final_latent(ref)
        target = result.output(node, slot)["samples"]
        errors[name] = (latent_rmse(latents[name], target), latent_rmse(latents[name], target) / latent_rmse(target, 0 * target))

    print(f"\n{'pipeline':<9} {'median s':>9} {'speed-up':>9} {'UNet calls':>11} {'rows':>6} {'peak MiB':>9} "
          f"{'latent RMSE':>12} {'relative':>9}   (error vs the same pipeline at {args.ref_steps} dpmpp_2m steps)")
    base = statistics.median(stats[names[0]]["time"])
    for name in names:
        s = stats[name]
        median = statistics.median(s["time"])
        print(f"{name:<9} {median:>9.2f} {base / median:>8.2f}x {statistics.median(s['calls']):>11.0f} "
              f"{statistics.median(s['rows']):>6.0f} {max(s['peak']) / 2**20:>9.0f} {errors[name][0]:>12.4g} "
              f"{errors[name][1]:>9.2%}")
    print(f"speed-up relative to {names[0]}; peak memory: {PeakMemory(cuda).method}, max over rounds")
    if cuda:
        print("peak reserved by torch's caching allocator (torch.cuda.max_memory_reserved), MiB: "
              + ", ".join(f"{n} {max(stats[n]['reserved']) / 2**20:.0f}" for n in names))
    return 0
