"""TensorRT engines: need the tensorrt package and an NVIDIA GPU; without them they skip, and
asking for them gives one message naming what is missing."""
import pytest
import torch

from sprint.engines.unet import tensorrt
from sprint.engines.unet.export import GRAPH, ShapeProfile, export_unet

from toy_unet import ToyUNet

needs_trt = pytest.mark.skipif(not tensorrt.available(), reason="needs tensorrt and a CUDA GPU")


@pytest.mark.skipif(tensorrt.available(), reason="TensorRT is available here")
def test_missing_tensorrt_is_named():
    with pytest.raises(tensorrt.RuntimeMissing, match="tensorrt|NVIDIA GPU"):
        tensorrt.require()


@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_plan_matches_pytorch(tmp_path, precision):
    profile = ShapeProfile(batch=(1, 4), height=(16, 32), width=(16, 32), tokens=(77, 154), multiple=2)
    unet = ToyUNet().eval()
    export_unet(unet, tmp_path, profile, 4, 16)
    plan = tensorrt.build_plan(tmp_path / GRAPH, tmp_path, tensorrt.shapes(profile, 4, 16), precision)
    engine = tensorrt.TrtUNet(plan, "cuda")
    x, t, c = torch.randn(2, 4, 24, 32), torch.tensor([10.0, 700.0]), torch.randn(2, 154, 16)
    with torch.no_grad():
        ref = unet.cuda()(x.cuda(), t.cuda(), c.cuda())
        error = ((engine(x, t, c) - ref).norm() / ref.norm()).item()
    assert error <= (1e-3 if precision == "fp32" else 1e-2)
