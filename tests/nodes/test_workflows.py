"""The bundled workflows (example_workflows/api/, the API twins of example_workflows/*.json) run headless through
the executor: the SD ones on the shallow SD1.5 checkpoint, the Qwen-Image one on tiny random-weight
Qwen-Image and Qwen2.5-VL files under the names it ships with; the UI files are checked against the
twins in the browser tier."""
import pathlib

import harness
import pytest

pytestmark = pytest.mark.host

PACK = pathlib.Path(__file__).resolve().parents[2]
# name (sprint_<name>.json) -> fixture that puts its model files in place, final latent shape at 64 px
WORKFLOWS = {"fast": ("sd15_workflow", (1, 4, 8, 8)),
             "quality": ("sd15_workflow", (1, 4, 16, 16)),                 # upscales 2x
             "fast_qwen_image": ("qwen_image_workflow", (1, 16, 1, 8, 8))}  # Qwen-Image samples [B, C, 1, H, W]


def test_twins_are_the_shipped_workflows_pairs():
    ui = sorted(p.stem for p in (PACK / "example_workflows").glob("*.json"))
    api = sorted(p.stem for p in (PACK / "example_workflows" / "api").glob("sprint_*.json"))
    assert api == sorted(f"sprint_{name}" for name in WORKFLOWS) and ui == api
    for name in ui:
        assert (PACK / "example_workflows" / f"{name}.jpg").read_bytes()[:3] == b"\xff\xd8\xff"     # a JPEG thumbnail


@pytest.fixture
def sd15_workflow(sd15_checkpoint, light_decoder):
    """The checkpoint name the SD workflows' loader gets (the light decoder linked in)."""
    return sd15_checkpoint


@pytest.fixture(scope="module")
def qwen_image_files(host, synthetic):
    """Tiny random-weight files under the names sprint_fast_qwen_image loads: the Qwen-Image
    diffusion model, the Qwen2.5-VL text encoder (64 wide, the model's text width) and taew2_1."""
    import folder_paths
    prompt = host.pack.bench.main_job_full.graph("fast_qwen_image")
    loader = lambda kind: next(n["inputs"] for n in prompt.values() if n["class_type"] == kind)  # noqa: E731
    written = []
    for folder, name, write in (("diffusion_models", loader("UNETLoader")["unet_name"], synthetic.qwen_image_diffusion_model_file),
                                ("text_encoders", loader("CLIPLoader")["clip_name"], synthetic.qwen_image_text_encoder_file)):
        path = pathlib.Path(folder_paths.get_folder_paths(folder)[0]) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        written.append(write(path))
    vae_approx = pathlib.Path(folder_paths.get_folder_paths("vae_approx")[0])
    if not any(p.name.startswith("taew2_1") for p in vae_approx.glob("*")):     # other tests' files stay theirs
        written.append(synthetic.write_light_decoder("taew2_1", vae_approx))
    yield
    for path in written:
        path.unlink()


@pytest.fixture
def qwen_image_workflow(qwen_image_files, synthetic):
    """ComfyUI building Qwen-Image and Qwen2.5-VL at the tiny files' sizes for this test (0.3.64
    reads neither width from the files); the checkpoint name is unused (the loaders keep theirs)."""
    with synthetic.tiny_qwen_image_loaders():
        yield "unused.safetensors"


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_runs_headless(host, request, name):
    fixture, latent_shape = WORKFLOWS[name]
    bench = host.pack.bench.main_job_full
    prompt = bench.with_seed(bench.load_pipeline(name, request.getfixturevalue(fixture), 64, steps=6), 3)
    with harness.captured_events() as events:
        result = host.run(prompt)
    save = next(k for k, v in prompt.items() if v["class_type"] == "SaveImage")
    assert len(result.ui[save]["images"]) == 1
    node, slot = bench.final_latent(prompt)
    assert tuple(result.output(node, slot)["samples"].shape) == latent_shape
    decoder = next(k for k, v in prompt.items() if v["class_type"] in bench.DECODERS)
    assert tuple(result.output(decoder).shape) == (1, 8 * latent_shape[-2], 8 * latent_shape[-1], 3)
    assert {"sprint.sampler", "sprint.dynamic_cfg"} <= {e for e, _ in events}     # encodes may come from the executor cache
    sampler = next(d for e, d in events if e == "sprint.sampler")
    assert 1 <= sampler["calls"] <= 6 and sampler["budget"] == 6


def test_reference_variant_only_changes_the_sampling(host):
    bench = host.pack.bench.main_job_full
    for name in WORKFLOWS:
        prompt = bench.load_pipeline(name, "x.safetensors", 64, 20)
        ref = bench.reference(prompt, 100)
        changed = {k for k in prompt if prompt[k] != ref.get(k)}
        assert {prompt[k]["class_type"] for k in changed} <= {"SprintKSampler", "SprintTwoStageUpscale"}
        sampler = next(v for v in ref.values() if v["class_type"] == "KSampler")
        assert sampler["inputs"]["steps"] == 100 and sampler["inputs"]["sampler_name"] == "dpmpp_2m"
        assert sampler["inputs"]["model"] == next(v for v in prompt.values() if v["class_type"] == "SprintKSampler")["inputs"]["model"]
