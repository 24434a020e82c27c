"""Host glue every Sprint node shares: events to the web extension, Sprint's model folders,
progress with Cancel, and the identity of a patched model's weights."""
import logging
import os

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_execution.utils import get_executing_context

from ..engines.files import digest

log = logging.getLogger("sprint")


def prompt_server():
    """ComfyUI's running PromptServer, or None in a headless run (ComfyUI as a library)."""
    try:
        from server import PromptServer
    except ImportError:
        return None
    return getattr(PromptServer, "instance", None)


def send_event(event, data):
    """Send `sprint.<event>` to the frontend, tagged with the executing node and prompt so the
    web extension can badge the right node; a headless run (no PromptServer) just skips it."""
    server = prompt_server()
    if server is None:
        return
    context = get_executing_context()
    if context is not None:
        data = {"node": context.node_id, "prompt_id": context.prompt_id, **data}
    server.send_sync(f"sprint.{event}", data, server.client_id)


def model_folder(name):
    """models/<name> registered with folder_paths (idempotent); returns its first path."""
    if name not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))
    path = folder_paths.get_folder_paths(name)[0]
    os.makedirs(path, exist_ok=True)
    return path


class Progress:
    """ComfyUI's progress bar (what the UI shows and Cancel hooks into) for `total` units."""

    def __init__(self, total):
        self.bar = comfy.utils.ProgressBar(total)

    def update(self, n=1):
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.bar.update(n)


def patcher_fingerprint(patcher, prefix=None):
    """Digest of a ModelPatcher's effective weights: unpatched base weights plus every weight
    patch (LoRA, merges) with its strengths. Base-weight digests are memoised on the model, so
    only the first call on a model pays for hashing its tensors."""
    memo = patcher.model.__dict__.setdefault("_sprint_weight_digests", {})
    parts = []
    for key, (weight, _convert), *patches in sorted(
            ((k, *v) for k, v in patcher.get_key_patches(prefix).items()), key=lambda kv: kv[0]):
        # Inference tensors (weights a loader made under the executor's inference_mode) keep no
        # version counter; their in-place changes go through the patcher, whose backups we read.
        version = None if weight.is_inference() else weight._version
        tag = (key, weight.data_ptr(), version, tuple(weight.shape), weight.dtype)
        if tag not in memo:
            memo[tag] = digest(weight)
        parts.append((key, memo[tag], patches))
    return digest(parts)
