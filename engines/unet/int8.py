"""INT8 static QDQ quantization of an exported UNet, calibrated on UNet inputs captured from
real sampling passes.

Dynamic quantization does not pay off for convolutions on CPU (activation scales computed per
call); static QDQ with per-channel int8 weights and per-tensor uint8 activations lets ONNX
Runtime fuse Conv/MatMul into integer kernels. Activation ranges are plain min/max over the
captured calls, so every noise level the sampler visits is inside the range.

Layers that stay in float (KEEP_FLOAT, matched against ONNX node names, which the exporter
derives from module paths) were chosen by a per-layer sensitivity sweep on the shallow SD1.5
UNet, quantizing one group at a time and measuring the output error at every step of a sampling
run:
- the time embedding and the per-block embedding projections (tiny, and every block reads them);
- the first and last convolutions (raw latent in, prediction out);
- convolutions that read the un-normalised residual stream (downsample `op`, upsample `conv`,
  `skip_connection`): its per-channel offsets defeat a per-tensor activation scale (a single
  downsample conv alone cost 16 % output error at high noise);
- the transformer's proj_in/proj_out and the feed-forward output (ff net.2), which write back
  into that stream;
- activation-by-activation MatMuls inside attention (no weight to quantize).
Norms, softmax and the GELU are never quantized (only Conv, MatMul and Gemm are).
"""
import pathlib
import tempfile

import numpy as np

from .export import GRAPH
from .ort import require

KEEP_FLOAT = ("time_embed", "emb_layers", "label_emb", "input_blocks.0.0/", "/out/",
              "/op/", "/conv/", "skip_connection", "proj_in", "proj_out", "net.2/")
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")


class CalibrationSet:
    """UNet inputs recorded during sampling (x, timesteps, context[, y]), kept on the CPU.

    `select(n)` spreads the calibration over the whole trajectory (every noise level), not
    only its first calls."""

    def __init__(self):
        self.calls = []

    def record(self, x, timesteps, context, y=None):
        call = {"x": x, "timesteps": timesteps, "context": context, "y": y}
        self.calls.append({k: v.detach().float().cpu().numpy() for k, v in call.items() if v is not None})

    def __len__(self):
        return len(self.calls)

    def select(self, n):
        if len(self.calls) <= n:
            return list(self.calls)
        return [self.calls[round(i)] for i in np.linspace(0, len(self.calls) - 1, n)]


def float_nodes(model, keep_float=KEEP_FLOAT):
    """Names of the Conv/MatMul/Gemm nodes that stay in float (see the module docstring)."""
    weights = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and (
        any(k in n.name for k in keep_float) or not any(i in weights for i in n.input))]


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over recorded calls, ticking progress."""

    def __init__(self, calls, inputs, progress):
        self.calls, self.inputs, self.progress = iter(calls), inputs, progress

    def get_next(self):
        call = next(self.calls, None)
        if call is not None and self.progress:
            self.progress()
        return None if call is None else {k: call[k] for k in self.inputs}


def quantize_int8(src_graph, dst_folder, calls, keep_float=KEEP_FLOAT, progress=None):
    """Write dst_folder/unet.onnx: `src_graph` (FP32) with static INT8 QDQ, calibrated on `calls`
    (CalibrationSet.select output). progress() is called once per calibration call."""
    require()
    import onnx
    from onnxruntime import quantization as q
    if not calls:
        raise ValueError("INT8 calibration needs at least one recorded UNet call")
    with tempfile.TemporaryDirectory(dir=dst_folder) as tmp:
        # ORT's own graph optimisation first: it folds the Identity aliases the exporter emits for
        # equal weights, which otherwise hide biases from the quantizer and block Conv fusion.
        pre = pathlib.Path(tmp) / "pre.onnx"
        q.quant_pre_process(str(src_graph), str(pre), skip_symbolic_shape=True,
                            save_as_external_data=True, all_tensors_to_one_file=True)
        model = onnx.load(str(pre), load_external_data=False)
        inputs = [i.name for i in model.graph.input]
        dst = pathlib.Path(dst_folder) / GRAPH
        q.quantize_static(str(pre), str(dst), _Reader(calls, inputs, progress), quant_format=q.QuantFormat.QDQ,
                          per_channel=True, activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                          op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=float_nodes(model, keep_float),
                          calibrate_method=q.CalibrationMethod.MinMax, use_external_data_format=True)
    return dst


DYNAMIC = "dynamic-matmul-s8-per-channel"


def quantize_dynamic_int8(src_graph, dst_folder):
    """Write dst_folder/unet.onnx: `src_graph` with INT8 weights for its MatMuls and activation
    scales computed per call (no calibration). For transformers: nearly all their work is
    MatMuls whose activations' ranges move with the token content, which a static range misses."""
    require()
    from onnxruntime import quantization as q
    with tempfile.TemporaryDirectory(dir=dst_folder) as tmp:
        pre = pathlib.Path(tmp) / "pre.onnx"
        q.quant_pre_process(str(src_graph), str(pre), skip_symbolic_shape=True,
                            save_as_external_data=True, all_tensors_to_one_file=True)
        dst = pathlib.Path(dst_folder) / GRAPH
        q.quantize_dynamic(str(pre), str(dst), op_types_to_quantize=["MatMul"], per_channel=True,
                           weight_type=q.QuantType.QInt8, use_external_data_format=True)
    return dst
