"""`python <Sprint> thumbnail`: a bundled workflow's own output becomes a square JPEG card image."""
import os

import pytest

import harness

pytestmark = pytest.mark.host


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
