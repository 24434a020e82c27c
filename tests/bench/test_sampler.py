"""`python <Sprint> bench-sampler --toy`: every section of the comparison prints."""
import pytest

import harness

pytestmark = pytest.mark.host


def test_bench_sampler_toy_run(host, tmp_path):
    out = harness.cli(host, "bench-sampler", "--toy", "--cache", tmp_path, timeout=600).stdout
    for needle in ("ipndm", "sprint", "mode agreement", "calls sweep", "binding budget", "KSampler"):
        assert needle in out, (needle, out[-3000:])
