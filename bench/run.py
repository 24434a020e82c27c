"""`run`: any API workflow (default: ComfyUI's stock txt2img) on the booted host, timed."""
import json
import pathlib
import statistics

from . import host as hostlib, synthetic
from .meters import timed

POSITIVE = "a photograph of a lighthouse on a cliff at sunset, detailed"
NEGATIVE = "blurry, low quality"


def stock_txt2img(ckpt_name, width=512, height=512, steps=20, cfg=8.0, seed=0, positive=POSITIVE, negative=NEGATIVE):
    """ComfyUI's default txt2img graph (KSampler euler/normal 20 steps cfg 8 + full VAE decode)."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": positive}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": negative}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "sprint"}},
    }


# The random-weight stand-ins written once when no file is given: architecture -> (file name, what
# it is, writer, the light decoder variant its latents take).
STAND_INS = {
    "sd15": ("sprint_random_sd15.safetensors", "SD1.5 checkpoint (about 2.1 GB)",
             lambda path: synthetic.write_sd15_checkpoint(path, unet="full", vae="kl", seed=0), "taesd"),
    "sdxl": ("sprint_random_sdxl.safetensors", "SDXL checkpoint (about 6.9 GB)",
             lambda path: synthetic.write_sdxl_checkpoint(path, vae="kl", seed=0), "taesdxl"),
}


def provide_checkpoint(ckpt=None, arch="sd15"):
    """A checkpoint loadable by CheckpointLoaderSimple: `ckpt`, else the full-size `arch` one with
    random weights (full KL VAE)."""
    name, what, write, _ = STAND_INS[arch]
    return hostlib.provide_model_file("checkpoints", ckpt, name, write, what=what)


def provide_light_decoder(decoder=None, arch="sd15"):
    """The light VAE decoder of `arch`'s latents in models/vae_approx: `decoder`, else one with
    random weights."""
    variant = STAND_INS[arch][3]
    return hostlib.provide_model_file(
        "vae_approx", decoder, f"{variant}_decoder.safetensors",
        lambda path: synthetic.save(synthetic.light_decoder_state_dict(variant), path),
        what=f"{variant} light decoder (about 5 MB)")


def with_checkpoint(prompt, ckpt_name):
    """The prompt with every CheckpointLoaderSimple given `ckpt_name`."""
    for node in prompt.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["inputs"]["ckpt_name"] = ckpt_name
    return prompt


def with_seed(prompt, seed):
    """A copy of the prompt with every `seed` input set (a new seed defeats the executor's cache)."""
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        if "seed" in node["inputs"]:
            node["inputs"]["seed"] = seed
    return prompt


def configure(parser):
    """`run`: an API workflow (default: ComfyUI's stock txt2img), timed."""
    parser.add_argument("--workflow", help="API-format workflow JSON; its CheckpointLoaderSimple nodes get --ckpt")
    parser.add_argument("--ckpt", help="checkpoint file (default: a random-weight SD1.5 architecture, said so)")
    parser.add_argument("--light-decoder", help="taesd decoder file for SprintLightVAEDecode (default: random weights)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels for the stock workflow")
    parser.add_argument("--steps", type=int, default=20, help="steps for the stock workflow")
    parser.add_argument("--repeat", type=int, default=1, help="runs to time (the first includes model loading)")
    parser.set_defaults(func=command)


def command(host, args):
    ckpt_name = provide_checkpoint(args.ckpt)
    if args.workflow:
        prompt = with_checkpoint(json.loads(pathlib.Path(args.workflow).read_text()), ckpt_name)
        if any(n["class_type"] == "SprintLightVAEDecode" for n in prompt.values()):
            provide_light_decoder(args.light_decoder)
    else:
        prompt = stock_txt2img(ckpt_name, args.size, args.size, args.steps)
    print(f"ComfyUI {host.comfy_path} | checkpoint {ckpt_name}"
          + ("" if args.ckpt else " (random weights: timings are real, images are noise)"))
    times = []
    for i in range(args.repeat):
        seconds, result = timed(lambda: host.run(with_seed(prompt, i)))
        times.append(seconds)
        print(f"run {i + 1}: {seconds:.2f} s", flush=True)
    images = [img["filename"] for out in result.ui.values() for img in out.get("images", [])]
    print(f"median {statistics.median(times):.2f} s over {len(times)} run(s); images: {images} in {host.base_dir}/output")
    return 0
