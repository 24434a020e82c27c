"""ONNX Runtime sessions for an exported UNet: CPU or CUDA execution provider, FP32 or FP16.

onnxruntime is optional: `require()` imports it or raises one message naming the package.
"""
import pathlib

import numpy as np
import torch

from .export import GRAPH, save_model

PACKAGE_HINT = "pip install onnx onnxruntime (CPU) or onnxruntime-gpu (CUDA)"


class RuntimeMissing(ImportError):
    """An optional runtime package is not installed (the message names it)."""


def require():
    """The onnxruntime module, or RuntimeMissing naming what to install."""
    try:
        import onnx  # noqa: F401  (export and quantization need it too)
        import onnxruntime
    except ImportError as e:
        raise RuntimeMissing(f"ONNX Runtime engines need the `{e.name}` package: {PACKAGE_HINT}") from e
    return onnxruntime


def version():
    return require().__version__


def providers(device):
    """Execution providers for a torch device: CUDA first (then CPU for unsupported ops), or CPU."""
    ort = require()
    device = torch.device(device)
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    raise RuntimeMissing(f"ONNX Runtime has no execution provider for {device} "
                         f"(available: {', '.join(ort.get_available_providers())}); for CUDA: pip install onnxruntime-gpu")


def to_fp16(src, dst):
    """Convert an FP32 graph to FP16 weights and compute, keeping FP32 inputs/outputs so callers
    need not know; returns dst."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    return save_model(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), dst)


class OrtUNet:
    """A UNet artifact run by ONNX Runtime: call(x, timesteps, context, y=None) -> torch tensor
    on x's device, in float32 like ComfyUI's UNet output after `.float()`; a transformer's
    graph (inputs named after its forward's arguments) through run()."""

    def __init__(self, graph_path, device="cpu", threads=0):
        ort = require()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        self.device = torch.device(device)
        self.session = ort.InferenceSession(str(graph_path), options, providers=providers(self.device))
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.out_channels = self.session.get_outputs()[0].shape[1]   # static: only B, H, W are dynamic
        self.nbytes = artifact_bytes(pathlib.Path(graph_path).parent)

    def __call__(self, x, timesteps, context, y=None):
        return self.run({"x": x, "timesteps": timesteps, "context": context, "y": y}, x)

    def run(self, inputs, x):
        """The graph on `inputs` (name -> tensor; the graph's inputs are taken, in float32);
        the output is shaped like x with the graph's output channels."""
        feed = {k: inputs[k].detach().float().contiguous() for k in self.inputs}
        if self.device.type == "cpu":
            out = self.session.run(["out"], {k: v.cpu().numpy() for k, v in feed.items()})[0]
            return torch.from_numpy(out).to(x.device)
        return self._run_bound(feed, x.shape)

    def _run_bound(self, feed, shape):
        """CUDA: bind torch memory in place (no host round trip)."""
        binding = self.session.io_binding()
        index = self.device.index or 0
        for name, t in feed.items():
            t = t.to(self.device)
            feed[name] = t                     # keep alive until run returns
            binding.bind_input(name, "cuda", index, np.float32, tuple(t.shape), t.data_ptr())
        out = torch.empty((shape[0], self.out_channels, *shape[2:]), dtype=torch.float32, device=self.device)
        binding.bind_output("out", "cuda", index, np.float32, tuple(out.shape), out.data_ptr())
        self.session.run_with_iobinding(binding)
        return out


def artifact_bytes(folder):
    """Weight bytes an engine holds: the size of its graph and weight files."""
    return sum(p.stat().st_size for p in pathlib.Path(folder).glob(GRAPH + "*"))
