"""`python <Sprint> bench-cfg` at toy sizes: both parts run and the table rows are there."""
import pytest

import harness

pytestmark = pytest.mark.host


def test_bench_cfg_command_prints_every_schedule(host, tmp_path):
    out = harness.cli(host, "bench-cfg", "--steps", "6", "--cfg", "5", "--batch", "2", "--shape", "4,8,8",
                      "--offsets", "0.6", "--repeat", "1", cache=tmp_path).stdout
    lines = out.splitlines()
    unet = [line.split() for line in lines if line.startswith(("plain CFG ", "constant ", "interval (default) "))]
    assert len(unet) == 3 * 2 + 3 * 1      # two denoise values in the UNet part, one cfg in the GMM part
    assert all(row[-1] == "0" for row in unet[:6] if row[0] in ("plain", "constant"))  # max|x - plain| = 0
    assert any(line.startswith("wall time") for line in lines) and "## Exact GMM" in out
