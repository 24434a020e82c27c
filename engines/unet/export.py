"""A UNet with the k-diffusion/ComfyUI signature forward(x, timesteps, context, y=None) as ONNX,
dynamic in batch, latent height/width and context tokens within a ShapeProfile.

Weights go to one external-data file beside the graph, so full-size UNets (> 2 GB in FP32, the
protobuf limit) export the same way as tiny ones.
"""
import contextlib
import dataclasses
import pathlib
import tempfile
import warnings

import torch

GRAPH = "unet.onnx"
INPUTS = ("x", "timesteps", "context", "y")
OPSET = 17


@dataclasses.dataclass(frozen=True)
class ShapeProfile:
    """The input shapes an engine is built and validated for (latent pixels, UNet batch rows).

    `multiple`: latent sides must divide by 2**(levels - 1), since the traced graph concatenates
    skip connections without the resizing PyTorch does for odd sizes."""
    batch: tuple = (1, 4)
    height: tuple = (32, 128)
    width: tuple = (32, 128)
    tokens: tuple = (77, 231)
    multiple: int = 8

    def violation(self, x_shape, tokens):
        """None when (x_shape [B, C, H, W], tokens) fits, else the reason it does not."""
        b, _, h, w = x_shape
        for name, value, (lo, hi) in (("batch", b, self.batch), ("latent height", h, self.height),
                                      ("latent width", w, self.width), ("context tokens", tokens, self.tokens)):
            if not lo <= value <= hi:
                return f"{name} {value} outside the engine profile [{lo}, {hi}]"
        if h % self.multiple or w % self.multiple:
            return f"latent {h}x{w} not a multiple of {self.multiple}"
        return None

    def optimum(self):
        """Shapes TensorRT tunes for: batch 2 (CFG), 64x64 latent (512 px), 77 tokens, clamped."""
        clamp = lambda v, r: min(max(v, r[0]), r[1])  # noqa: E731
        return {"batch": clamp(2, self.batch), "height": clamp(64, self.height),
                "width": clamp(64, self.width), "tokens": clamp(77, self.tokens)}

    def as_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d):
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class _Signature(torch.nn.Module):
    """Fixes the call to positional tensors (what the exporter traces); extra keyword arguments
    (ComfyUI's transformer_options) ride along unchanged."""

    def __init__(self, unet, with_y, forward_kwargs):
        super().__init__()
        self.unet, self.with_y, self.forward_kwargs = unet, with_y, forward_kwargs

    def forward(self, x, timesteps, context, y=None):
        kwargs = dict(self.forward_kwargs, y=y) if self.with_y else self.forward_kwargs
        return self.unet(x, timesteps, context, **kwargs)


def example_inputs(profile, in_channels, context_dim, y_dim=None, dtype=torch.float32, device="cpu"):
    """Inputs at the profile's low end (batch 2 when allowed): cheap to trace, every axis dynamic."""
    b, h, w, t = min(max(2, profile.batch[0]), profile.batch[1]), profile.height[0], profile.width[0], profile.tokens[0]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, in_channels, h, w, generator=g).to(device, dtype)
    ts = torch.linspace(999, 1, b).to(device)
    context = torch.randn(b, t, context_dim, generator=g).to(device, dtype)
    y = None if y_dim is None else torch.randn(b, y_dim, generator=g).to(device, dtype)
    return x, ts, context, y


@torch.no_grad()
def export_unet(unet, folder, profile, in_channels, context_dim, y_dim=None, forward_kwargs=None, check=None):
    """Write folder/unet.onnx (+ unet.onnx.data) for `unet`; returns the graph's path.

    y_dim: width of the class/ADM vector `y` (SDXL) or None. forward_kwargs: extra keyword
    arguments for every traced call (the host passes an export-friendly attention). check(): called
    between the stages (trace, load, save), raises to stop (the host's interrupt)."""
    check = check or (lambda: None)
    import onnx
    folder = pathlib.Path(folder)
    with_y = y_dim is not None
    names = list(INPUTS if with_y else INPUTS[:3])
    dynamic = {"x": {0: "batch", 2: "height", 3: "width"}, "timesteps": {0: "batch"},
               "context": {0: "batch", 1: "tokens"}, "y": {0: "batch"}, "out": {0: "batch", 2: "height", 3: "width"}}
    param = next(unet.parameters())
    args = example_inputs(profile, in_channels, context_dim, y_dim, param.dtype, param.device)[:len(names)]
    with tempfile.TemporaryDirectory(dir=folder) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")          # tracer warnings about shape-dependent Python branches
        raw = pathlib.Path(tmp) / GRAPH
        torch.onnx.export(_Signature(unet, with_y, forward_kwargs or {}).eval(), tuple(args), str(raw),
                          input_names=names, output_names=["out"], opset_version=OPSET,
                          dynamic_axes={k: dynamic[k] for k in names + ["out"]}, dynamo=False)
        check()
        model = onnx.load(str(raw))
    check()
    return save_model(model, folder / GRAPH)


def save_model(model, path):
    """An ONNX ModelProto as `path` + one external weights file `path`.data (any size)."""
    import onnx
    path = pathlib.Path(path)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=0)
    return path


class _Call(torch.nn.Module):
    """A transformer's forward with its tensor arguments positional, in `names` order (what the
    exporter traces); the non-tensor ones (None, counts, options) are fixed."""

    def __init__(self, model, names, fixed):
        super().__init__()
        self.model, self.names, self.fixed = model, names, fixed

    def forward(self, *tensors):
        return self.model(**self.fixed, **dict(zip(self.names, tensors)))


def _rms_norm(g, x, shape, weight, eps):
    """aten::rms_norm (torch >= 2.4, used by Lumina 2, HiDream, Wan) in opset-17 ops."""
    from torch.onnx import symbolic_helper as sh
    eps = 1e-6 if sh._is_none(eps) else sh._maybe_get_const(eps, "f")
    mean = g.op("ReduceMean", g.op("Mul", x, x), axes_i=[-1], keepdims_i=1)
    out = g.op("Div", x, g.op("Sqrt", g.op("Add", mean, g.op("Constant", value_t=torch.tensor(eps)))))
    return out if sh._is_none(weight) else g.op("Mul", out, weight)


def _einsum(g, equation, tensor_list, path=None):
    """aten::einsum with mixed float/double operands (the RoPE tables of Flux-style models take
    float64 frequencies): PyTorch promotes them, ONNX needs one type, so both become double."""
    from torch.onnx import symbolic_helper as sh
    from torch.onnx._internal.torchscript_exporter._type_utils import JitScalarType
    tensors = sh._unpack_list(tensor_list)
    if len({JitScalarType.from_value(t) for t in tensors}) > 1:
        tensors = [g.op("Cast", t, to_i=JitScalarType.DOUBLE.onnx_type()) for t in tensors]
    return g.op("Einsum", *tensors, equation_s=sh._maybe_get_const(equation, "s"))


@contextlib.contextmanager
def _transformer_ops():
    """What tracing ComfyUI's transformers needs beyond the stock exporter: the two symbolics
    above, and round() of traced sizes (Qwen-Image rounds x.shape arithmetic, which the tracer
    hands over as tensors)."""
    for op, fn in (("aten::rms_norm", _rms_norm), ("aten::einsum", _einsum)):
        torch.onnx.register_custom_op_symbolic(op, fn, OPSET)
    torch.Tensor.__round__ = lambda self, ndigits=None: self.round()
    try:
        yield
    finally:
        del torch.Tensor.__round__
        for op in ("aten::rms_norm", "aten::einsum"):
            torch.onnx.unregister_custom_op_symbolic(op, OPSET)


@torch.no_grad()
def export_call(model, folder, names, tensors, fixed, check=None):
    """Write folder/unet.onnx (+ .data) for a transformer's forward(**fixed, **{names: tensors}),
    at exactly these shapes: the transformers' position tables and patching are traced as
    constants of the shapes, so an engine serves one input shape (a sampling run keeps it)."""
    check = check or (lambda: None)
    import onnx
    folder = pathlib.Path(folder)
    with tempfile.TemporaryDirectory(dir=folder) as tmp, warnings.catch_warnings(), _transformer_ops():
        warnings.simplefilter("ignore")
        raw = pathlib.Path(tmp) / GRAPH
        torch.onnx.export(_Call(model, list(names), fixed).eval(), tuple(tensors), str(raw), input_names=list(names),
                          output_names=["out"], opset_version=OPSET, dynamo=False)
        check()
        graph = onnx.load(str(raw))
    check()
    return save_model(graph, folder / GRAPH)
