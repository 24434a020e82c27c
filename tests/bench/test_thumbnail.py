"""`python <Sprint> thumbnail`: a bundled workflow's Templates card. By default a grid of the trained
dev model's samples under the workflow's own sampling (recognisable classes, the same file every
time); with --ckpt the workflow's own output as a square JPEG."""
import os

import pytest

import harness

pytestmark = pytest.mark.host


def card_accuracy(path, side):
    """The dev classifier's class accuracy on a dev card's tiles, read back from the JPEG (each
    tile box-averaged to the dev model's 16 px; rows are the classes in dev.CLASSES order)."""
    import numpy
    import torch
    from PIL import Image
    from sprint.bench import dev, thumbnail
    from sprint.engines import metrics
    card = Image.open(path).convert("L")
    _, boxes = thumbnail.layout(side, len(dev.CLASSES), 4, dev.SIZE)
    tiles = [numpy.asarray(card.crop(box).resize((dev.SIZE, dev.SIZE), Image.Resampling.BOX)) for row in boxes for box in row]
    gray = torch.from_numpy(numpy.stack(tiles)).float()[:, None] / 255 * 2 - 1
    labels = torch.arange(len(dev.CLASSES)).repeat_interleave(4)
    with torch.no_grad():
        return metrics.class_accuracy(dev.classifier()(gray), labels)


@pytest.mark.parametrize("name, model, sampling", [
    ("sprint_fast", "EPS UNet (SD1.x)", "SprintKSampler balanced preset, beta, 7 steps, cfg 8, SprintDynamicCFG interval (1, 1000], CFG rescale 0.7"),
    ("sprint_fast_qwen_image", "flow MMDiT (SD3)",
     "ModelSamplingAuraFlow shift 3.1, SprintKSampler balanced preset, simple, 10 steps, cfg 2.5, SprintDynamicCFG interval"),
])
def test_dev_thumbnail_shows_recognisable_classes_and_is_deterministic(host, tmp_path, name, model, sampling):
    """Each workflow renders on the dev model of its family with its own settings as shipped."""
    from PIL import Image
    cards = [tmp_path / "card1.jpg", tmp_path / "card2.jpg"]
    for out in cards:
        run = harness.cli(host, "thumbnail", name, "--side", "256", "--out", out, cache=tmp_path)
        assert f"on the trained dev {model}: {sampling}" in run.stdout
        assert f"wrote {out} (256x256: 4 classes x 4 seeds" in run.stdout
    image = Image.open(cards[0])
    assert image.format == "JPEG" and image.size == (256, 256)
    assert cards[0].read_bytes() == cards[1].read_bytes()            # the same card every time
    assert card_accuracy(cards[0], 256) >= 0.5                        # chance 0.25; noise tiles are not classes
    assert not list(tmp_path.glob(".card*.partial"))                  # written atomically, nothing left beside it


@pytest.mark.parametrize("name", ["sprint_fast", "sprint_quality", "sprint_fast_qwen_image"])
def test_shipped_cards_show_dev_model_samples(host, name):
    """The committed cards are dev renders at the default side (not screenshots, not noise)."""
    from PIL import Image
    path = harness.hostlib.PACK_ROOT / "example_workflows" / f"{name}.jpg"
    assert Image.open(path).size == (512, 512)
    assert card_accuracy(path, 512) >= 0.5


def test_thumbnail_renders_the_workflow_output(host, sd15_checkpoint, light_decoder, tmp_path):
    from PIL import Image
    import folder_paths
    ckpt = os.path.join(folder_paths.get_folder_paths("checkpoints")[0], sd15_checkpoint)
    out = tmp_path / "card.jpg"
    run = harness.cli(host, "thumbnail", "sprint_fast", "--ckpt", ckpt, "--light-decoder", light_decoder,
                      "--size", "96", "--side", "64", "--out", out, cache=tmp_path)
    assert f"wrote {out} (64x64 from the 96x96 output)" in run.stdout
    image = Image.open(out)
    assert image.format == "JPEG" and image.size == (64, 64)
    assert max(image.convert("L").getextrema()) > 0      # the decoded image, not an empty canvas


def test_thumbnail_refuses_a_light_decoder_workflow_without_its_decoder(host, sd15_checkpoint, tmp_path):
    import folder_paths
    import subprocess
    import sys
    ckpt = os.path.join(folder_paths.get_folder_paths("checkpoints")[0], sd15_checkpoint)
    run = subprocess.run([sys.executable, str(harness.hostlib.PACK_ROOT), "--comfyui", str(host.comfy_path),
                          "thumbnail", "sprint_fast", "--ckpt", ckpt], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, SPRINT_CACHE=str(tmp_path)))
    assert run.returncode != 0 and "give --light-decoder" in run.stderr


def test_flow_workflow_samples_the_dev_mmdit_at_its_own_shift(host):
    """The Qwen-Image workflow's ModelSamplingAuraFlow shift reaches the dev MMDiT through the node's
    patch, with the MMDiT's own timestep multiplier (SD3's 1000, not the node's 1.0 for Qwen-Image)."""
    from sprint.bench import dev, main_job
    flow, eps = main_job.Pipeline("fast_qwen_image"), main_job.Pipeline("fast")
    assert (flow.kind, flow.shift, eps.kind, eps.shift) == ("flow", 3.1, "eps", None)
    model = dev.model_patcher("flow")
    sampling = flow.model(model).get_model_object("model_sampling")
    assert sampling.shift == 3.1 and sampling.multiplier == 1000
    assert model.get_model_object("model_sampling").shift == 3.0          # the loaded model itself untouched
