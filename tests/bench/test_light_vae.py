"""`python <Sprint> bench-light-vae` at a small latent: every decoder is timed side by side, the
tiled decode equals the whole one, and the taef2 PSNR part runs where the real weights are."""
import re

import pytest

import harness

pytestmark = pytest.mark.host


def test_bench_light_vae_command(host, tmp_path, taesd_data):
    out = harness.cli(host, "bench-light-vae", "--size", "16", "--rounds", "1", "--taef2", taesd_data,
                      cache=tmp_path).stdout
    for name in ("full VAE (VAEDecode)", "light, fp32", "ComfyUI TAESD-as-VAE"):
        assert re.search(rf"^\s+{re.escape(name)}\s+[\d.]+ s\s+[\d.]+x", out, re.M), (name, out)
    diff = float(re.search(r"max \|diff\| (\S+);", out)[1])
    assert diff < 1e-4, out                                   # tiled == whole
    psnr = [float(v) for v in re.findall(r"fp32 ([\d.]+)", out)]
    assert len(psnr) == 4 and min(psnr) > 20, out             # taef2 round trips of real photographs
