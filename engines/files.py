"""On-disk safety shared by every Sprint store: atomic writes, inter-process locks, digests.

Two ComfyUI processes may share one models folder, and a crash may come mid-write: a file is
either complete or absent, and builders of the same artifact take turns.
"""
import contextlib
import errno
import hashlib
import os
import pathlib
import tempfile
import time

import torch

if os.name == "nt":
    import msvcrt

    def _lock(fd):
        while True:
            try:
                return msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
            except OSError:       # LK_LOCK gives up after ~10 s; keep waiting
                time.sleep(0.1)

    def _try_lock(fd):
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(fd):
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock(fd):
        fcntl.flock(fd, fcntl.LOCK_EX)

    def _try_lock(fd):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _unlock(fd):
        fcntl.flock(fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def _temp_beside(path):
    """A temp file name beside `path`, renamed over it when the block succeeds (after an fsync),
    removed when it fails: `path` is either the complete new file or what it was before."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Write to a temp file beside `path`, fsync, then rename over it; nothing half-written."""
    with _temp_beside(path) as tmp, open(tmp, mode) as f:
        yield f


def atomic_save(path, save):
    """Atomically create `path` through a writer that wants a file name: save(tmp_path)."""
    with _temp_beside(path) as tmp:
        save(tmp)


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)     # a lock file symlinked elsewhere is refused (ELOOP), never created there


def _open_lock(lock):
    """A descriptor on the lock file, or None where it can neither be created nor opened because the
    folder is read-only to us (then nothing we could do there needs one: every write fails too)."""
    try:
        return os.open(lock, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
    try:
        return os.open(lock, os.O_RDONLY | _NOFOLLOW)      # flock works on a read-only descriptor
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def file_lock(path, wait=True):
    """An exclusive lock between processes (and threads) on `path` + '.lock'. Yields True when
    held; with wait=False yields False at once when someone else holds it."""
    lock = pathlib.Path(f"{path}.lock")
    if not lock.parent.is_dir():
        lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_lock(lock)
    if fd is None:
        yield True
        return
    try:
        if wait:
            _lock(fd)
        held = True if wait else _try_lock(fd)
        try:
            yield held
        finally:
            if held:
                _unlock(fd)
    finally:
        os.close(fd)


def digest(*items):
    """A stable hex digest of nested tuples/lists/dicts of tensors, numbers, strings and objects.

    Tensors hash by dtype, shape and bytes; objects by class name and attributes; callables by
    qualified name. Equal content gives equal digests across processes."""
    h = hashlib.blake2b(digest_size=16)
    _feed(h, items)
    return h.hexdigest()


def _feed(h, obj):
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())   # 0-d tensors too; no copy
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for x in obj:
            _feed(h, x)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=repr):
            _feed(h, k)
            _feed(h, obj[k])
    elif isinstance(obj, (set, frozenset)):
        _feed(h, sorted(obj, key=repr))
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.dtype)):
        h.update(f"{type(obj).__name__}:{obj!r}".encode())
    elif callable(obj) and hasattr(obj, "__qualname__"):
        h.update(f"F{obj.__module__}.{obj.__qualname__}".encode())
    else:
        h.update(f"O{type(obj).__module__}.{type(obj).__qualname__}".encode())
        _feed(h, {k: v for k, v in vars(obj).items() if not k.startswith("_")} if hasattr(obj, "__dict__") else repr(obj))
