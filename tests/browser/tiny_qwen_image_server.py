"""Test-only custom-node module for the browser tier's server (harness.Server links it into the
server's custom_nodes): UNETLoader and CLIPLoader build Qwen-Image and its Qwen2.5-VL text encoder
at the sizes of the tiny stand-in files the tier puts under the Qwen-Image workflow's file names
(bench/synthetic.tiny_qwen_image_loaders: ComfyUI 0.3.64 reads neither width from a file). Other
models load as always."""
import functools
import importlib
import importlib.util
import pathlib

import nodes

ROOT = pathlib.Path(__file__).resolve().parents[2]
NODE_CLASS_MAPPINGS = {}        # a custom-node module; it adds no node


@functools.cache
def _synthetic():
    """bench.synthetic of the Sprint copy this server loaded (after this module, so looked up at use)."""
    spec = importlib.util.spec_from_file_location("sprint_test_hostlib", ROOT / "bench" / "host.py")
    hostlib = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hostlib)
    return importlib.import_module(f"{hostlib.loaded_pack().__name__}.bench.synthetic")


def _at_tiny_qwen_image_sizes(load):
    @functools.wraps(load)
    def wrapped(*args, **kwargs):
        with _synthetic().tiny_qwen_image_loaders():
            return load(*args, **kwargs)
    return wrapped


for _loader, _method in ((nodes.UNETLoader, "load_unet"), (nodes.CLIPLoader, "load_clip")):
    setattr(_loader, _method, _at_tiny_qwen_image_sizes(getattr(_loader, _method)))
