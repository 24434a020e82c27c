"""`python <Sprint> bench-engines` on the tiny UNet: export, INT8 calibration and quantization run
through SprintAccelerateUNet's own code, and the FP32 engine and the torch backend reproduce PyTorch."""
import re

import pytest

import harness

pytestmark = pytest.mark.host


@pytest.mark.cpu_only("bench-engines times ONNX Runtime's CPU provider")
def test_bench_engines_command(host, tmp_path):
    pytest.importorskip("onnxruntime", reason="the ONNX Runtime engines need `pip install onnx onnxruntime`")
    out = harness.cli(host, "bench-engines", "--unet", "tiny", "--latent", "8", "--steps", "2", "--rounds", "1",
                      cache=tmp_path).stdout
    fp32 = re.search(r"ORT FP32: median (\S+)\s+max (\S+)", out)
    assert fp32 and float(fp32[2]) < 1e-3, out                 # FP32 engine == PyTorch per call
    assert re.search(r"final latent relative error vs PyTorch: ORT FP32 \S+, ORT INT8 \S+", out), out
    assert "INT8 speed-up:" in out and "no fallbacks" in out
    torch_error = re.search(r"torch: median (\S+)\s+max (\S+)", out)
    assert torch_error and float(torch_error[2]) < 1e-3, out    # torch.compile == PyTorch per call
    assert re.search(r"torch backend speed-up: \d+\.\d\dx vs PyTorch FP32", out), out
