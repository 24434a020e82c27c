"""UNet export to ONNX and ONNX Runtime sessions against PyTorch, on a small UNet-shaped module."""
import sys

import pytest
import torch

from sprint.engines.unet import ort
from sprint.engines.unet.export import GRAPH, ShapeProfile, export_unet

from toy_unet import ToyUNet, needs_onnxruntime

PROFILE = ShapeProfile(batch=(1, 4), height=(16, 32), width=(16, 32), tokens=(77, 154), multiple=2)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    unet = ToyUNet().eval()
    folder = tmp_path_factory.mktemp("toy-fp32")
    export_unet(unet, folder, PROFILE, in_channels=4, context_dim=16)
    return unet, folder


def inputs(b, h, w, tokens, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 4, h, w, generator=g), torch.rand(b, generator=g) * 999, torch.randn(b, tokens, 16, generator=g)


@needs_onnxruntime
@pytest.mark.parametrize("shape", [(1, 16, 16, 77), (2, 32, 24, 154), (4, 16, 32, 77)])
def test_fp32_matches_pytorch_anywhere_in_the_profile(exported, shape):
    unet, folder = exported
    engine = ort.OrtUNet(folder / GRAPH)
    x, t, c = inputs(*shape)
    with torch.no_grad():
        assert rel(engine(x, t, c), unet(x, t, c)) <= 1e-3
    assert engine.nbytes == sum(p.stat().st_size for p in folder.iterdir())


@needs_onnxruntime
def test_fp16_error_is_bounded(exported, tmp_path):
    unet, folder = exported
    engine = ort.OrtUNet(ort.to_fp16(folder / GRAPH, tmp_path / GRAPH))
    x, t, c = inputs(2, 16, 16, 77)
    with torch.no_grad():
        error = rel(engine(x, t, c), unet(x, t, c))
    print(f"toy UNet FP16 relative error {error:.2e}")
    assert 0 < error < 1e-2


def test_profile_says_why_a_shape_does_not_fit():
    assert PROFILE.violation((2, 4, 16, 32), 154) is None
    assert "batch 5" in PROFILE.violation((5, 4, 16, 16), 77)
    assert "latent height 40" in PROFILE.violation((1, 4, 40, 16), 77)
    assert "context tokens 231" in PROFILE.violation((1, 4, 16, 16), 231)
    assert "multiple of 2" in PROFILE.violation((1, 4, 17, 16), 77)
    assert ShapeProfile.from_dict(PROFILE.as_dict()) == PROFILE


def test_missing_onnxruntime_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ort.RuntimeMissing, match="`onnx(runtime)?` package: pip install onnx onnxruntime"):
        ort.require()


@needs_onnxruntime
def test_cuda_without_onnxruntime_gpu_is_explained():
    import onnxruntime
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(ort.RuntimeMissing, match="onnxruntime-gpu"):
        ort.providers("cuda:0")
