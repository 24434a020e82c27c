"""Prompt-embedding store: exact round trips, LRU bounds, disk across restarts, corruption,
two writer processes, a full disk."""
import hashlib
import json
import logging
import pathlib
import subprocess
import sys

import faults
import pytest
import torch

from sprint.engines import prompt_cache as P

KB = 1024


def K(name):
    """A key shaped like the real ones (a 32-hex digest): only such files are the store's entries."""
    return hashlib.md5(name.encode()).hexdigest()


def conditioning(seed, tokens=77, width=64):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, width, generator=g),
             {"pooled_output": torch.randn(1, width, generator=g).to(torch.bfloat16), "strength": 0.7,
              "area": (1, 2, 3, 4), "note": None, "flags": [True, "x"]}]]


def assert_identical(a, b):
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_identical(x, y)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_identical(a[k], b[k])
    else:
        assert a == b


def assert_miss_then_rewritten(folder, caplog):
    """The damaged entry K("k") in `folder` reads as a logged miss; a new put rewrites it whole."""
    fresh = P.PromptCache(KB * KB, folder, 10 * KB * KB)
    with caplog.at_level(logging.WARNING, "sprint"):
        assert fresh.get(K("k")) == (None, "miss")
    assert "unreadable entry" in caplog.text
    fresh.put(K("k"), conditioning(3))
    assert_identical(P.PromptCache(KB * KB, folder, 10 * KB * KB).get(K("k"))[0], conditioning(3))


def test_flatten_round_trips_exactly_and_refuses_live_objects():
    value = conditioning(0)
    assert_identical(P.unflatten(*P.flatten(value)), value)
    with pytest.raises(P.Uncacheable):
        P.flatten([[torch.zeros(1), {"hooks": object()}]])


def test_memory_hit_is_a_private_copy():
    cache = P.PromptCache(memory_bytes=10 * 1024 * KB)
    value = conditioning(1)
    cache.put("k", value)
    value[0][0].add_(1)                      # the caller edits its own copy afterwards
    got, where = cache.get("k")
    assert where == "memory"
    assert_identical(got, conditioning(1))
    got[0][0].zero_()                        # and edits to a hit do not reach the cache
    assert_identical(cache.get("k")[0], conditioning(1))
    assert cache.get("absent") == (None, "miss")


def test_memory_lru_stays_within_its_bound():
    size = P._nbytes(P.flatten(conditioning(0))[0])
    cache = P.PromptCache(memory_bytes=3 * size)
    for i in range(3):
        cache.put(f"k{i}", conditioning(i))
    cache.get("k0")                          # k0 becomes the most recently used
    cache.put("k3", conditioning(3))
    stats = cache.stats()
    assert stats["memory_entries"] == 3 and stats["memory_bytes"] <= 3 * size
    assert cache.get("k1")[1] == "miss" and cache.get("k0")[1] == "memory"
    cache.configure(memory_bytes=size)
    assert cache.stats()["memory_entries"] == 1 and cache.stats()["memory_bytes"] <= size
    cache.put("huge", conditioning(9, tokens=400))       # larger than the whole bound: not kept
    assert cache.get("huge")[1] == "miss"


def test_disk_survives_a_restart_bit_for_bit(tmp_path):
    P.PromptCache(KB * KB, tmp_path, 10 * KB * KB).put(K("k"), conditioning(2), label="a cat")
    restarted = P.PromptCache(KB * KB, tmp_path, 10 * KB * KB)
    got, where = restarted.get(K("k"))
    assert where == "disk"
    assert_identical(got, conditioning(2))
    assert restarted.get(K("k"))[1] == "memory"
    index = json.loads((tmp_path / P.INDEX).read_text())["entries"]
    assert index[K("k")]["label"] == "a cat" and index[K("k")]["bytes"] == (tmp_path / f"{K('k')}.safetensors").stat().st_size
    assert restarted.get(K("k"), disk=False)[1] == "memory"
    assert P.PromptCache(KB * KB, tmp_path, 10 * KB * KB).get(K("k"), disk=False)[1] == "miss"


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "other key"])
def test_a_corrupt_entry_is_a_miss_then_rewritten(tmp_path, damage, caplog):
    cache = P.PromptCache(KB * KB, tmp_path, 10 * KB * KB)
    cache.put(K("k"), conditioning(3))
    path = tmp_path / f"{K('k')}.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "flip":
        data[-10] ^= 0xFF                    # inside the tensor bytes: only the digest notices
    elif damage == "garbage":
        data = bytearray(b"not a safetensors file")
    else:
        cache.put(K("other"), conditioning(4))
        data = bytearray((tmp_path / f"{K('other')}.safetensors").read_bytes())
    path.write_bytes(bytes(data))
    assert_miss_then_rewritten(tmp_path, caplog)


def test_disk_is_bounded_least_recently_used_first_and_index_rebuilds(tmp_path):
    one = P.PromptCache(KB * KB, tmp_path, 10 * KB * KB)
    one.put(K("a"), conditioning(0))
    entry = (tmp_path / f"{K('a')}.safetensors").stat().st_size
    store = P.PromptCache(KB * KB, tmp_path, int(2.5 * entry))
    store.put(K("b"), conditioning(1))
    reader = P.PromptCache(KB * KB, tmp_path, int(2.5 * entry))     # another process uses a
    assert reader.get(K("a"))[1] == "disk"
    reader.put(K("c"), conditioning(2))         # over the bound: b, the least recently used, goes
    assert sorted(p.stem for p in tmp_path.glob("*.safetensors")) == sorted([K("a"), K("c")])
    (tmp_path / P.INDEX).write_text("{broken")
    stats = P.PromptCache(KB * KB, tmp_path, int(2.5 * entry)).stats()
    assert stats["disk_entries"] == 2 and stats["disk_bytes"] == 2 * entry
    P.PromptCache(KB * KB, tmp_path, int(2.5 * entry)).clear(disk=True)
    assert list(tmp_path.glob("*.safetensors")) == []


WRITER = """
import sys, torch
sys.path.insert(0, {tests!r}); import conftest
from sprint.engines import prompt_cache as P
import hashlib; K = lambda name: hashlib.md5(name.encode()).hexdigest()
folder, name = sys.argv[1], sys.argv[2]
cache = P.PromptCache(1 << 20, folder, 1 << 30)
for i in range(25):
    cache.put(K(f"{{name}}{{i}}"), [[torch.full((1, 77, 64), float(i)), {{"pooled_output": torch.zeros(1, 64)}}]])
    cache.put(K("shared"), [[torch.ones(1, 77, 64), {{}}]])
"""


def test_two_writer_processes_share_one_folder(tmp_path):
    script = WRITER.format(tests=str(pathlib.Path(__file__).resolve().parents[1]))
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), name]) for name in ("a", "b")]
    assert [p.wait(300) for p in procs] == [0, 0]
    index = json.loads((tmp_path / P.INDEX).read_text())["entries"]
    assert set(index) == {K(f"{n}{i}") for n in "ab" for i in range(25)} | {K("shared")}
    reader = P.PromptCache(1 << 20, tmp_path, 1 << 30)
    for key in index:
        assert reader.get(key)[1] == "disk", key
    assert not list(tmp_path.glob(".*partial"))


def test_a_full_disk_degrades_to_memory_with_one_warning(tmp_path, caplog):
    """A real full file system (a 1 MiB tmpfs): safetensors raises its own SafetensorError there."""
    with faults.tmpfs(tmp_path / "disk", "1m") as disk:
        cache = P.PromptCache(2 * KB * KB, disk, 10 * KB * KB)
        with caplog.at_level(logging.WARNING, "sprint"):
            for i in range(8):                 # ~160 KiB each: an entry write fills the disk on the way
                cache.put(K(f"k{i}"), conditioning(i, tokens=77 * 8))
        assert caplog.text.count("memory-only") == 1 and "SafetensorError" in caplog.text and "No space left" in caplog.text
        assert all(cache.get(K(f"k{i}"))[1] == "memory" for i in range(8))
        assert cache.stats()["disk_disabled"]
        written = [p.stem for p in disk.glob("*.safetensors")]
        assert written and all(P.PromptCache(2 * KB * KB, disk, 10 * KB * KB).get(k)[1] == "disk" for k in written)
        assert not list(disk.glob(".*partial"))


def test_orphans_of_a_crash_are_adopted_and_stale_temp_files_removed(tmp_path):
    import os
    import time
    P.PromptCache(KB * KB, tmp_path, 10 * KB * KB).put(K("a"), conditioning(0))
    (tmp_path / P.INDEX).unlink()            # crash between writing the entry and the index
    stale = tmp_path / ".b.safetensors.x.partial"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 2 * P.STALE_PARTIAL_S,) * 2)
    fresh = tmp_path / ".c.safetensors.y.partial"     # a writer at work: left alone
    fresh.write_bytes(b"half")
    P.PromptCache(KB * KB, tmp_path, 10 * KB * KB).put(K("b"), conditioning(1))
    assert set(json.loads((tmp_path / P.INDEX).read_text())["entries"]) == {K("a"), K("b")}
    assert not stale.exists() and fresh.exists()


def test_changed_header_metadata_is_a_miss_then_rewritten(tmp_path, caplog):
    """The digest covers the skeleton: an edited (still valid JSON) header is corrupt, not a KeyError."""
    import safetensors.torch
    cache = P.PromptCache(KB * KB, tmp_path, 10 * KB * KB)
    cache.put(K("k"), conditioning(3))
    path = tmp_path / f"{K('k')}.safetensors"
    with P.safetensors.safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    skeleton = json.loads(meta["skeleton"])
    skeleton[0][0] = {"tensor": "t9"}                    # names a tensor that is not there
    safetensors.torch.save_file(tensors, str(path), metadata=dict(meta, skeleton=json.dumps(skeleton)))
    assert_miss_then_rewritten(tmp_path, caplog)
    with pytest.raises(ValueError, match="unknown skeleton node"):
        P.unflatten({}, [{"bogus": 1}])                  # never a silently wrong CONDITIONING


@pytest.mark.parametrize("index", [[1, 2], {"entries": []}, {"entries": {"x": "y"}},
                                   {"entries": {K("a"): {"used": "yesterday", "bytes": "many"}}}, "null"])
def test_a_malformed_index_is_repaired(tmp_path, index):
    P.PromptCache(KB * KB, tmp_path, 10 * KB * KB).put(K("a"), conditioning(0))
    (tmp_path / P.INDEX).write_text(index if isinstance(index, str) else json.dumps(index))
    cache = P.PromptCache(KB * KB, tmp_path, 10 * KB * KB)
    assert cache.stats()["disk_entries"] == 1
    cache.put(K("b"), conditioning(1))
    assert set(json.loads((tmp_path / P.INDEX).read_text())["entries"]) == {K("a"), K("b")}
    (tmp_path / P.INDEX).write_text(json.dumps({"entries": {K("a"): {"used": []}}}))
    cache.clear(disk=True)
    assert list(tmp_path.glob("*.safetensors")) == [] and cache.stats()["disk_entries"] == 0


def test_only_its_own_entries_are_ever_adopted_or_deleted(tmp_path):
    import safetensors.torch
    mine = tmp_path / "my_lora.safetensors"
    safetensors.torch.save_file({"w": torch.ones(4096)}, str(mine))     # a user's file in the folder
    shaped = tmp_path / f"{K('x').upper()}.safetensors"                  # not a key digest either
    shaped.write_bytes(mine.read_bytes())
    users = sorted([mine.name, shaped.name])
    P.PromptCache(KB * KB, tmp_path, 10 * KB * KB).put(K("a"), conditioning(0))
    entry = (tmp_path / f"{K('a')}.safetensors").stat().st_size
    cache = P.PromptCache(KB * KB, tmp_path, int(1.5 * entry))           # room for one entry, not two
    cache.put(K("b"), conditioning(1))                                   # evicts a, and only a
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == sorted(users + [f"{K('b')}.safetensors"])
    assert cache.stats()["disk_entries"] == 1
    cache.clear(disk=True)
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == users


def test_an_entry_larger_than_the_disk_bound_does_not_empty_the_cache(tmp_path):
    cache = P.PromptCache(10 * KB * KB, tmp_path, 100 * KB)
    cache.put(K("a"), conditioning(0))
    cache.put(K("b"), conditioning(1))
    cache.put(K("huge"), conditioning(2, tokens=77 * 8))       # ~160 KiB > the 100 KiB bound
    assert sorted(p.stem for p in tmp_path.glob("*.safetensors")) == sorted([K("a"), K("b")])
    assert cache.get(K("huge"))[1] == "memory"


def test_a_read_only_existing_folder_serves_hits_and_goes_memory_only(tmp_path, caplog):
    """A real read-only bind mount: stats, hits and clear work; new entries stay in memory."""
    P.PromptCache(KB * KB, tmp_path, 10 * KB * KB).put(K("a"), conditioning(0))
    (tmp_path / (P.INDEX + ".lock")).unlink()
    with faults.read_only(tmp_path):
        cache = P.PromptCache(KB * KB, tmp_path, 10 * KB * KB)
        assert cache.stats()["disk_entries"] == 1
        assert cache.get(K("a"))[1] == "disk"
        with caplog.at_level(logging.WARNING, "sprint"):
            for i in range(3):
                cache.put(K(f"k{i}"), conditioning(i))
        assert caplog.text.count("memory-only") == 1 and "Read-only file system" in caplog.text
        assert cache.get(K("k2"))[1] == "memory"
        cache.clear(disk=True)
    assert [p.stem for p in tmp_path.glob("*.safetensors")] == [K("a")]


def test_a_missing_folder_on_a_read_only_volume(tmp_path, caplog):
    with faults.read_only(tmp_path):
        cache = P.PromptCache(KB * KB, tmp_path / "sprint_text_cache", 10 * KB * KB)
        assert cache.stats()["disk_entries"] == 0
        with caplog.at_level(logging.WARNING, "sprint"):
            cache.put(K("a"), conditioning(0))
            cache.put(K("b"), conditioning(1))
        assert caplog.text.count("memory-only") == 1 and cache.get(K("b"))[1] == "memory"
        cache.clear(disk=True)


def test_a_symlinked_lock_file_creates_nothing_outside(tmp_path, caplog):
    folder, outside = tmp_path / "cache", tmp_path / "outside"
    folder.mkdir(), outside.mkdir()
    (folder / (P.INDEX + ".lock")).symlink_to(outside / "planted")
    cache = P.PromptCache(KB * KB, folder, 10 * KB * KB)
    with caplog.at_level(logging.WARNING, "sprint"):
        cache.put(K("a"), conditioning(0))
        stats = cache.stats()
    assert stats["disk_disabled"] and "memory-only" in caplog.text and cache.get(K("a"))[1] == "memory"
    assert list(outside.iterdir()) == []
