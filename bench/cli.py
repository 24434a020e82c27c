"""`python <Sprint> <command> ...`: the headless jobs, run on a booted ComfyUI (CPU unless --gpu).

Imported only after ComfyUI has booted (bench/host.py), from the copy of the pack ComfyUI loaded.
"""
import argparse
import logging

from . import batch, dynamic_cfg, engines, light_vae, main_job, prompt_cache, quality, run, sampler, thumbnail, tiling, train_dev

# command -> (module with configure(parser) and command(host, args), old names kept working)
COMMANDS = {
    "bench": (main_job, ()),
    "run": (run, ()),
    "batch": (batch, ()),
    "bench-sampler": (sampler, ()),
    "bench-cfg": (dynamic_cfg, ()),
    "bench-tiling": (tiling, ()),
    "bench-engines": (engines, ("bench-unet",)),
    "bench-prompt-cache": (prompt_cache, ("text-cache-bench",)),
    "bench-light-vae": (light_vae, ("light-vae-bench",)),
    "bench-quality": (quality, ()),
    "train-dev-models": (train_dev, ()),
    "thumbnail": (thumbnail, ()),
}


def parser():
    p = argparse.ArgumentParser(prog="sprint", description="Sprint's headless jobs on ComfyUI, booted as a library.")
    p.add_argument("--comfyui", help="ComfyUI checkout (default: $COMFYUI_PATH, else two folders up)")
    p.add_argument("--gpu", action="store_true", help="use the GPU if ComfyUI finds one (default: CPU)")
    sub = p.add_subparsers(dest="command", required=True)
    for name, (module, aliases) in COMMANDS.items():
        doc = module.configure.__doc__.splitlines()[0]
        module.configure(sub.add_parser(name, aliases=list(aliases), help=doc, description=doc))
    return p


def main(host, argv):
    """Parse `argv` and run the command on `host` (bench.host.Host); returns the exit code."""
    args = parser().parse_args(argv)
    logging.getLogger().setLevel(logging.WARNING)
    return args.func(host, args)
