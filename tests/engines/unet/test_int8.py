"""INT8 static QDQ quantization calibrated on UNet inputs captured from a sampling run."""
import torch

from sprint.engines.unet import int8, ort
from sprint.engines.unet.export import GRAPH, ShapeProfile, export_unet

from toy_unet import ToyUNet, needs_onnxruntime, sampling_run

pytestmark = needs_onnxruntime

PROFILE = ShapeProfile(batch=(1, 4), height=(16, 32), width=(16, 32), tokens=(77, 77), multiple=2)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def recorder(unet, calls):
    def run(x, t, c):
        calls.record(x, t, c)
        return unet(x, t, c)
    return run


def test_int8_calibrated_on_a_sampling_run(tmp_path):
    torch.manual_seed(0)
    unet = ToyUNet().eval()
    calibration = int8.CalibrationSet()
    sampling_run(recorder(unet, calibration), torch.randn(1, 77, 16), seed=0)
    assert len(calibration) == 6 and len(calibration.select(4)) == 4
    export_unet(unet, tmp_path, PROFILE, in_channels=4, context_dim=16)
    (tmp_path / "int8").mkdir()
    graph = int8.quantize_int8(tmp_path / GRAPH, tmp_path / "int8", calibration.select(16))
    engine = ort.OrtUNet(graph)

    held_out = int8.CalibrationSet()                  # another seed and prompt
    context = torch.randn(1, 77, 16)
    reference = sampling_run(recorder(unet, held_out), context, seed=1)
    errors = []
    with torch.no_grad():
        for call in held_out.calls:
            x, t, c = (torch.from_numpy(call[k]) for k in ("x", "timesteps", "context"))
            errors.append(rel(engine(x, t, c), unet(x, t, c)))
    run_error = rel(sampling_run(engine, context, seed=1), reference)
    print(f"toy UNet INT8: per-call relative error max {max(errors):.4f}, 6-step run final latent {run_error:.4f}")
    assert 0 < max(errors) < 0.05 and 0 < run_error < 0.05
    assert engine.nbytes < ort.artifact_bytes(tmp_path)           # int8 weights are smaller


def test_sensitive_layers_stay_in_float(tmp_path):
    unet = ToyUNet().eval()
    export_unet(unet, tmp_path, PROFILE, in_channels=4, context_dim=16)
    calibration = int8.CalibrationSet()
    sampling_run(recorder(unet, calibration), torch.randn(1, 77, 16), seed=0, steps=2)
    (tmp_path / "int8").mkdir()
    import onnx
    model = onnx.load(str(int8.quantize_int8(tmp_path / GRAPH, tmp_path / "int8", calibration.calls)),
                      load_external_data=False)
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    weighted = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    quantized = {n.name for n in weighted if n.input[1] in dequantized}
    kept = {n.name for n in weighted if n.input[1] not in dequantized}
    assert any("conv1" in n for n in quantized) and any("to_q" in n for n in quantized)
    for pattern in ("time_embed", "input_blocks.0.0/", "/out/"):
        assert any(pattern in n for n in kept) and not any(pattern in n for n in quantized), pattern
    # attention's activation x activation products have no weight to quantize
    assert all(n.input[1] in dequantized or any(k in n.name for k in int8.KEEP_FLOAT) or n.op_type == "MatMul"
               for n in weighted)
