"""Prompt-embedding cache: CLIPTextEncode that remembers its outputs across graph edits and restarts.

The key is everything the output depends on: the tokens (text, weights syntax, tokenizer
options and the vectors of referenced `embedding:` files, as the tokenizer read them), the
text encoder's weights with their LoRA/merge patches, clip skip, the encoder class, device,
and torch version. Hooks and CLIP schedules, object patches and wrappers are not captured by
any key: such CLIPs encode normally and are counted as bypassed.
"""
import logging

import torch
from comfy_api.latest import io, ui

from ..engines import prompt_cache
from ..engines.files import digest
from . import common

log = logging.getLogger("sprint")

MB = 1 << 20
DEFAULT_MEMORY_MB = 256
DEFAULT_DISK_MB = 1024
DISK_FOLDER = "sprint_text_cache"   # models/sprint_text_cache: survives restarts (temp/ does not)
MODES = ["memory + disk", "memory", "off"]

_cache = None


def store():
    """The process-wide store (its disk folder is registered on first use)."""
    global _cache
    if _cache is None:
        _cache = prompt_cache.PromptCache(DEFAULT_MEMORY_MB * MB, common.model_folder(DISK_FOLDER), DEFAULT_DISK_MB * MB)
    return _cache


def uncacheable_reason(clip):
    """Why this CLIP's output cannot be keyed, or None."""
    patcher = clip.patcher
    if patcher.forced_hooks is not None or clip.apply_hooks_to_conds is not None or clip.use_clip_schedule:
        return "hooks or a CLIP schedule are attached"
    if patcher.object_patches or patcher.hook_patches or any(patcher.wrappers.values()) or any(patcher.callbacks.values()):
        return "object patches, hooks, wrappers or callbacks are attached"
    if set(patcher.model_options) - {"transformer_options"} or any(patcher.model_options.get("transformer_options", {}).values()):
        return "model options are set on the text encoder"
    return None


def weights_identity(patcher):
    """common.patcher_fingerprint, memoised on the model per patch set (patches_uuid changes with
    every LoRA or merge patch): a lookup costs a dict access, not a pass over 123 M weights, and
    stays valid while ComfyUI moves the weights between devices. Like ComfyUI's own caches, it
    assumes weights change only through the patcher."""
    memo = patcher.model.__dict__.setdefault("_sprint_text_identity", {})
    if patcher.patches_uuid not in memo:
        if len(memo) >= 64:
            memo.clear()
        memo[patcher.patches_uuid] = common.patcher_fingerprint(patcher)
    return memo[patcher.patches_uuid]


def cache_key(clip, tokens):
    device = clip.patcher.load_device
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    model = type(clip.cond_stage_model)
    return digest(prompt_cache.FORMAT, f"{model.__module__}.{model.__qualname__}", weights_identity(clip.patcher),
                  clip.layer_idx, device_name, torch.__version__, tokens)


def encode(clip, text, mode=MODES[0]):
    """CLIPTextEncode's CONDITIONING, from the cache when possible; (conditioning, outcome)
    with outcome "memory", "disk", "miss" or "bypass: <reason>"."""
    tokens = clip.tokenize(text)
    reason = "cache off" if mode == "off" else uncacheable_reason(clip)
    if reason is None:
        key = cache_key(clip, tokens)
        cached, outcome = store().get(key, disk=mode == MODES[0])
        if cached is not None:
            return cached, outcome
    conditioning = clip.encode_from_tokens_scheduled(tokens)
    if reason is None:
        try:
            store().put(key, conditioning, disk=mode == MODES[0], label=text)
            return conditioning, "miss"
        except prompt_cache.Uncacheable as e:
            reason = str(e)
    store().bypassed()
    return conditioning, f"bypass: {reason}"


def stats_line(stats):
    line = (f"hits {stats['hits_memory']} memory + {stats['hits_disk']} disk, misses {stats['misses']}, "
            f"bypassed {stats['bypassed']} | memory {stats['memory_entries']} entries, "
            f"{stats['memory_bytes'] / MB:.1f}/{stats['memory_limit'] / MB:.0f} MB")
    if "disk_entries" in stats:
        line += (f" | disk {stats['disk_entries']} entries, {stats['disk_bytes'] / MB:.1f}/{stats['disk_limit'] / MB:.0f} MB"
                 + (f" (disabled: {stats['disk_disabled']})" if stats["disk_disabled"] else ""))
    return line


class SprintCachedTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SprintCachedTextEncode",
            display_name="Sprint Cached CLIP Text Encode",
            category="Sprint/conditioning",
            description="CLIP Text Encode that remembers its results across graph edits and restarts. A hit is "
                        "bit-identical to a fresh encode; any change of text, text encoder, LoRA, clip skip, "
                        "tokenizer options or embedding files misses.",
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP model used for encoding the text."),
                io.String.Input("text", multiline=True, dynamic_prompts=True, tooltip="The text to be encoded."),
                io.Combo.Input("cache", options=MODES, default=MODES[0], optional=True,
                               tooltip="memory + disk: also keep results in models/sprint_text_cache across restarts; "
                                       "memory: this session only; off: always encode."),
            ],
            outputs=[io.Conditioning.Output(tooltip="A conditioning containing the embedded text used to guide the diffusion model.")],
        )

    @classmethod
    def execute(cls, clip, text, cache=MODES[0]) -> io.NodeOutput:
        if clip is None:
            raise RuntimeError("ERROR: clip input is invalid: None\n\nIf the clip is from a checkpoint loader node your "
                               "checkpoint does not contain a valid clip or text encoder model.")
        common.check_inputs(cls, locals())
        conditioning, outcome = encode(clip, text, cache)
        if outcome.startswith("bypass") and cache != "off":
            log.info("Sprint prompt cache: encoding without cache (%s)", outcome[8:])
        common.send_event("prompt_cache", {"outcome": outcome, **store().stats(disk=False)})
        return io.NodeOutput(conditioning)


class SprintTextCache(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SprintTextCache",
            display_name="Sprint Prompt Cache Stats",
            category="Sprint/conditioning",
            description="Shows the prompt-embedding cache's hits, misses and sizes, sets its memory and disk limits, "
                        "and clears it.",
            is_output_node=True,
            inputs=[
                io.Int.Input("memory_mb", default=DEFAULT_MEMORY_MB, min=0, max=65536,
                             tooltip="Memory in MB (0-65536) the cache may hold in this ComfyUI process (least recently used goes first)."),
                io.Int.Input("disk_mb", default=DEFAULT_DISK_MB, min=0, max=1 << 20,
                             tooltip="Disk in MB (0-1048576) the cache may use in models/sprint_text_cache (shared by every process using it)."),
                io.Combo.Input("action", options=["stats", "clear memory", "clear memory + disk"], default="stats",
                               tooltip="stats: only report; clear: drop the cached embeddings first."),
            ],
            outputs=[io.String.Output(tooltip="The statistics as one line of text.")],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")     # statistics change without the inputs changing: always run

    @classmethod
    def execute(cls, memory_mb, disk_mb, action) -> io.NodeOutput:
        common.check_inputs(cls, locals())
        cache = store()
        cache.configure(memory_mb * MB, disk_mb * MB)
        if action != "stats":
            cache.clear(disk=action.endswith("disk"))
        stats = cache.stats()
        common.send_event("prompt_cache", stats)
        line = stats_line(stats)
        return io.NodeOutput(line, ui=ui.PreviewText(line))


def _register_routes():
    """GET /sprint/prompt_cache (stats) and POST /sprint/prompt_cache/clear {"disk": bool} (also under
    /api; the pre-0.2 paths /sprint/text_cache... answer too)."""
    server = common.prompt_server()
    if server is None:
        return
    import asyncio

    from aiohttp import web

    async def blocking(fn, *args):
        """Run in a worker thread: the index lock may be held by another process and the disk may be
        slow, and the event loop serves everything else ComfyUI does."""
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def clear_and_stats(disk):
        store().clear(disk=disk)
        return store().stats()

    async def stats(request):
        return web.json_response(await blocking(store().stats))

    async def clear(request):
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            return web.json_response({"error": "the body is not JSON"}, status=400)
        disk = body.get("disk", False) if isinstance(body, dict) else None
        if not isinstance(disk, bool):
            return web.json_response({"error": 'expected {"disk": true} or {"disk": false}'}, status=400)
        return web.json_response(await blocking(clear_and_stats, disk))

    for base in ("/sprint/prompt_cache", "/sprint/text_cache"):
        server.routes.get(base)(stats)
        server.routes.post(base + "/clear")(clear)


_register_routes()

NODES = [SprintCachedTextEncode, SprintTextCache]
