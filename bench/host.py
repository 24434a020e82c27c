"""ComfyUI as a library: boot it, load Sprint the way ComfyUI loads custom nodes, run API prompts.

Shared by the host test tier and every bench command. This module imports nothing from ComfyUI
nor from the rest of the pack: `python <Sprint>` loads it alone, boots ComfyUI (which loads its
own copy of the pack), then enters that copy's bench.cli once, so every command runs on the
modules ComfyUI runs.
"""
import asyncio
import importlib
import logging
import os
import pathlib
import sys
import uuid

PACK_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACK_FOLDER = "Sprint"
WORKFLOWS = PACK_ROOT / "example_workflows"


def cache_dir():
    """Where the commands keep what they make once ($SPRINT_CACHE, default ~/.cache/sprint)."""
    return pathlib.Path(os.environ.get("SPRINT_CACHE", pathlib.Path.home() / ".cache" / "sprint"))


def shared_taesd():
    """The project's shared/data/taesd (real taef2 weights) beside the checkout or beside its
    worktrees folder, or None where the checkout came without it."""
    return next((base / "shared" / "data" / "taesd" for base in (PACK_ROOT.parent, PACK_ROOT.parent.parent)
                 if (base / "shared" / "data" / "taesd" / "taef2_decoder.pth").is_file()), None)


def loaded_pack():
    """The copy of Sprint that ComfyUI loaded as a custom node, or None. ComfyUI names a pack's
    module after its folder's absolute path; other copies of the pack (the tests' `sprint`,
    pytest's package import under the clone's folder name) hold other module-level state."""
    return next((m for name, m in list(sys.modules.items())
                 if getattr(m, "__file__", None) and pathlib.Path(m.__file__).resolve() == PACK_ROOT / "__init__.py"
                 and os.path.isabs(name)), None)


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
        module = self.pack = loaded_pack()
        if module is not None:     # enter ComfyUI's copy once: its bench wing imports the rest plainly
            importlib.import_module(f"{module.__name__}.bench.cli")

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


class _HostImportNoise(logging.Filter):
    """While ComfyUI loads its node modules: keeps every "Cannot import" message (`failures`), and
    holds back what its optional modules log when their dependencies are missing (tracebacks,
    "Cannot import", the IMPORT FAILED list, "torchaudio missing" ...) for one summary line.
    Anything that names Sprint passes untouched."""

    HELD = ("Traceback (most recent call last)", "Cannot import", "IMPORT FAILED", "WARNING: some comfy_extras/",
            "This issue might be caused", "Please do a: pip install", "torchaudio missing")

    def __init__(self):
        super().__init__()
        self.failures, self.held = [], []

    def filter(self, record):
        message = record.getMessage()
        if message.startswith("Cannot import"):
            self.failures.append(message)
        if str(PACK_ROOT) in message or PACK_FOLDER in message:
            return True
        if message.strip() and not message.lstrip().startswith(self.HELD):
            return True
        if message.startswith("Cannot import"):
            self.held.append(message)
        return False

    def summarise(self):
        if self.held:
            modules = ", ".join(pathlib.Path(m.split()[2]).name for m in self.held)
            reasons = sorted({m.rsplit(": ", 1)[-1] for m in self.held})
            logging.warning("ComfyUI: %d optional node module(s) did not import (%s: %s); Sprint does not use them",
                            len(self.held), modules, "; ".join(reasons))


def boot(comfy_path=None, base_dir=None, cpu=True, attention=None):
    """Boot ComfyUI as a library and load Sprint through its custom-node loader.

    base_dir becomes ComfyUI's base directory (models/, output/, custom_nodes/ ...); Sprint is
    linked into its custom_nodes/. attention: None (ComfyUI's choice), "pytorch" or "sub-quad".
    Returns a Host; raises HostNotFound or RuntimeError.
    """
    comfy_path = find_comfyui(comfy_path)
    if "comfy.model_management" in sys.modules:
        raise RuntimeError("ComfyUI was imported before boot(); its arguments can no longer be set")
    if base_dir is None:
        import tempfile
        base_dir = tempfile.mkdtemp(prefix="sprint-headless-")
    sys.path.insert(0, str(comfy_path))
    from comfy.cli_args import args
    args.cpu = cpu
    args.base_directory = str(base_dir)
    args.disable_api_nodes = True
    if attention is not None:
        args.use_pytorch_cross_attention = attention == "pytorch"
        args.use_split_cross_attention = False
    import utils.extra_config  # noqa: F401  (before `nodes`, which puts comfy/ first on sys.path)
    import folder_paths
    link_pack(folder_paths.get_folder_paths("custom_nodes")[0])

    noise = _HostImportNoise()
    logging.getLogger().addFilter(noise)
    try:
        import nodes
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    finally:
        logging.getLogger().removeFilter(noise)
    noise.summarise()
    host = Host(comfy_path, base_dir, noise.failures)
    sprint_failures = [f for f in noise.failures if str(PACK_ROOT) in f or PACK_FOLDER in f]
    if sprint_failures or host.pack is None:
        raise RuntimeError("Sprint failed to load into ComfyUI: " + ("; ".join(sprint_failures) or "module not found"))
    return host


def provide_model_file(folder, given, default_name, write, what=None):
    """Make a model file visible in the host's models/<folder>; returns its name there.

    A given file is linked in. Without one, `write(path)` makes a random-weight stand-in, once,
    in the cache ($SPRINT_CACHE, default ~/.cache/sprint), announced before it starts as `what`
    (e.g. "SD1.5 checkpoint (about 2.1 GB)")."""
    import folder_paths
    target_dir = pathlib.Path(folder_paths.get_folder_paths(folder)[0])
    target_dir.mkdir(parents=True, exist_ok=True)
    if given is None:
        given = cache_dir() / default_name
        if not given.exists():
            what = what or (folder[:-1] if folder.endswith("s") else folder)
            print(f"writing a random-weight {what} to {given} (once) ...", flush=True)
            write(given)
    given = pathlib.Path(given).resolve()
    # the light VAE finds its files by name: keep ours, with the given file's format
    link = target_dir / (pathlib.Path(default_name).stem + given.suffix if folder == "vae_approx" else given.name)
    if not link.exists():
        link.symlink_to(given)
    return link.name


def boot_args(argv):
    """The options that must be known before ComfyUI boots: --comfyui, --gpu, --attention.

    bench-tiling measures with PyTorch attention unless told otherwise (ComfyUI's CPU default,
    sub-quadratic, sizes its chunks by the memory free at the time)."""
    import argparse
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--comfyui")
    pre.add_argument("--gpu", action="store_true")
    pre.add_argument("--attention", choices=("pytorch", "sub-quad"))
    pre.add_argument("command", nargs="?")
    known, _ = pre.parse_known_args(argv)
    attention = known.attention or ("pytorch" if known.command == "bench-tiling" else None)
    return known.comfyui, not known.gpu, attention
