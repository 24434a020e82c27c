"""`python <Sprint> bench`, the README's main job, shrunk: every pipeline's row is printed and the
counted model calls are the ones the workflows imply."""
import os
import re

import pytest

import harness

pytestmark = pytest.mark.host


def test_bench_command_prints_the_comparison(host, sd15_checkpoint, light_decoder, tmp_path):
    import folder_paths
    ckpt = os.path.join(folder_paths.get_folder_paths("checkpoints")[0], sd15_checkpoint)
    out = harness.cli(host, "bench", "--ckpt", ckpt, "--light-decoder", light_decoder, "--size", "64", "--steps", "4",
                      "--repeat", "1", "--ref-steps", "6", cache=tmp_path, timeout=1200).stdout
    assert "random weights" not in out.splitlines()[0]
    rows = {m[0]: m[1:] for m in re.findall(r"^(stock|fast|quality)\s+([\d.]+)\s+([\d.]+)x\s+(\d+)\s+(\d+)\s+(-?\d+)\s+(\S+)",
                                            out, re.M)}
    assert set(rows) == {"stock", "fast", "quality"}, out
    assert rows["stock"][2:4] == ("4", "8")                # euler, 4 steps, cond + uncond batched: 4 calls, 8 rows
    assert int(rows["fast"][2]) <= 4 and int(rows["fast"][3]) < 8      # budget kept; dynamic CFG drops uncond rows
    assert all(float(r[-1]) >= 0 for r in rows.values())
