"""A store for text-encoder outputs: memory LRU bounded in bytes, plus an optional disk store.

Values are nested lists/tuples/dicts of tensors and JSON scalars (a CONDITIONING is
`[[cond, {"pooled_output": ...}], ...]`). They go to disk as one safetensors file per key,
tensors bit for bit, the structure and a content digest in its metadata, beside a small JSON
index of sizes and last use. Several processes may share the folder: entry files appear
atomically, the index is rewritten under an inter-process lock, and whatever the index misses
(a crash between the two) is found again in the folder. A corrupt entry is a miss that the
next put rewrites; a full or read-only disk turns the store into memory-only, with one warning.
"""
import collections
import json
import logging
import os
import pathlib
import re
import threading
import time

import safetensors
import safetensors.torch
import torch

from .files import atomic_save, atomic_write, digest, file_lock

log = logging.getLogger("sprint")

FORMAT = 1
INDEX = "index.json"
SUFFIX = ".safetensors"
ENTRY = re.compile(r"[0-9a-f]{32}\.safetensors")   # a key digest: only these files are Sprint's (a user's own are never touched)
STALE_PARTIAL_S = 3600      # a temp file this old was left by a crash, not by a writer at work


class Uncacheable(TypeError):
    """The value holds something that cannot be stored exactly (a live object)."""


def flatten(value):
    """(tensors, skeleton): the value's tensors by name and a JSON skeleton that rebuilds it."""
    tensors = {}

    def walk(v):
        if isinstance(v, torch.Tensor):
            name = f"t{len(tensors)}"
            tensors[name] = v.detach().to("cpu").contiguous()
            return {"tensor": name}
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, tuple):
            return {"tuple": [walk(x) for x in v]}
        if isinstance(v, dict):
            if not all(isinstance(k, str) for k in v):
                raise Uncacheable("dict with non-string keys")
            return {"dict": {k: walk(x) for k, x in v.items()}}
        if v is None or isinstance(v, (bool, int, float, str)):
            return {"value": v}
        raise Uncacheable(f"cannot store a {type(v).__name__} exactly")

    return tensors, walk(value)


def unflatten(tensors, skeleton):
    """Rebuild a value from flatten()'s output, with fresh copies of its tensors."""
    def walk(s):
        if isinstance(s, list):
            return [walk(x) for x in s]
        (kind, v), = s.items()
        if kind == "tensor":
            return tensors[v].clone()
        if kind == "tuple":
            return tuple(walk(x) for x in v)
        if kind == "dict":
            return {k: walk(x) for k, x in v.items()}
        if kind == "value":
            return v
        raise ValueError(f"unknown skeleton node {kind!r}")
    return walk(skeleton)


def _nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors.values())


class DiskStore:
    """One safetensors file per key plus index.json {key: {"bytes", "used", "label"}}, bounded
    in bytes (least recently used entries go first), shareable between processes."""

    def __init__(self, folder, limit_bytes):
        self.folder = pathlib.Path(folder)
        self.limit = limit_bytes
        self.disabled = None          # why the store went memory-only, once it has
        self._touched = {}            # hits not yet written to the index: key -> time

    def path(self, key):
        return self.folder / f"{key}{SUFFIX}"

    def get(self, key):
        """(tensors, skeleton), or None for an absent or unreadable entry."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            if (meta.get("key") != key or meta.get("format") != str(FORMAT)
                    or meta.get("digest") != digest(tensors, meta.get("skeleton"))):
                raise ValueError("key, format or content digest mismatch")
            skeleton = json.loads(meta["skeleton"])
            unflatten(tensors, skeleton)       # a skeleton that does not rebuild is as corrupt as a bad tensor
        except Exception as e:     # truncated, bit-flipped, foreign: a miss, rewritten by the next put
            log.warning("Sprint prompt cache: ignoring unreadable entry %s (%s)", path.name, e)
            return None
        self._touched[key] = time.time()
        return tensors, skeleton

    def put(self, key, tensors, skeleton, label=""):
        if self.disabled:
            return
        if _nbytes(tensors) > self.limit:      # would evict everything else and then itself
            return
        meta = {"key": key, "format": str(FORMAT), "skeleton": json.dumps(skeleton)}
        meta["digest"] = digest(tensors, meta["skeleton"])
        try:
            atomic_save(self.path(key), lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=meta))
            with file_lock(self.folder / INDEX):
                entries = self._entries()          # finds the new file (unless another process evicted it)
                if key in entries:
                    entries[key].update(used=time.time(), label=label[:80])
                self._evict(entries)
                self._write(entries)
        except (OSError, safetensors.SafetensorError) as e:   # ENOSPC (safetensors raises its own), EROFS, EACCES
            self.disable(e)

    def disable(self, error):
        """Keep generating, memory-only, with one warning."""
        self.disabled = f"{type(error).__name__}: {error}"
        log.warning("Sprint prompt cache: disk store %s disabled, continuing memory-only (%s)", self.folder, self.disabled)

    def _index(self):
        """index.json's well-formed entries; anything else in it is dropped (and rebuilt from the folder)."""
        try:
            data = json.loads((self.folder / INDEX).read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("Sprint prompt cache: rebuilding unreadable index in %s (%s)", self.folder, e)
            return {}
        entries = data.get("entries") if isinstance(data, dict) else None
        if not isinstance(entries, dict):
            log.warning("Sprint prompt cache: rebuilding malformed index in %s", self.folder)
            return {}
        return {k: {"used": float(e["used"]), "label": str(e.get("label", ""))[:80]} for k, e in entries.items()
                if isinstance(e, dict) and type(e.get("used")) in (int, float)}

    def _entries(self):
        """The index reconciled with the folder: vanished files dropped, unindexed Sprint entries
        adopted, stale temp files of crashed writers removed. Caller holds the lock."""
        entries = self._index()
        found = {}
        for item in os.scandir(self.folder):
            try:
                st = item.stat()
            except FileNotFoundError:      # renamed or removed by another process meanwhile
                continue
            if ENTRY.fullmatch(item.name) and item.is_file(follow_symlinks=False):
                key = item.name[:-len(SUFFIX)]
                found[key] = dict(entries.get(key) or {"used": st.st_mtime, "label": ""}, bytes=st.st_size)
            elif item.name.endswith(".partial") and time.time() - st.st_mtime > STALE_PARTIAL_S:
                _unlink(item.path)
        for key, used in self._touched.items():
            if key in found:
                found[key]["used"] = max(found[key]["used"], used)
        return found

    def _evict(self, entries):
        total = sum(e["bytes"] for e in entries.values())
        for key in sorted(entries, key=lambda k: entries[k]["used"]):
            if total <= self.limit:
                break
            total -= entries.pop(key)["bytes"]
            _unlink(self.path(key))

    def _write(self, entries):
        with atomic_write(self.folder / INDEX, "w") as f:
            json.dump({"format": FORMAT, "entries": entries}, f)
        self._touched.clear()

    def stats(self):
        if not self.folder.is_dir():
            return {"entries": 0, "bytes": 0}
        try:
            with file_lock(self.folder / INDEX):
                entries = self._entries()
        except OSError as e:      # e.g. the lock file is a symlink (refused)
            self.disable(e)
            return {"entries": 0, "bytes": 0}
        return {"entries": len(entries), "bytes": sum(e["bytes"] for e in entries.values())}

    def clear(self):
        if not self.folder.is_dir():
            return
        try:
            with file_lock(self.folder / INDEX):
                for key in self._entries():
                    _unlink(self.path(key))
                self._write({})
        except OSError as e:      # read-only: nothing of ours can be there to remove
            self.disable(e)


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:               # already gone, or open elsewhere (Windows): the next reconcile retries
        pass


class PromptCache:
    """Memory LRU (bounded in bytes) in front of an optional DiskStore. Thread-safe."""

    def __init__(self, memory_bytes, disk_folder=None, disk_bytes=0):
        self._lock = threading.Lock()
        self._memory = collections.OrderedDict()     # key -> (tensors, skeleton, nbytes)
        self._memory_bytes = 0
        self.memory_limit = memory_bytes
        self.disk = DiskStore(disk_folder, disk_bytes) if disk_folder else None
        self.counts = collections.Counter()

    def get(self, key, disk=True):
        """(value, "memory" | "disk") or (None, "miss")."""
        with self._lock:
            entry = self._memory.get(key)
            if entry is not None:
                self._memory.move_to_end(key)
                self.counts["memory"] += 1
                return unflatten(*entry[:2]), "memory"
            found = self.disk.get(key) if disk and self.disk else None
            if found is None:
                self.counts["miss"] += 1
                return None, "miss"
            self._remember(key, *found)
            self.counts["disk"] += 1
            return unflatten(*found), "disk"

    def put(self, key, value, disk=True, label=""):
        """Store a copy of value (raises Uncacheable for values that cannot round-trip)."""
        tensors, skeleton = flatten(value)
        tensors = {k: t.clone() for k, t in tensors.items()}    # later in-place edits of value stay out
        with self._lock:
            self._remember(key, tensors, skeleton)
            if disk and self.disk:
                self.disk.put(key, tensors, skeleton, label)

    def _remember(self, key, tensors, skeleton):
        if key in self._memory:
            self._memory_bytes -= self._memory.pop(key)[2]
        size = _nbytes(tensors)
        if size <= self.memory_limit:
            self._memory[key] = (tensors, skeleton, size)
            self._memory_bytes += size
        self._shrink()

    def _shrink(self):
        while self._memory_bytes > self.memory_limit:
            self._memory_bytes -= self._memory.popitem(last=False)[1][2]

    def bypassed(self):
        """Count an encode that could not use the cache (see stats)."""
        with self._lock:
            self.counts["bypass"] += 1

    def configure(self, memory_bytes=None, disk_bytes=None):
        with self._lock:
            if memory_bytes is not None:
                self.memory_limit = memory_bytes
                self._shrink()
            if disk_bytes is not None and self.disk:
                self.disk.limit = disk_bytes

    def clear(self, disk=False):
        with self._lock:
            self._memory.clear()
            self._memory_bytes = 0
            if disk and self.disk:
                self.disk.clear()

    def stats(self, disk=True):
        """Counts and sizes; disk=True also reads the disk folder (under its lock)."""
        with self._lock:
            out = {"hits_memory": self.counts["memory"], "hits_disk": self.counts["disk"],
                   "misses": self.counts["miss"], "bypassed": self.counts["bypass"],
                   "memory_entries": len(self._memory), "memory_bytes": self._memory_bytes,
                   "memory_limit": self.memory_limit}
            if disk and self.disk:
                out.update({f"disk_{k}": v for k, v in self.disk.stats().items()},
                           disk_limit=self.disk.limit, disk_folder=str(self.disk.folder), disk_disabled=self.disk.disabled)
            return out
