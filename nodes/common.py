"""Host glue every Sprint node shares: events to the web extension, Sprint's model folders,
progress with Cancel, and the identity of a patched model's weights."""
import logging
import math
import os

import comfy.model_management
import comfy.utils
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
import folder_paths
from comfy_api.latest import io
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
    """models/<name> registered with folder_paths (idempotent); returns its first path. Not created
    here: the store creates it on its first write, so a read-only models volume costs that store
    its disk (one warning), never the node pack's import or a node that does not write."""
    if name not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))
    return folder_paths.get_folder_paths(name)[0]


def is_unet(model):
    """Whether a MODEL's diffusion model is an SD-style UNet (SD1.x, SD2.x, SDXL), not a transformer."""
    return isinstance(model.model.diffusion_model, UNetModel)


def check_inputs(cls, values):
    """Every combo and number input in `values` against the node's own schema (ComfyUI 0.3.64
    checks neither V3 combo values nor NaN); raises ValueError naming the input and what it allows."""
    schema = cls.define_schema()
    for spec in schema.inputs:
        value = values.get(spec.id)
        if value is None:
            continue
        if isinstance(spec, io.Combo.Input):
            if value not in spec.options:
                allowed = ", ".join(map(repr, spec.options)) or "none (the list is empty)"
                raise ValueError(f"{schema.node_id}: {spec.id} {value!r} is not one of {allowed}")
        elif isinstance(spec, (io.Int.Input, io.Float.Input)):
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not number or (spec.min is not None and value < spec.min) or (spec.max is not None and value > spec.max):
                raise ValueError(f"{schema.node_id}: {spec.id} {value!r} is not a finite number in [{spec.min}, {spec.max}]")


def check_latent(samples, name, ranks=(4, 5)):
    """A clear one-line error for latents a node cannot take: an empty batch or an unsupported rank."""
    if samples.ndim not in ranks:
        raise ValueError(f"{name}: got a {samples.ndim}-D latent {tuple(samples.shape)}; this node takes "
                         + " or ".join(f"{r}-D" for r in ranks) + " latents")
    if samples.shape[0] == 0:
        raise ValueError(f"{name}: the batch is empty (0 latents)")


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
