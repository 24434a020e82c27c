"""Real faults for tests: a small tmpfs (a disk that fills up for real) and a read-only bind mount
(EROFS for real, which chmod cannot give a root process). Both need mount(8) rights (root in a
container that allows it); without them the test is skipped, saying so."""
import contextlib
import subprocess

import pytest


def _mount(*args):
    run = subprocess.run(["mount", *args], capture_output=True, text=True)
    if run.returncode:
        pytest.skip(f"cannot mount here ({run.stderr.strip() or run.returncode}): this fault needs mount rights")


def _umount(path):
    subprocess.run(["umount", "-l", str(path)], check=True)


@contextlib.contextmanager
def tmpfs(path, size="256k"):
    """`path` (created) becomes a tmpfs of `size`: writes past it fail with ENOSPC."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        _umount(path)


@contextlib.contextmanager
def read_only(path):
    """`path` (an existing folder) is read-only for everyone, root included, within the block."""
    _mount("--bind", str(path), str(path))
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
        yield path
    finally:
        _umount(path)
