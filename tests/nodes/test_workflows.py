"""The bundled workflows (example_workflows/api/, the API twins of example_workflows/*.json) run headless through
the executor on the shallow SD1.5 checkpoint; the UI files are checked against the twins in the
browser tier."""
import pathlib

import harness
import pytest

pytestmark = pytest.mark.host

PACK = pathlib.Path(__file__).resolve().parents[2]


def test_twins_are_the_shipped_workflows_pairs():
    ui = sorted(p.stem for p in (PACK / "example_workflows").glob("*.json"))
    api = sorted(p.stem for p in (PACK / "example_workflows" / "api").glob("sprint_*.json"))
    assert api == ["sprint_fast", "sprint_quality"] and ui == api
    for name in ui:
        assert (PACK / "example_workflows" / f"{name}.jpg").read_bytes()[:3] == b"\xff\xd8\xff"     # a JPEG thumbnail


@pytest.mark.parametrize("name", ["fast", "quality"])
def test_workflow_runs_headless(host, sd15_checkpoint, light_decoder, name):
    bench = host.pack.bench.main_job_full
    prompt = bench.with_seed(bench.load_pipeline(name, sd15_checkpoint, 64, steps=6), 3)
    with harness.captured_events() as events:
        result = host.run(prompt)
    save = next(k for k, v in prompt.items() if v["class_type"] == "SaveImage")
    assert len(result.ui[save]["images"]) == 1
    side = 64 if name == "fast" else 128                                   # quality upscales 2x
    node, slot = bench.final_latent(prompt)
    assert tuple(result.output(node, slot)["samples"].shape) == (1, 4, side // 8, side // 8)
    assert {"sprint.sampler", "sprint.dynamic_cfg"} <= {e for e, _ in events}     # encodes may come from the executor cache
    sampler = next(d for e, d in events if e == "sprint.sampler")
    assert 1 <= sampler["calls"] <= 6 and sampler["budget"] == 6


def test_reference_variant_only_changes_the_sampling(host):
    bench = host.pack.bench.main_job_full
    for name in ("fast", "quality"):
        prompt = bench.load_pipeline(name, "x.safetensors", 64, 20)
        ref = bench.reference(prompt, 100)
        changed = {k for k in prompt if prompt[k] != ref.get(k)}
        assert {prompt[k]["class_type"] for k in changed} <= {"SprintKSampler", "SprintTwoStageUpscale"}
        sampler = next(v for v in ref.values() if v["class_type"] == "KSampler")
        assert sampler["inputs"]["steps"] == 100 and sampler["inputs"]["sampler_name"] == "dpmpp_2m"
        assert sampler["inputs"]["model"] == next(v for v in prompt.values() if v["class_type"] == "SprintKSampler")["inputs"]["model"]
