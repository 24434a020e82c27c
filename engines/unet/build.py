"""What an engine artifact is (its key), how each kind is built from the others, how it is run,
and the choices around it (which backend on which device, what a build will cost).

Build chain (each link is an artifact of its own, so an FP16 or INT8 build reuses the FP32
export, and TensorRT reuses the ONNX graphs):
    onnxruntime fp32  <- export(folder)         the torch UNet traced to ONNX
    onnxruntime fp16  <- onnxruntime fp32       FP16 weights and compute, FP32 I/O
    onnxruntime int8  <- onnxruntime fp32       UNets: static QDQ, calibrated on sampling calls;
                                                transformers: dynamic INT8 MatMuls, no calibration
    tensorrt p        <- onnxruntime fp32 (p = fp32/fp16; fp16 from onnxruntime fp16 on TensorRT 11,
                         which takes precision from the graph) or int8 (the QDQ graph)
The `torch` backend has no artifact: torch.compile of the live UNet, in memory per process (its
key has the same fields, so a weight or profile change still means a new compile).
"""
import json

import torch

from . import int8, ort, tensorrt, torch_backend
from ..files import digest
from .artifacts import SIDECAR, ArtifactError
from .export import GRAPH, OPSET, ShapeProfile
from .tensorrt import PLAN

BACKENDS = ("onnxruntime", "tensorrt", "torch")
IN_MEMORY = ("torch",)          # backends compiled per process: nothing in the store
PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_CALLS = 16
BYTES_PER_WEIGHT = {"fp32": 4, "fp16": 2, "int8": 1}


def resolve(backend, device):
    """(backend, device) to run `backend` ("auto" or one of BACKENDS) on; raises ort.RuntimeMissing
    naming the package to install. auto: TensorRT on a CUDA device where installed, else ONNX
    Runtime where it runs on the device, else torch.compile."""
    device = torch.device(device)
    if backend == "auto":
        backend = "tensorrt" if device.type == "cuda" and tensorrt.available() else \
            "onnxruntime" if _ort_runs_on(device) else "torch"
    if backend == "torch":
        return "torch", device
    if backend == "tensorrt":
        tensorrt.require()
        return "tensorrt", device
    if backend != "onnxruntime":
        raise ValueError(f"unknown engine backend {backend!r}; choose auto or one of {BACKENDS}")
    ort.require()
    if device.type != "cpu":
        ort.providers(device)      # raises without onnxruntime-gpu
    return "onnxruntime", device


def _ort_runs_on(device):
    try:
        ort.providers(device)
        return True
    except ort.RuntimeMissing:
        return False


def describe(unet_config):
    """(arch, multiple) of a UNet configuration: the inputs an export needs (channels, context
    width, class-vector width for SDXL-style `y`) and the factor latent sides must divide by."""
    levels = len(unet_config.get("channel_mult", ())) or 1
    arch = {"in_channels": unet_config.get("in_channels", 4), "context_dim": unet_config.get("context_dim"),
            "y_dim": unet_config.get("adm_in_channels") if unet_config.get("num_classes") == "sequential" else None}
    return arch, 2 ** (levels - 1)


def profile_from_pixels(max_batch, min_size, max_size, max_tokens, multiple=8):
    """A ShapeProfile from image sides in pixels (latent = pixels / 8)."""
    if min_size > max_size:
        raise ValueError(f"min_size {min_size} is larger than max_size {max_size}")
    side = (min_size // 8, max_size // 8)
    return ShapeProfile(batch=(1, max_batch), height=side, width=side, tokens=(77, max_tokens), multiple=multiple)


def runtime_version(backend, device):
    if backend == "torch":
        return torch_backend.version(device)
    if backend == "tensorrt":
        return tensorrt.version(torch.device(device))
    return f"onnxruntime {ort.version()}"


def make_key(weights, arch, profile: ShapeProfile, precision, backend, device, transformer=False):
    """Everything an artifact's validity depends on. `weights`: digest of the effective weights
    (base + patches/LoRA); `arch`: digest of the UNet configuration (for a transformer: also of
    its call, i.e. argument names, shapes and fixed values). transformer: INT8 is dynamic."""
    if backend not in BACKENDS or precision not in PRECISIONS:
        raise ValueError(f"unknown engine {backend}/{precision}; backends {BACKENDS}, precisions {PRECISIONS}")
    if backend in IN_MEMORY and precision == "int8":
        raise ValueError("the torch backend runs the UNet in its own dtype: int8 needs onnxruntime or tensorrt")
    device = torch.device(device)
    key = {"weights": weights, "arch": arch, "profile": profile.as_dict(), "precision": precision,
           "backend": backend, "device": device.type, "runtime": runtime_version(backend, device)}
    if backend in IN_MEMORY:
        key["artifact"] = "none: compiled in memory per process"
    else:
        key["exporter"] = f"torch {torch.__version__.split('+')[0]} opset {OPSET}"
    if precision == "int8":
        key["quantization"] = int8.DYNAMIC if transformer else \
            digest(int8.KEEP_FLOAT, int8.QUANTIZED_OPS, "qdq-minmax-u8s8-per-channel")
    return key


def needs_calibration(key):
    """An INT8 key quantized statically (UNets: from a recorded sampling run)."""
    return key["precision"] == "int8" and key.get("quantization") != int8.DYNAMIC


def source_key(key):
    """The artifact a build of `key` starts from (None: the torch export itself)."""
    if key["backend"] == "tensorrt":
        graph = key["precision"] if key["precision"] == "int8" or tensorrt.strongly_typed() else "fp32"
        source = make_key(key["weights"], key["arch"], ShapeProfile.from_dict(key["profile"]), graph, "onnxruntime",
                          key["device"], key.get("quantization") == int8.DYNAMIC)
        return source
    if key["precision"] != "fp32":
        return dict({k: v for k, v in key.items() if k != "quantization"}, precision="fp32")
    return None


def calibration_graph(key):
    """The INT8 QDQ graph an INT8 `key` is built from (itself on ONNX Runtime): the artifact that
    needs calibration calls recorded from a sampling run."""
    return source_key(key) if key["backend"] == "tensorrt" else key


def missing_builds(store, key):
    """How many links of key's build chain are not in `store` yet (0: ready)."""
    steps = 0
    while key is not None and store.lookup(key) is None:
        steps, key = steps + 1, source_key(key)
    return steps


def recorded_key(path):
    """The key an engine folder's sidecar records, even when its files are corrupt (so the engine
    can be rebuilt with the same settings); ArtifactError when there is none."""
    try:
        key = json.loads((path / SIDECAR).read_text())["key"]
        ShapeProfile.from_dict(key["profile"])
        if key["backend"] in BACKENDS and key["backend"] not in IN_MEMORY and key["precision"] in PRECISIONS:
            return key
    except (OSError, ValueError, KeyError, TypeError):
        pass
    raise ArtifactError(f"{path.name}: no readable Sprint engine settings")


def build(store, key, export, arch=None, calibration=None, progress=None):
    """The artifact for `key` from `store`, building it and its sources as needed.

    export(folder): writes the FP32 graph (folder/unet.onnx) from the live torch UNet.
    arch: describe()'s inputs, for TensorRT's shape ranges. calibration: recorded calls for INT8
    (CalibrationSet.select). progress(): one tick per unit of work; it may raise to stop (the host's
    interrupt), between links, so every finished link is kept."""
    src = source_key(key)
    if src is not None:
        source = build(store, src, export, arch, calibration, progress)
    made = []

    def make(folder):
        made.append(not needs_calibration(key) or key["backend"] == "tensorrt")   # int8.quantize ticks itself
        if src is None:
            export(folder)
        elif key["backend"] == "tensorrt":
            shapes = tensorrt.shapes(ShapeProfile.from_dict(key["profile"]), arch["in_channels"], arch["context_dim"],
                                     arch["y_dim"])
            tensorrt.build_plan(source.path / GRAPH, folder, shapes, key["precision"])
        elif key["precision"] == "fp16":
            ort.to_fp16(source.path / GRAPH, folder / GRAPH)
        elif not needs_calibration(key):
            int8.quantize_dynamic_int8(source.path / GRAPH, folder)
        else:
            if not calibration:
                raise ValueError("an INT8 engine needs calibration calls recorded from a sampling run")
            int8.quantize_int8(source.path / GRAPH, folder, calibration, progress=progress)
            return {"calibration_calls": len(calibration)}
        return {}
    artifact = store.ensure(key, make)
    if any(made) and progress:
        progress()          # after the artifact is in place: an interrupt here keeps it
    return artifact


def load(artifact, device):
    """A callable runtime for a verified artifact: (x, timesteps, context, y=None) -> tensor."""
    if artifact.key["backend"] == "tensorrt":
        return tensorrt.TrtUNet(artifact.path / PLAN, device)
    return ort.OrtUNet(artifact.path / GRAPH, device)
