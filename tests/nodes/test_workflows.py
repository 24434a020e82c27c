"""The bundled workflows (workflows/api/, the API twins of workflows/*.json) run headless through
the executor on the shallow SD1.5 checkpoint, and the `bench` command (the README's main job)
prints its comparison; the UI files are checked against the twins in the browser tier."""
import os
import pathlib
import re
import subprocess
import sys

import harness
import pytest

pytestmark = pytest.mark.host

PACK = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def light_decoder(host, synthetic, tmp_path_factory):
    """A random-weight taesd decoder linked into models/vae_approx, as the bench provides one."""
    import folder_paths
    file = tmp_path_factory.mktemp("light") / "taesd_decoder.safetensors"
    synthetic.write_taesd_decoder(file)
    name = host.module("nodes.headless").provide_light_decoder(host, file)
    yield file
    (pathlib.Path(folder_paths.get_folder_paths("vae_approx")[0]) / name).unlink()


def test_twins_are_the_shipped_workflows_pairs():
    ui = sorted(p.stem for p in (PACK / "workflows").glob("*.json"))
    api = sorted(p.stem for p in (PACK / "workflows" / "api").glob("sprint_*.json"))
    assert api == ["sprint_fast", "sprint_quality"] and ui == api
    for name in ui:
        assert (PACK / "workflows" / f"{name}.jpg").read_bytes()[:3] == b"\xff\xd8\xff"     # a JPEG thumbnail


@pytest.mark.parametrize("name", ["fast", "quality"])
def test_workflow_runs_headless(host, sd15_checkpoint, light_decoder, name):
    bench = host.module("nodes.bench")
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
    bench = host.module("nodes.bench")
    for name in ("fast", "quality"):
        prompt = bench.load_pipeline(name, "x.safetensors", 64, 20)
        ref = bench.reference(prompt, 100)
        changed = {k for k in prompt if prompt[k] != ref.get(k)}
        assert {prompt[k]["class_type"] for k in changed} <= {"SprintKSampler", "SprintTwoStageUpscale"}
        sampler = next(v for v in ref.values() if v["class_type"] == "KSampler")
        assert sampler["inputs"]["steps"] == 100 and sampler["inputs"]["sampler_name"] == "dpmpp_2m"
        assert sampler["inputs"]["model"] == next(v for v in prompt.values() if v["class_type"] == "SprintKSampler")["inputs"]["model"]


def test_bench_command_prints_the_comparison(host, sd15_checkpoint, light_decoder, tmp_path):
    import folder_paths
    ckpt = os.path.join(folder_paths.get_folder_paths("checkpoints")[0], sd15_checkpoint)
    run = subprocess.run([sys.executable, str(PACK), "--comfyui", str(host.comfy_path), "bench", "--ckpt", ckpt,
                          "--light-decoder", str(light_decoder), "--size", "64", "--steps", "4", "--repeat", "1",
                          "--ref-steps", "6"],
                         capture_output=True, text=True, timeout=1200, env=dict(os.environ, SPRINT_CACHE=str(tmp_path)))
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "random weights" not in out.splitlines()[0]
    rows = {m[0]: m[1:] for m in re.findall(r"^(stock|fast|quality)\s+([\d.]+)\s+([\d.]+)x\s+(\d+)\s+(\d+)\s+(-?\d+)\s+(\S+)",
                                            out, re.M)}
    assert set(rows) == {"stock", "fast", "quality"}, out
    assert rows["stock"][2:4] == ("4", "8")                # euler, 4 steps, cond + uncond batched: 4 calls, 8 rows
    assert int(rows["fast"][2]) <= 4 and int(rows["fast"][3]) < 8      # budget kept; dynamic CFG drops uncond rows
    assert all(float(r[-1]) >= 0 for r in rows.values())
