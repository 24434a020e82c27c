"""TensorRT engines for an exported UNet (NVIDIA GPUs only): build a plan from the ONNX graph with
one optimization profile, run it on torch CUDA tensors.

FP16 builds from the FP32 graph with the FP16 flag (TensorRT 10, weakly typed) or, where the
precision flags are gone (TensorRT 11: strongly typed networks only), from the FP16 ONNX graph; INT8
builds from the QDQ graph that int8.py writes (explicit quantization: TensorRT keeps the
calibrated scales).
tensorrt is optional and imported only here, when asked for.
"""
import pathlib

import torch

from .export import INPUTS
from .ort import RuntimeMissing

PLAN = "unet.plan"


def require():
    """The tensorrt module with a CUDA device, or RuntimeMissing saying what is missing."""
    try:
        import tensorrt
    except ImportError as e:
        raise RuntimeMissing("TensorRT engines need the `tensorrt` package (pip install tensorrt) "
                             "and an NVIDIA GPU") from e
    if not torch.cuda.is_available():
        raise RuntimeMissing("TensorRT engines need an NVIDIA GPU; torch sees no CUDA device")
    return tensorrt


def available():
    try:
        require()
        return True
    except RuntimeMissing:
        return False


def version(device):
    """Runtime identity for artifact keys: plans are specific to the TensorRT version and GPU."""
    trt = require()
    props = torch.cuda.get_device_properties(device)
    return f"tensorrt {trt.__version__} on {props.name} sm_{props.major}{props.minor}"


def strongly_typed():
    """True where TensorRT takes precision from the graph alone (11.x removed BuilderFlag.FP16/INT8)."""
    return not hasattr(require().BuilderFlag, "FP16")


def shapes(profile, channels, context_dim, y_dim=None):
    """(min, opt, max) shapes per input name for a ShapeProfile."""
    opt = profile.optimum()
    lo = {"batch": profile.batch[0], "height": profile.height[0], "width": profile.width[0], "tokens": profile.tokens[0]}
    hi = {"batch": profile.batch[1], "height": profile.height[1], "width": profile.width[1], "tokens": profile.tokens[1]}
    dims = {"x": lambda d: (d["batch"], channels, d["height"], d["width"]), "timesteps": lambda d: (d["batch"],),
            "context": lambda d: (d["batch"], d["tokens"], context_dim), "y": lambda d: (d["batch"], y_dim)}
    names = INPUTS if y_dim is not None else INPUTS[:3]
    return {n: tuple(dims[n](d) for d in (lo, opt, hi)) for n in names}


def build_plan(graph, folder, input_shapes, precision):
    """Parse `graph` (ONNX), build for precision fp16/int8/fp32, write folder/unet.plan. Strongly
    typed TensorRT: the graph's own types decide (an FP16 or QDQ graph), the flags are not set."""
    trt = require()
    typed = strongly_typed()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if typed else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {graph}: {errors}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in input_shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    if not typed and precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if not typed and precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build a {precision} engine from {graph}")
    path = pathlib.Path(folder) / PLAN
    path.write_bytes(bytes(plan))
    return path


class TrtUNet:
    """A plan run on CUDA: call(x, timesteps, context, y=None) -> float32 tensor on the GPU."""

    def __init__(self, plan_path, device="cuda"):
        trt = require()
        self.device = torch.device(device)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(pathlib.Path(plan_path).read_bytes())
        self.context = self.engine.create_execution_context()
        self.inputs = [n for n in (self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors))
                       if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.nbytes = pathlib.Path(plan_path).stat().st_size + self.engine.device_memory_size_v2

    def __call__(self, x, timesteps, context, y=None):
        feed = {"x": x, "timesteps": timesteps, "context": context, "y": y}
        stream = torch.cuda.current_stream(self.device)
        keep = []
        for name in self.inputs:
            t = feed[name].detach().to(self.device, torch.float32).contiguous()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        out = torch.empty(tuple(self.context.get_tensor_shape("out")), dtype=torch.float32, device=self.device)
        self.context.set_tensor_address("out", out.data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out
