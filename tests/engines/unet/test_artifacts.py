"""The engine artifact store: keyed folders with verified sidecars, rebuilt when they cannot be
trusted, built once by concurrent builders."""
import contextlib
import json
import multiprocessing
import os
import time

import pytest
import torch

from sprint.engines.unet import build as unet_build
from sprint.engines.unet.artifacts import SIDECAR, ArtifactStore, artifact_name, read, ArtifactError
from sprint.engines.unet.export import ShapeProfile

from toy_unet import needs_onnxruntime

KEY = {"backend": "onnxruntime", "precision": "fp32", "weights": "w1", "profile": {"batch": [1, 4]}}


def builder(log, payload=b"graph-bytes", delay=0.0):
    def build(folder):
        time.sleep(delay)
        (folder / "unet.onnx").write_bytes(payload)
        log.append(str(folder))
        return {"built_by": os.getpid()}
    return build


def test_built_once_then_reused(tmp_path):
    store, log = ArtifactStore(tmp_path), []
    a = store.ensure(KEY, builder(log))
    b = store.ensure(KEY, builder(log))
    assert len(log) == 1 and a.path == b.path == tmp_path / artifact_name(KEY)
    assert a.nbytes == len(b"graph-bytes") and a.meta["built_by"] == os.getpid()
    assert store.names() == [a.name] and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@needs_onnxruntime
def test_key_parts_give_distinct_artifacts():
    profile = ShapeProfile()
    keys = [unet_build.make_key("w1", "a", profile, "fp32", "onnxruntime", "cpu"),
            unet_build.make_key("w2", "a", profile, "fp32", "onnxruntime", "cpu"),           # weights / LoRA
            unet_build.make_key("w1", "a", ShapeProfile(batch=(1, 8)), "fp32", "onnxruntime", "cpu"),
            unet_build.make_key("w1", "a", profile, "int8", "onnxruntime", "cpu")]
    assert len({artifact_name(k) for k in keys}) == 4
    assert keys[0]["runtime"].startswith("onnxruntime ") and keys[0]["exporter"].startswith("torch ")
    assert unet_build.source_key(keys[3]) == keys[0]
    with pytest.raises(ValueError, match="unknown engine"):
        unet_build.make_key("w1", "a", profile, "int4", "onnxruntime", "cpu")


def corrupt_same_size(path):
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "truncate", "no sidecar", "foreign sidecar", "other key"])
def test_untrusted_artifact_is_rebuilt(tmp_path, damage):
    store, log = ArtifactStore(tmp_path), []
    path = store.ensure(KEY, builder(log)).path
    if damage == "flip":
        corrupt_same_size(path / "unet.onnx")
    elif damage == "truncate":
        (path / "unet.onnx").write_bytes(b"gra")
    elif damage == "no sidecar":
        (path / SIDECAR).unlink()
    elif damage == "foreign sidecar":
        (path / SIDECAR).write_text(json.dumps({"format": "something-else"}))
    else:
        record = json.loads((path / SIDECAR).read_text())
        record["key"]["weights"] = "w9"
        (path / SIDECAR).write_text(json.dumps(record))
    assert store.lookup(KEY) is None
    rebuilt = store.ensure(KEY, builder(log))
    assert len(log) == 2 and (rebuilt.path / "unet.onnx").read_bytes() == b"graph-bytes"
    assert read(rebuilt.path).key == json.loads(json.dumps(KEY))


def test_failed_build_leaves_nothing(tmp_path):
    def broken(folder):
        (folder / "unet.onnx").write_bytes(b"half")
        raise RuntimeError("exporter crashed")
    store = ArtifactStore(tmp_path)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        store.ensure(KEY, broken)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    with pytest.raises(ArtifactError, match="no sprint.json"):
        read(tmp_path / artifact_name(KEY))


def _build_in_process(root, results):
    log = []
    artifact = ArtifactStore(root).ensure(KEY, builder(log, delay=0.5))
    results.put((os.getpid(), artifact.meta["built_by"], len(log)))


def test_concurrent_builders_take_turns(tmp_path):
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_build_in_process, args=(tmp_path, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    out = [results.get(timeout=5) for _ in procs]
    assert sum(built for _, _, built in out) == 1              # one built, the other reused it
    assert len({builder_pid for _, builder_pid, _ in out}) == 1
    assert len(ArtifactStore(tmp_path).names()) == 1


@needs_onnxruntime
def test_build_chain_reuses_the_fp32_export(tmp_path):
    from toy_unet import ToyUNet
    from sprint.engines.unet.export import export_unet
    profile = ShapeProfile(batch=(1, 2), height=(16, 16), width=(16, 16), tokens=(77, 77), multiple=2)
    unet, exports = ToyUNet().eval(), []

    def export(folder):
        exports.append(folder)
        export_unet(unet, folder, profile, 4, 16)
    store = ArtifactStore(tmp_path)
    fp16 = unet_build.make_key("w", "toy", profile, "fp16", "onnxruntime", "cpu")
    fp32 = unet_build.make_key("w", "toy", profile, "fp32", "onnxruntime", "cpu")
    engine = unet_build.load(unet_build.build(store, fp16, export), "cpu")
    unet_build.build(store, fp32, export)
    assert len(exports) == 1 and store.lookup(fp32) is not None
    x, t, c = torch.randn(2, 4, 16, 16), torch.tensor([10.0, 500.0]), torch.randn(2, 77, 16)
    with torch.no_grad():
        assert ((engine(x, t, c) - unet(x, t, c)).norm() / unet(x, t, c).norm()) < 1e-2


def _finishes(fn, *args):
    """Runs fn in a thread; False when it is still running after 20 s (it would hash /dev/zero forever)."""
    import threading
    out = []
    worker = threading.Thread(target=lambda: out.append(_outcome(fn, *args)), daemon=True)
    worker.start()
    worker.join(20)
    return out[0] if out else False


def _outcome(fn, *args):
    try:
        return fn(*args)
    except ArtifactError as e:
        return e


def plant(store, name, record, files=()):
    folder = store.root / name
    folder.mkdir(parents=True)
    for file in files:
        (folder / file).write_bytes(b"corrupt graph")
    (folder / SIDECAR).write_text(json.dumps(record))
    return folder


@pytest.mark.parametrize("listed", ["../../../../dev/zero", "/dev/zero", "sub/../../x", ".."])
def test_a_sidecar_naming_files_outside_its_folder_is_refused_before_reading(tmp_path, listed):
    store = ArtifactStore(tmp_path / "engines")
    folder = plant(store, "planted", {"format": "sprint-unet-engine/1", "key": KEY,
                                      "files": {listed: {"bytes": 0, "digest": "0" * 32}}})
    error = _finishes(read, folder)
    assert isinstance(error, ArtifactError) and "outside its folder" in str(error) and "zero" not in str(error)


def test_engine_names_resolve_only_inside_the_store(tmp_path):
    store = ArtifactStore(tmp_path / "engines")
    store.ensure(KEY, builder([]))
    (tmp_path / "input" / "x").mkdir(parents=True)
    (tmp_path / "input" / "x" / SIDECAR).write_text("{}")
    (store.root / "link").symlink_to(tmp_path / "input" / "x")
    assert store.names() == [artifact_name(KEY)]
    assert store.folder(artifact_name(KEY)) == store.root / artifact_name(KEY)
    for name in ("../input/x", "../../input/x", "link", str(tmp_path / "input" / "x"), "", ".", None):
        with pytest.raises(ArtifactError, match="is not an engine"):
            store.folder(name)


@pytest.mark.parametrize("record", [
    {"files": {"unet.onnx": {"bytes": 13, "digest": "x"}}},                       # no key
    {"key": KEY, "files": {"unet.onnx": 13}},                                      # not a dict entry
    {"key": KEY, "files": {"unet.onnx": {"bytes": "13", "digest": "x"}}},
    {"key": KEY, "files": {}},                                                     # lists nothing
    {"key": "k", "files": {"unet.onnx": {"bytes": 13, "digest": "x"}}}])
def test_a_malformed_sidecar_is_an_artifact_error_and_rebuilt(tmp_path, record):
    store, log = ArtifactStore(tmp_path), []
    folder = plant(store, artifact_name(KEY), {"format": "sprint-unet-engine/1", **record}, files=["unet.onnx"])
    with pytest.raises(ArtifactError):
        read(folder)
    assert store.lookup(KEY) is None
    assert (store.ensure(KEY, builder(log)).path / "unet.onnx").read_bytes() == b"graph-bytes" and len(log) == 1


def test_unlisted_files_make_an_artifact_untrusted(tmp_path):
    store, log = ArtifactStore(tmp_path), []
    path = store.ensure(KEY, builder(log)).path
    (path / "unet.onnx.data").write_bytes(b"planted weights")
    with pytest.raises(ArtifactError, match="not the ones its sidecar lists"):
        read(path)


def _killed_build(root, started):
    def build(folder):
        (folder / "unet.onnx").write_bytes(b"half an export")
        started.set()
        time.sleep(600)
    ArtifactStore(root).ensure(KEY, build)


def test_build_folders_of_a_killed_builder_are_swept(tmp_path):
    """A real SIGKILL mid-build: the next build of any key removes its .partial folder, while a
    live builder's folder (its lock held) stays."""
    import signal
    ctx = multiprocessing.get_context("fork")
    started = ctx.Event()
    victim = ctx.Process(target=_killed_build, args=(tmp_path, started))
    victim.start()
    assert started.wait(60)
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(30)
    assert len(list(tmp_path.glob(".*.partial"))) == 1
    other = dict(KEY, weights="w2")
    store = ArtifactStore(tmp_path)
    with store_lock_held(store, dict(KEY, weights="w3")) as held_partial:
        store.ensure(other, builder([]))
        assert held_partial.is_dir()
    assert [p.name for p in tmp_path.glob(".*.partial")] == [held_partial.name]
    store.ensure(KEY, builder([]))
    assert store.lookup(KEY) is not None


@contextlib.contextmanager
def store_lock_held(store, key):
    """A builder at work on `key` in this process: its lock held, its .partial folder present."""
    from sprint.engines.files import file_lock
    path = store.path(key)
    with file_lock(path):
        partial = store.root / f".{path.name}.work.partial"
        partial.mkdir()
        yield partial


def test_an_interrupt_after_a_link_keeps_it(tmp_path):
    """The host's interrupt raised by progress() between links: what was finished stays built."""
    class Interrupted(Exception):
        pass

    def interrupt():
        raise Interrupted()
    profile = ShapeProfile()
    fp16 = unet_build.make_key("w", "toy", profile, "fp16", "onnxruntime", "cpu")
    exports = []
    store = ArtifactStore(tmp_path)
    with pytest.raises(Interrupted):
        unet_build.build(store, fp16, lambda folder: exports.append((folder / "unet.onnx").write_bytes(b"g")),
                         progress=interrupt)
    assert store.lookup(unet_build.source_key(fp16)) is not None and len(exports) == 1


def test_an_interrupt_during_the_export_stops_it_between_stages(tmp_path):
    from toy_unet import ToyUNet
    from sprint.engines.unet.export import export_unet

    class Interrupted(Exception):
        pass
    stages = []

    def check():
        stages.append(len(stages))
        raise Interrupted()
    profile = ShapeProfile(batch=(1, 2), height=(16, 16), width=(16, 16), tokens=(77, 77), multiple=2)
    with pytest.raises(Interrupted):
        export_unet(ToyUNet().eval(), tmp_path, profile, 4, 16, check=check)
    assert stages == [0] and list(tmp_path.iterdir()) == []       # stopped right after the trace


def test_torch_backend_key_names_it_and_has_no_artifact():
    profile = ShapeProfile()
    key = unet_build.make_key("w", "a", profile, "fp32", "torch", "cpu")
    assert key["backend"] == "torch" and key["runtime"].startswith("torch ") and "inductor" in key["runtime"]
    assert "in memory" in key["artifact"] and "exporter" not in key
    assert unet_build.make_key("w2", "a", profile, "fp32", "torch", "cpu") != key       # weights still key it
    with pytest.raises(ValueError, match="int8 needs onnxruntime or tensorrt"):
        unet_build.make_key("w", "a", profile, "int8", "torch", "cpu")
    assert unet_build.resolve("torch", "cpu") == ("torch", torch.device("cpu"))


def test_auto_falls_back_to_torch_where_onnxruntime_cannot_run(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert unet_build.resolve("auto", "cpu")[0] == "torch"
