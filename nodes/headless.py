"""ComfyUI as a library: boot it, load Sprint the way ComfyUI loads custom nodes, run API prompts.

Shared by the host test tier and the benchmark command. Importing this module imports nothing
from ComfyUI: `boot()` must set its arguments before comfy.model_management is first imported.
"""
import asyncio
import logging
import os
import pathlib
import sys
import uuid

PACK_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACK_FOLDER = "Sprint"


class HostNotFound(RuntimeError):
    pass


class PromptFailed(RuntimeError):
    """Validation or execution of a prompt failed; `details` holds ComfyUI's error payload."""

    def __init__(self, message, details=None):
        super().__init__(message)
        self.details = details


def is_comfyui(path):
    return path is not None and (pathlib.Path(path) / "comfy" / "model_management.py").is_file() \
        and (pathlib.Path(path) / "nodes.py").is_file()


def find_comfyui(explicit=None):
    """A ComfyUI checkout: `explicit`, else $COMFYUI_PATH, else two folders up (custom_nodes/<pack>).

    Raises HostNotFound naming where it looked."""
    candidates = [explicit, os.environ.get("COMFYUI_PATH"), PACK_ROOT.parent.parent]
    for path in candidates:
        if path and is_comfyui(path):
            return pathlib.Path(path).resolve()
    looked = ", ".join(str(p) for p in candidates if p)
    raise HostNotFound(f"no ComfyUI checkout found (looked at: {looked}); "
                       "set COMFYUI_PATH=/path/to/ComfyUI (0.3.64) or install Sprint in ComfyUI/custom_nodes/")


def link_pack(custom_nodes_dir):
    """Make Sprint reachable from a custom_nodes folder (a symlink, unless it already lives there)."""
    custom_nodes_dir = pathlib.Path(custom_nodes_dir)
    custom_nodes_dir.mkdir(parents=True, exist_ok=True)
    if PACK_ROOT.parent.resolve() == custom_nodes_dir.resolve():
        return PACK_ROOT
    link = custom_nodes_dir / PACK_FOLDER
    if not link.exists():
        link.symlink_to(PACK_ROOT, target_is_directory=True)
    return link


class _ServerStub:
    """What PromptExecutor needs of PromptServer; records the events it is sent."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.sockets_metadata = {}
        self.events = []

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))


class Host:
    """A booted ComfyUI with Sprint loaded. One per process: ComfyUI keeps global state."""

    def __init__(self, comfy_path, base_dir, import_failures):
        import execution
        import nodes
        self.comfy_path, self.base_dir = comfy_path, pathlib.Path(base_dir)
        self.nodes, self.execution = nodes, execution
        self.import_failures = import_failures
        self.server = _ServerStub()
        self.executor = execution.PromptExecutor(self.server)
        # ComfyUI names a pack's module after its folder's absolute path; other copies of the pack
        # (the tests' `sprint`, pytest's package import under the clone's folder name) hold
        # other module-level state.
        module = next((m for name, m in sys.modules.items()
                       if getattr(m, "__file__", None) and pathlib.Path(m.__file__).resolve() == PACK_ROOT / "__init__.py"
                       and os.path.isabs(name)), None)
        self.pack = module

    def module(self, name):
        """A module of the pack as ComfyUI loaded it, e.g. host.module("nodes.synthetic")."""
        import importlib
        return importlib.import_module(f"{self.pack.__name__}.{name}")

    def sprint_nodes(self):
        return sorted(k for k in self.nodes.NODE_CLASS_MAPPINGS if k.startswith("Sprint"))

    def run(self, prompt, client_id="sprint-headless"):
        """Validate and execute an API-format prompt; returns a Result (raises PromptFailed)."""
        prompt_id = str(uuid.uuid4())
        valid, error, outputs, node_errors = asyncio.run(self.execution.validate_prompt(prompt_id, prompt, None))
        if not valid:
            raise PromptFailed(f"invalid prompt: {error.get('message')} {error.get('details', '')}".strip(),
                               {"error": error, "node_errors": node_errors})
        self.server.events.clear()
        self.executor.execute(prompt, prompt_id, {"client_id": client_id}, outputs)
        if not self.executor.success:
            failure = next((d for e, d in self.executor.status_messages if e in ("execution_error", "execution_interrupted")), {})
            raise PromptFailed(f"{failure.get('node_type', '?')} failed: {failure.get('exception_message', 'interrupted')}", failure)
        return Result(self.executor, list(self.server.events))


class Result:
    """Outputs of one executed prompt: `ui[node_id]` (what the frontend gets) and `output(node_id)`."""

    def __init__(self, executor, events):
        self.ui = executor.history_result["outputs"]
        self.events = events
        self._outputs = executor.caches.outputs

    def output(self, node_id, slot=0):
        """The value a node produced on an output slot (first batch entry)."""
        data = self._outputs.get(str(node_id))
        if data is None:
            raise KeyError(f"node {node_id} produced no cached output")
        return data[slot][0]


def boot(comfy_path=None, base_dir=None, cpu=True):
    """Boot ComfyUI as a library and load Sprint through its custom-node loader.

    base_dir becomes ComfyUI's base directory (models/, output/, custom_nodes/ ...); Sprint is
    linked into its custom_nodes/. Returns a Host; raises HostNotFound or RuntimeError.
    """
    comfy_path = find_comfyui(comfy_path)
    if "comfy.model_management" in sys.modules:
        raise RuntimeError("ComfyUI was imported before boot(); its arguments can no longer be set")
    sys.path.insert(0, str(comfy_path))
    from comfy.cli_args import args
    args.cpu = cpu
    args.base_directory = str(base_dir)
    args.disable_api_nodes = True
    import utils.extra_config  # noqa: F401  (before `nodes`, which puts comfy/ first on sys.path)
    import folder_paths
    link_pack(folder_paths.get_folder_paths("custom_nodes")[0])

    import nodes
    failures = []

    class _Failures(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("Cannot import"):
                failures.append(record.getMessage())

    handler = _Failures()
    logging.getLogger().addHandler(handler)
    try:
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    finally:
        logging.getLogger().removeHandler(handler)
    host = Host(comfy_path, base_dir, failures)
    sprint_failures = [f for f in failures if str(PACK_ROOT) in f or PACK_FOLDER in f]
    if sprint_failures or host.pack is None:
        raise RuntimeError("Sprint failed to load into ComfyUI: " + ("; ".join(sprint_failures) or "module not found"))
    return host


def stock_txt2img(ckpt_name, width=512, height=512, steps=20, cfg=8.0, seed=0,
                  positive="a photograph of a lighthouse on a cliff at sunset, detailed",
                  negative="blurry, low quality"):
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


DEFAULT_CHECKPOINT = "sprint_random_sd15.safetensors"
DEFAULT_LIGHT_DECODER = "taesd_decoder.safetensors"


def provide_model_file(host, folder, given, default_name, write):
    """Make a model file visible in the host's models/<folder>; returns its name there.

    A given file is linked in. Without one, `write(path)` makes a random-weight stand-in, once,
    in the cache ($SPRINT_CACHE, default ~/.cache/sprint)."""
    import folder_paths
    target_dir = pathlib.Path(folder_paths.get_folder_paths(folder)[0])
    target_dir.mkdir(parents=True, exist_ok=True)
    if given is None:
        cache_dir = pathlib.Path(os.environ.get("SPRINT_CACHE", pathlib.Path.home() / ".cache" / "sprint"))
        given = cache_dir / default_name
        if not given.exists():
            logging.info("writing a random-weight %s to %s (once)", folder, given)
            cache_dir.mkdir(parents=True, exist_ok=True)
            partial = given.with_name(given.name + ".partial")
            write(partial)
            os.replace(partial, given)
    given = pathlib.Path(given).resolve()
    # the light VAE finds its files by name: keep ours, with the given file's format
    link = target_dir / (pathlib.Path(default_name).stem + given.suffix if folder == "vae_approx" else given.name)
    if not link.exists():
        link.symlink_to(given)
    return link.name


def provide_checkpoint(host, ckpt=None):
    """A checkpoint loadable by CheckpointLoaderSimple: `ckpt`, else a full SD1.5-architecture one
    with random weights (full KL VAE)."""
    synthetic = host.module("nodes.synthetic")
    return provide_model_file(host, "checkpoints", ckpt, DEFAULT_CHECKPOINT,
                              lambda path: synthetic.write_sd15_checkpoint(path, unet="full", vae="kl", seed=0))


def provide_light_decoder(host, decoder=None):
    """The SD1.x light VAE decoder in models/vae_approx: `decoder`, else a random-weight taesd one."""
    synthetic = host.module("nodes.synthetic")
    return provide_model_file(host, "vae_approx", decoder, DEFAULT_LIGHT_DECODER, synthetic.write_taesd_decoder)


def configure_run(parser):
    """`run`: an API workflow (default: ComfyUI's stock txt2img), timed."""
    parser.add_argument("--workflow", help="API-format workflow JSON; its CheckpointLoaderSimple nodes get --ckpt")
    parser.add_argument("--ckpt", help="checkpoint file (default: a random-weight SD1.5 architecture, said so)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels for the stock workflow")
    parser.add_argument("--steps", type=int, default=20, help="steps for the stock workflow")
    parser.add_argument("--repeat", type=int, default=1, help="runs to time (the first includes model loading)")
    parser.set_defaults(func=run_command)


def run_command(args):
    import json
    import statistics
    import time
    host = boot_for(args)
    ckpt_name = provide_checkpoint(host, args.ckpt)
    if args.workflow:
        prompt = json.loads(pathlib.Path(args.workflow).read_text())
        for node in prompt.values():
            if node["class_type"] == "CheckpointLoaderSimple":
                node["inputs"]["ckpt_name"] = ckpt_name
    else:
        prompt = stock_txt2img(ckpt_name, args.size, args.size, args.steps)
    print(f"ComfyUI {host.comfy_path} | checkpoint {ckpt_name}"
          + ("" if args.ckpt else " (random weights: timings are real, images are noise)"))
    times = []
    for i in range(args.repeat):
        prompt = json.loads(json.dumps(prompt))
        for node in prompt.values():      # a new seed defeats the executor's cache between runs
            if "seed" in node["inputs"]:
                node["inputs"]["seed"] = i
        start = time.perf_counter()
        result = host.run(prompt)
        times.append(time.perf_counter() - start)
        print(f"run {i + 1}: {times[-1]:.2f} s")
    images = [img["filename"] for out in result.ui.values() for img in out.get("images", [])]
    print(f"median {statistics.median(times):.2f} s over {len(times)} run(s); images: {images} in {host.base_dir}/output")
    return 0


def boot_for(args):
    """Boot ComfyUI for a CLI command, in a fresh temp base directory."""
    import tempfile
    return boot(args.comfyui, tempfile.mkdtemp(prefix="sprint-headless-"), cpu=not args.gpu)


# Sub-commands of `python <Sprint folder> ...`: name -> module of this pack with a
# configure(parser) that adds its arguments and sets func(args) -> exit code.
COMMANDS = {"run": "nodes.headless", "text-cache-bench": "nodes.speed_bench", "light-vae-bench": "nodes.speed_bench",
            "bench-unet": "nodes.bench_unet", "bench-cfg": "nodes.bench_cfg", "bench-tiling": "nodes.bench_tiling",
            "bench-sampler": "nodes.sampler_bench", "bench": "nodes.bench"}


def main(argv=None):
    """Sprint's headless jobs on ComfyUI (booted as a library, CPU unless --gpu)."""
    import argparse
    import importlib
    parser = argparse.ArgumentParser(prog="sprint", description=main.__doc__)
    parser.add_argument("--comfyui", help="ComfyUI checkout (default: $COMFYUI_PATH, else two folders up)")
    parser.add_argument("--gpu", action="store_true", help="use the GPU if ComfyUI finds one (default: CPU)")
    sub = parser.add_subparsers(dest="command", required=True)
    package = __name__.rsplit(".", 2)[0]
    for name, module in COMMANDS.items():
        configure = getattr(importlib.import_module(f"{package}.{module}"), f"configure_{name.replace('-', '_')}")
        configure(sub.add_parser(name, help=configure.__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    return args.func(args)
