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


def test_bench_cfg_trained_scores_every_schedule_on_both_dev_models(host, tmp_path):
    out = harness.cli(host, "bench-cfg", "--trained", "--trained-seeds", "1", "--steps", "4", "--cfg", "3",
                      "--samplers", "euler", cache=tmp_path).stdout
    assert "trained dev EPS model" in out and "trained dev FLOW model" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("plain CFG ", "constant ", "interval (default) "))]
    assert len(rows) == 3 * 2
    plain, constant, interval = rows[:3]
    assert plain[2:] == constant[3:] and float(plain[-1]) == 0        # constant is plain CFG, bit for bit
    assert float(interval[4]) < 8                                     # fewer than 2 evaluations per step of 4
