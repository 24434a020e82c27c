"""Atomic writes, inter-process locks and content digests."""
import multiprocessing
import pathlib

import pytest
import torch

from sprint.engines import files


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a.bin"
    with files.atomic_write(target) as f:
        f.write(b"one")
    with pytest.raises(RuntimeError):
        with files.atomic_write(target) as f:
            f.write(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"one"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_atomic_save_through_a_file_name_writer(tmp_path):
    target = tmp_path / "sub" / "b.txt"
    files.atomic_save(target, lambda name: pathlib.Path(name).write_text("ok"))
    assert target.read_text() == "ok"
    with pytest.raises(ValueError):
        files.atomic_save(target, lambda name: (_ for _ in ()).throw(ValueError()))
    assert sorted(p.name for p in target.parent.iterdir()) == ["b.txt"]


def _append_under_lock(path, tag):
    for _ in range(20):
        with files.file_lock(path):
            text = path.read_text() if path.exists() else ""
            path.write_text(text + tag)      # read-modify-write: races lose updates without the lock


def test_file_lock_serialises_processes(tmp_path):
    path = tmp_path / "counter"
    ctx = multiprocessing.get_context("fork")   # children inherit the `sprint` alias
    procs = [ctx.Process(target=_append_under_lock, args=(path, t)) for t in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert sorted(path.read_text()) == ["a"] * 20 + ["b"] * 20


def test_digest_is_content_based():
    t = torch.arange(6.0).reshape(2, 3)
    assert files.digest(t) == files.digest(t.clone())
    assert files.digest(t) != files.digest(t.reshape(3, 2))
    assert files.digest(t) != files.digest(t.double())
    assert files.digest({"a": 1, "b": (t, None)}) == files.digest({"b": (t.clone(), None), "a": 1})
    assert files.digest(1) != files.digest(1.0) != files.digest("1")

    class Adapter:
        def __init__(self, w):
            self.weights = (w,)
    assert files.digest(Adapter(t)) == files.digest(Adapter(t.clone()))
    assert files.digest(Adapter(t)) != files.digest(Adapter(t + 1))


def test_file_lock_in_a_read_only_folder(tmp_path):
    """A read-only models volume (real EROFS): readers still lock an existing lock file, and a
    folder without one (where nothing can be written anyway) is not an error."""
    import faults
    (tmp_path / "with").mkdir()
    (tmp_path / "with" / "index.json.lock").write_bytes(b"")
    (tmp_path / "without").mkdir()
    with faults.read_only(tmp_path):
        for folder in ("with", "without"):
            with files.file_lock(tmp_path / folder / "index.json") as held:
                assert held
    assert not (tmp_path / "without" / "index.json.lock").exists()


def test_file_lock_never_follows_a_symlink_out(tmp_path):
    outside, folder = tmp_path / "outside", tmp_path / "store"
    outside.mkdir(), folder.mkdir()
    (folder / "index.json.lock").symlink_to(outside / "planted")
    with pytest.raises(OSError):
        with files.file_lock(folder / "index.json"):
            pass
    assert list(outside.iterdir()) == []


def _hold(path, ready, release):
    with files.file_lock(path):
        ready.set()
        release.wait(30)


def test_file_lock_without_waiting_says_whether_it_is_free(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(tmp_path / "x", ready, release))
    holder.start()
    assert ready.wait(30)
    with files.file_lock(tmp_path / "x", wait=False) as free:
        assert not free
    release.set()
    holder.join(30)
    with files.file_lock(tmp_path / "x", wait=False) as free:
        assert free
