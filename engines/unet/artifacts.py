"""Engine artifacts on disk, each a folder named by its key with a sidecar `sprint.json`.

The key says what the artifact is valid for (weights digest including patches/LoRA, shape
profile, precision, backend, device, runtime and exporter versions); the sidecar also lists
every file's size and digest. A folder whose sidecar is missing, foreign, for another key, or
whose files do not match their digests is never loaded: `ensure` rebuilds it. Builds happen in
a temp folder that is renamed into place whole, under an inter-process lock, so two builders
of one key take turns and the second reuses the first's result.
"""
import hashlib
import json
import logging
import os
import pathlib
import shutil
import stat as stat_mode
import tempfile

from ..files import atomic_write, digest, file_lock

log = logging.getLogger("sprint")

FORMAT = "sprint-unet-engine/1"
SIDECAR = "sprint.json"


class ArtifactError(ValueError):
    """An artifact folder that cannot be trusted; the message says why."""


class Artifact:
    def __init__(self, path, record):
        self.path, self.key, self.meta = pathlib.Path(path), record["key"], record.get("meta", {})
        self.files = record["files"]

    @property
    def name(self):
        return self.path.name

    @property
    def nbytes(self):
        return sum(f["bytes"] for f in self.files.values())


def artifact_name(key):
    """Readable and unique: backend-precision-<digest of the whole key>."""
    return f"{key['backend']}-{key['precision']}-{digest(key)[:20]}"


def canonical(key):
    """The key as its sidecar stores it (JSON types: tuples become lists)."""
    return json.loads(json.dumps(key, sort_keys=True))


def file_digest(path):
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


_verified = {}   # (folder, sidecar and file stats) -> True: hash each unchanged artifact once per process


def _plain(name):
    return isinstance(name, str) and name not in ("", ".", "..") and name == os.path.basename(name) and "\\" not in name


def _check_record(path, record):
    """Everything a sidecar must be before any file it names is opened: a key, and file names that are
    plain names in this folder (never ../ or absolute: nothing outside the folder is read or named)."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ArtifactError(f"{path.name}: sidecar is not a {FORMAT} record")
    files = record.get("files")
    if not isinstance(record.get("key"), dict) or not isinstance(files, dict) or not files:
        raise ArtifactError(f"{path.name}: sidecar has no key or no file list")
    for name, f in files.items():
        if not _plain(name) or name == SIDECAR:
            raise ArtifactError(f"{path.name}: sidecar lists a file outside its folder")
        if not (isinstance(f, dict) and type(f.get("bytes")) is int and isinstance(f.get("digest"), str)):
            raise ArtifactError(f"{path.name}: sidecar entry for {name} has no size and digest")
    try:
        present = {p.name for p in path.iterdir() if p.name != SIDECAR and p.is_file()}
    except OSError as e:
        raise ArtifactError(f"{path.name}: unreadable folder ({e.strerror})") from None
    if present != set(files):
        raise ArtifactError(f"{path.name}: its files ({', '.join(sorted(present)) or 'none'}) are not the ones its "
                            f"sidecar lists ({', '.join(sorted(files))})")


def read(path):
    """The Artifact in folder `path`, verified; raises ArtifactError saying what is wrong."""
    path = pathlib.Path(path)
    try:
        record = json.loads((path / SIDECAR).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path.name}: no {SIDECAR} sidecar (not a Sprint engine)") from None
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path.name}: unreadable sidecar ({e})") from None
    _check_record(path, record)
    stats = []
    for name, f in record["files"].items():
        try:
            stat = os.lstat(path / name)
        except OSError:
            raise ArtifactError(f"{path.name}: {name} is missing") from None
        if not stat_mode.S_ISREG(stat.st_mode):
            raise ArtifactError(f"{path.name}: {name} is not a regular file")
        if stat.st_size != f["bytes"]:
            raise ArtifactError(f"{path.name}: {name} has {stat.st_size} bytes, the sidecar says {f['bytes']} (truncated or replaced)")
        stats.append((name, stat.st_size, stat.st_mtime_ns, stat.st_ino))
    tag = (str(path), (path / SIDECAR).stat().st_mtime_ns, tuple(stats))
    if tag not in _verified:
        for name, f in record["files"].items():
            if file_digest(path / name) != f["digest"]:
                raise ArtifactError(f"{path.name}: {name} does not match its digest (corrupt)")
        _verified[tag] = True
    return Artifact(path, record)


class ArtifactStore:
    def __init__(self, root):
        self.root = pathlib.Path(root)

    def path(self, key):
        return self.root / artifact_name(canonical(key))

    def names(self):
        """Folders that carry a sidecar (candidates for a loader; verified when opened)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if not p.name.startswith(".") and not p.is_symlink() and (p / SIDECAR).is_file())

    def folder(self, name):
        """The folder of engine `name`, only if it is one of names() and lies inside the store (a
        name from a client is never joined to a path unchecked); ArtifactError otherwise."""
        if not isinstance(name, str) or not _plain(name) or name not in self.names():
            raise ArtifactError(f"{name!r} is not an engine in {self.root.name}")
        path = self.root / name
        if path.resolve().parent != self.root.resolve():
            raise ArtifactError(f"{name!r} is not an engine in {self.root.name}")
        return path

    def lookup(self, key):
        """The verified artifact for `key`, or None (logging why an existing one is refused)."""
        key, path = canonical(key), self.path(key)
        if not path.exists():
            return None
        try:
            artifact = read(path)
        except ArtifactError as e:
            log.warning("Sprint engine %s; it will be rebuilt", e)
            return None
        if artifact.key != key:
            log.warning("Sprint engine %s: its sidecar key differs from the requested one; it will be rebuilt", path.name)
            return None
        return artifact

    def ensure(self, key, build, meta=None):
        """The artifact for `key`, built with build(folder) -> meta dict when absent or invalid.

        Concurrent callers (threads or processes) take turns on a lock; later ones find the
        first one's artifact and return it without building."""
        key, path = canonical(key), self.path(key)
        with file_lock(path):
            artifact = self.lookup(key)
            if artifact is not None:
                return artifact
            self.root.mkdir(parents=True, exist_ok=True)
            self.sweep(path.name)
            tmp = pathlib.Path(tempfile.mkdtemp(dir=self.root, prefix=f".{path.name}.", suffix=".partial"))
            try:
                built = build(tmp) or {}
                files = {p.name: {"bytes": p.stat().st_size, "digest": file_digest(p)}
                         for p in sorted(tmp.iterdir()) if p.is_file()}
                record = {"format": FORMAT, "key": key, "meta": {**(meta or {}), **built}, "files": files}
                with atomic_write(tmp / SIDECAR, "w") as f:
                    json.dump(record, f, indent=1, sort_keys=True)
                replace_folder(tmp, path)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return read(path)

    def sweep(self, building):
        """Remove build folders of builders that died (SIGKILL, power loss): every `.<name>.*.partial`
        whose key lock nobody holds. The caller holds the lock of `building`."""
        for tmp in self.root.glob(".*.partial"):
            name = tmp.name[1:].split(".")[0]
            if name == building:
                shutil.rmtree(tmp, ignore_errors=True)
                continue
            with file_lock(self.root / name, wait=False) as free:
                if free:
                    shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(src, dst):
    """Move folder src to dst, replacing whatever was there (a refused artifact)."""
    if dst.exists():
        trash = dst.with_name(f".{dst.name}.{os.getpid()}.old")
        os.replace(dst, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(src, dst)
