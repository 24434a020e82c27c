"""Shared host glue: model folders, events, weight fingerprints of patched models."""
import os

import pytest
import torch

pytestmark = pytest.mark.host


def test_model_folder_is_registered_not_created(host):
    """Created by its store's first write, never at import or schema time (a read-only models volume)."""
    import folder_paths
    common = host.pack.nodes.common
    path = common.model_folder("sprint_test_folder")
    assert not os.path.exists(path) and folder_paths.get_folder_paths("sprint_test_folder")[0] == path
    assert common.model_folder("sprint_test_folder") == path


def test_send_event_is_silent_headless_and_tagged_when_served(host):
    import harness
    from comfy_execution.utils import CurrentNodeContext
    common = host.pack.nodes.common
    common.send_event("test", {"a": 1})                            # no PromptServer.instance: no-op
    with harness.captured_events() as events, CurrentNodeContext("p1", "7"):
        common.send_event("test", {"a": 1})
    assert events == [("sprint.test", {"node": "7", "prompt_id": "p1", "a": 1})]


def test_fingerprint_follows_weights_and_patches(host, synthetic):
    common = host.pack.nodes.common
    a, b = synthetic.sd15_model("tiny", seed=0), synthetic.sd15_model("tiny", seed=0)
    assert common.patcher_fingerprint(a) == common.patcher_fingerprint(b)
    assert common.patcher_fingerprint(a) != common.patcher_fingerprint(synthetic.sd15_model("tiny", seed=1))
    key = "diffusion_model.out.2.weight"
    w = a.model.diffusion_model.out[2].weight
    lora = a.clone()
    lora.add_patches({key: ("diff", (torch.ones_like(w),))}, 0.5)
    assert common.patcher_fingerprint(lora) != common.patcher_fingerprint(a)
    stronger = a.clone()
    stronger.add_patches({key: ("diff", (torch.ones_like(w),))}, 0.7)
    assert common.patcher_fingerprint(stronger) != common.patcher_fingerprint(lora)
    # applying the patch in place (as loading does) does not change the identity
    before = common.patcher_fingerprint(lora)
    lora.patch_model()
    try:
        assert common.patcher_fingerprint(lora) == before
    finally:
        lora.unpatch_model()


def test_fingerprint_of_weights_loaded_under_inference_mode(host, synthetic):
    """The server's executor runs loaders under torch.inference_mode: their weights are inference
    tensors (no version counter); the fingerprint is the same as for ordinary tensors."""
    common = host.pack.nodes.common
    with torch.inference_mode():
        loaded = synthetic.sd15_model("tiny", seed=2)
    assert next(loaded.model.parameters()).is_inference()
    assert common.patcher_fingerprint(loaded) == common.patcher_fingerprint(synthetic.sd15_model("tiny", seed=2))
