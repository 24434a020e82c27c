"""Sprint: faster Stable-Diffusion-family generation for ComfyUI, every speed-up measured.

Importing the pack is cheap: node modules (and their optional dependencies) load only when
ComfyUI asks for the node list.
"""
import importlib

WEB_DIRECTORY = "./web"

# nodes/<module>.py, each listing its V3 node classes in NODES.
NODE_MODULES = ("prompt_cache", "light_vae", "sampler", "dynamic_cfg", "tiled_diffusion", "two_stage", "accelerate")


async def comfy_entrypoint():
    from comfy_api.latest import ComfyExtension

    class Sprint(ComfyExtension):
        async def get_node_list(self):
            return [node for name in NODE_MODULES
                    for node in importlib.import_module(f"{__name__}.nodes.{name}").NODES]

    return Sprint()
