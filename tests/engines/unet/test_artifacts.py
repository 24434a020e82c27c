"""The engine artifact store: keyed folders with verified sidecars, rebuilt when they cannot be
trusted, built once by concurrent builders."""
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
