"""`python <Sprint> bench`, the README's main job, shrunk: every pipeline's row is printed and the
counted model calls are the ones the workflows imply, on the trained dev model (default) and at full size."""
import json
import os
import re

import pytest

import harness

pytestmark = pytest.mark.host


ROW = r"^(stock|stock\+rcfg|fast|quality)\s+([\d.]+)\s+([\d.]+)x\s+(\d+)\s+"


def test_default_bench_runs_the_trained_dev_model(host, tmp_path):
    out = harness.cli(host, "bench", "--seeds", "2", "--ref-seeds", "1", "--repeat", "1", "--ref-steps", "8",
                      cache=tmp_path, timeout=1200).stdout
    assert out.startswith("main job on the trained dev EPS model"), out[:500]
    rows = {m[0]: m[1:] for m in re.findall(ROW + r"([\d.]+)\s+([\d.]+)\s+±\s+([\d.]+)\s+([\d.]+)\s+±", out, re.M)}
    assert set(rows) == {"stock", "stock+rcfg", "fast", "quality"}, out   # stock+rcfg: as fast rescales its CFG
    assert rows["stock"][2:4] == rows["stock+rcfg"][2:4] == ("20", "40.0")   # euler/normal 20 steps, cond + uncond rows
    assert rows["stock"][4:] != rows["stock+rcfg"][4:]                       # RescaleCFG changes the images
    fast = json.loads((harness.hostlib.PACK_ROOT / "example_workflows" / "api" / "sprint_fast.json").read_text())
    steps = next(n["inputs"]["steps"] for n in fast.values() if n["class_type"] == "SprintKSampler")
    assert int(rows["fast"][2]) <= steps and float(rows["fast"][3]) < 2 * steps   # the budget; dynamic CFG drops uncond rows
    assert all(0 <= float(r[6]) <= 1 for r in rows.values())             # class accuracy
    assert "issue 16's bar" in out and "like for like, fast vs stock+rcfg" in out


def test_full_bench_prints_the_comparison(host, sd15_checkpoint, light_decoder, tmp_path):
    import folder_paths
    ckpt = os.path.join(folder_paths.get_folder_paths("checkpoints")[0], sd15_checkpoint)
    out = harness.cli(host, "bench", "--full", "--ckpt", ckpt, "--light-decoder", light_decoder, "--size", "64", "--steps", "4",
                      "--repeat", "1", "--ref-steps", "6", cache=tmp_path, timeout=1200).stdout
    assert "random weights" not in out.splitlines()[0]
    rows = {m[0]: m[1:] for m in re.findall(ROW + r"(\d+)\s+(-?\d+)\s+(\S+)",
                                            out, re.M)}
    assert set(rows) == {"stock", "fast", "quality"}, out
    assert rows["stock"][2:4] == ("4", "8")                # euler, 4 steps, cond + uncond batched: 4 calls, 8 rows
    assert int(rows["fast"][2]) <= 4 and int(rows["fast"][3]) < 8      # budget kept; dynamic CFG drops uncond rows
    assert all(float(r[-1]) >= 0 for r in rows.values())


def test_sdxl_stand_in_is_detected_as_sdxl(host, synthetic):
    """`bench --full --arch sdxl`'s random checkpoint has the keys and shapes ComfyUI detects as SDXL
    (the UNet built on the meta device: 2.6 B params); its light decoder is taesdxl."""
    import comfy.model_detection
    import comfy.supported_models
    base = comfy.supported_models.SDXL(dict(synthetic.SDXL_UNET)).get_model({}, device="meta")
    detected = comfy.model_detection.model_config_from_unet(base.state_dict_for_saving(), "model.diffusion_model.")
    assert type(detected) is comfy.supported_models.SDXL
    assert detected.unet_config["transformer_depth_middle"] == 10
    assert host.pack.bench.run.STAND_INS["sdxl"][3] == "taesdxl"


def test_bench_samples_the_dev_models_it_is_given(host, tmp_path):
    """--dev-models: the folder's models are the ones sampled (a perturbed EPS UNet changes stock's
    figures); a folder without every fixture is refused in one line."""
    import shutil

    import safetensors
    import safetensors.torch
    from sprint.bench import dev
    other = tmp_path / "models"
    shutil.copytree(harness.hostlib.PACK_ROOT / "bench" / "dev_models", other)
    eps = other / dev.FILES["eps"]
    with safetensors.safe_open(str(eps), "pt") as f:
        meta, sd = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    safetensors.torch.save_file({k: v * 1.05 for k, v in sd.items()}, str(eps), metadata=meta)
    args = ("bench", "--seeds", "2", "--ref-seeds", "1", "--repeat", "1", "--ref-steps", "8", "--pipelines", "stock")
    stock = lambda out: re.search(r"^stock\s+.*$", out, re.M).group(0).split()[5:]    # noqa: E731  quality columns
    shipped, given = (harness.cli(host, *args, *more, cache=tmp_path).stdout for more in ((), ("--dev-models", other)))
    assert f"model (BaseModel, {other};" in given and stock(shipped) != stock(given)
    eps.unlink()
    with pytest.raises(SystemExit, match=f"missing {dev.FILES['eps']}"):
        dev.models_folder(other)
