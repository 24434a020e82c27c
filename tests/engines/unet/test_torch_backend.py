"""The torch backend on a small UNet-shaped module: torch.compile (inductor, CPU) against eager,
one compile per shape, and the shape limit past which calls run eagerly."""
import pytest
import torch

from sprint.engines.unet import torch_backend

from toy_unet import ToyUNet


def test_compiled_matches_eager_and_limits_its_shapes(monkeypatch):
    unet = ToyUNet().eval()
    engine = torch_backend.TorchUNet(unet, "cpu")
    x, t, c = torch.randn(2, 4, 16, 16), torch.tensor([10.0, 700.0]), torch.randn(2, 77, 16)
    with torch.no_grad():
        ref = unet(x, t, c)
    out = engine(x, t, c)
    assert ((out - ref).norm() / ref.norm()) < 1e-4 and engine.nbytes == 0      # CPU: no graph pool
    engine(x + 1, t, c)
    assert len(engine.shapes) == 1                                                # same shape, no recompile
    monkeypatch.setattr(torch_backend, "MAX_SHAPES", 1)
    with pytest.raises(torch_backend.Uncompiled, match="compiled its 1 input shapes"):
        engine(torch.randn(1, 4, 16, 16), t[:1], c[:1])


def test_mode_is_cuda_graphs_on_cuda_only():
    assert torch_backend.mode("cuda:0") == "reduce-overhead" and torch_backend.mode("cpu") == "default"
