"""`python <Sprint> bench-tiling` as the lead runs it, shrunk to the tiny model: every part prints,
the counted model calls are the ones the plans imply (timings are not asserted)."""
import re

import pytest

import harness

pytestmark = pytest.mark.host


def test_bench_tiling_command(host, tmp_path):
    out = harness.cli(host, "bench-tiling", "--model", "tiny", "--sizes", "40", "--tile", "192", "--overlap", "64",
                      "--two-stage-size", "16", "--steps", "4", cache=tmp_path).stdout
    assert "random weights" in out.splitlines()[0]
    # 40 x 40 latent in tiles of 24 (192 px): 2 x 2 tiles; memory in MB and times are printed
    assert re.search(r"^\s+40\s+320\s+4\s+\d+\s+\d+\s+[\d.]+%", out, re.M), out
    # direct: 4 steps at 32 x 32 latent; two-stage: 4 steps at 16 x 16, then round(4 x 0.2) = 1 step
    # at 32 x 32 refined in 2 x 2 tiles of 24 x 24
    assert re.search(r"^\s+direct\s+4\s+4096\s", out, re.M), out
    assert re.search(rf"^\s+two-stage\s+8\s+{4 * 16 * 16 + 4 * 24 * 24}\s", out, re.M), out
    assert "Bars:" in out and "two-stage 2x / direct" in out and "compute overhead" in out
