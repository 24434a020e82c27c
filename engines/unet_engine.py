"""What an engine artifact is (its key), how each kind is built from the others, how it is run.

Build chain (each link is an artifact of its own, so an FP16 or INT8 build reuses the FP32
export, and TensorRT reuses the ONNX graphs):
    onnxruntime fp32  <- export(folder)         the torch UNet traced to ONNX
    onnxruntime fp16  <- onnxruntime fp32       FP16 weights and compute, FP32 I/O
    onnxruntime int8  <- onnxruntime fp32       static QDQ, calibrated on sampling calls
    tensorrt p        <- onnxruntime fp32 (p = fp32/fp16) or int8 (the QDQ graph)
"""
import torch

from . import ort_runtime, quantize, tensorrt_runtime
from .files import digest
from .onnx_export import GRAPH, OPSET, ShapeProfile
from .tensorrt_runtime import PLAN

BACKENDS = ("onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_CALLS = 16


def runtime_version(backend, device):
    if backend == "tensorrt":
        return tensorrt_runtime.version(torch.device(device))
    return f"onnxruntime {ort_runtime.version()}"


def make_key(weights, arch, profile: ShapeProfile, precision, backend, device):
    """Everything an artifact's validity depends on. `weights`: digest of the effective weights
    (base + patches/LoRA); `arch`: digest of the UNet configuration."""
    if backend not in BACKENDS or precision not in PRECISIONS:
        raise ValueError(f"unknown engine {backend}/{precision}; backends {BACKENDS}, precisions {PRECISIONS}")
    device = torch.device(device)
    key = {"weights": weights, "arch": arch, "profile": profile.as_dict(), "precision": precision,
           "backend": backend, "device": device.type, "runtime": runtime_version(backend, device),
           "exporter": f"torch {torch.__version__.split('+')[0]} opset {OPSET}"}
    if precision == "int8":
        key["quantization"] = digest(quantize.KEEP_FLOAT, quantize.QUANTIZED_OPS, "qdq-minmax-u8s8-per-channel")
    return key


def source_key(key):
    """The artifact a build of `key` starts from (None: the torch export itself)."""
    if key["backend"] == "tensorrt":
        graph = "int8" if key["precision"] == "int8" else "fp32"
        return make_key(key["weights"], key["arch"], ShapeProfile.from_dict(key["profile"]), graph, "onnxruntime", key["device"])
    if key["precision"] != "fp32":
        return dict({k: v for k, v in key.items() if k != "quantization"}, precision="fp32")
    return None


def build(store, key, export, shapes=None, calibration=None, progress=None):
    """The artifact for `key` from `store`, building it and its sources as needed.

    export(folder): writes the FP32 graph (folder/unet.onnx) from the live torch UNet.
    shapes: TensorRT (min, opt, max) per input (tensorrt_runtime.shapes). calibration: recorded
    calls for INT8 (CalibrationSet.select). progress(): one tick per unit of work."""
    src = source_key(key)
    if src is not None:
        source = build(store, src, export, shapes, calibration, progress)
    tick = progress or (lambda: None)

    def make(folder):
        if src is None:
            export(folder)
        elif key["backend"] == "tensorrt":
            tensorrt_runtime.build_plan(source.path / GRAPH, folder, shapes, key["precision"])
        elif key["precision"] == "fp16":
            ort_runtime.to_fp16(source.path / GRAPH, folder / GRAPH)
        else:
            if not calibration:
                raise ValueError("an INT8 engine needs calibration calls recorded from a sampling run")
            quantize.quantize_int8(source.path / GRAPH, folder, calibration, progress=progress)
            return {"calibration_calls": len(calibration)}
        tick()
        return {}
    return store.ensure(key, make)


def load(artifact, device):
    """A callable runtime for a verified artifact: (x, timesteps, context, y=None) -> tensor."""
    if artifact.key["backend"] == "tensorrt":
        return tensorrt_runtime.TrtUNet(artifact.path / PLAN, device)
    return ort_runtime.OrtUNet(artifact.path / GRAPH, device)
