"""`python <Sprint> bench-prompt-cache`: hits from memory and, in a second process, from disk are
bit-identical to a fresh CLIP-L encode (the command exits non-zero otherwise)."""
import pytest

import harness

pytestmark = pytest.mark.host


def test_bench_prompt_cache_command(host, tmp_path):
    out = harness.cli(host, "bench-prompt-cache", "--rounds", "2", cache=tmp_path).stdout
    assert "memory hit median" in out and "bit-identical: True" in out
    restart = next(line for line in out.splitlines() if line.startswith("after a restart"))
    assert "disk hit median" in restart and "bit-identical: True" in restart


def test_old_command_name_still_works(host, tmp_path):
    assert "memory hit median" in harness.cli(host, "text-cache-bench", "--rounds", "1", cache=tmp_path).stdout
