"""The `torch` engine backend: the live UNet compiled by torch.compile (inductor), replayed as CUDA
graphs on NVIDIA GPUs (mode "reduce-overhead"), for machines without TensorRT or ONNX Runtime.

Nothing is written to disk: the compiled code lives in this process and shares the UNet's own
weights and dtype (ComfyUI's choice: fp16/bf16 on GPUs). It is compiled per input shape
(dynamic=False: one graph, and on CUDA one captured graph, per shape the sampler uses), at most
MAX_SHAPES of them; a further shape raises Uncompiled, and the caller runs that call eagerly.
"""
import torch

MAX_SHAPES = 8


class Uncompiled(RuntimeError):
    """This call's shape is not one the engine compiles (the message says why)."""


def mode(device):
    """torch.compile mode: CUDA-graph replay on CUDA (launch overhead gone), plain inductor elsewhere."""
    return "reduce-overhead" if torch.device(device).type == "cuda" else "default"


def version(device):
    """Runtime identity for keys: the compiler and how it runs."""
    return f"torch {torch.__version__.split('+')[0]} inductor {mode(device)}"


class _Call(torch.nn.Module):
    """The UNet with positional tensors and fixed extra options; a fresh transformer_options per
    call, since the UNet writes into it."""

    def __init__(self, unet, with_y, options):
        super().__init__()
        self.unet, self.with_y, self.options = unet, with_y, options

    def forward(self, x, timesteps, context, y=None):
        kwargs = {"y": y} if self.with_y else {}
        return self.unet(x, timesteps, context, transformer_options=dict(self.options), **kwargs)


class TorchUNet:
    """call(x, timesteps, context, y=None) -> the compiled UNet's output (the UNet's dtype, x's device).

    options: transformer_options for every call (the host passes a compile-friendly attention).
    nbytes: device memory the engine holds beyond the UNet's weights: the CUDA-graph memory pool
    (measured as reserved-memory growth while a shape is captured); 0 on CPU, where the compiled
    code allocates per call like eager PyTorch."""

    def __init__(self, unet, device, with_y=False, options=None):
        self.device = torch.device(device)
        self.module = _Call(unet, with_y, options or {})
        self.compiled = torch.compile(self.module, mode=mode(self.device), dynamic=False, fullgraph=False)
        self.shapes = set()
        self.nbytes = 0

    def _shape(self, x, context, y):
        return tuple(x.shape), tuple(context.shape), None if y is None else tuple(y.shape), x.dtype

    @torch.no_grad()
    def __call__(self, x, timesteps, context, y=None):
        shape = self._shape(x, context, y)
        new = shape not in self.shapes
        if new and len(self.shapes) >= MAX_SHAPES:
            raise Uncompiled(f"the torch backend compiled its {MAX_SHAPES} input shapes; further shapes run eagerly")
        cuda = self.device.type == "cuda"
        before = torch.cuda.memory_reserved(self.device) if cuda and new else 0
        if cuda:
            torch.compiler.cudagraph_mark_step_begin()   # the previous replay's outputs are consumed
        out = self.compiled(x, timesteps, context, y)
        if cuda:
            out = out.clone()                            # replay buffers are overwritten by the next call
            if new:
                torch.cuda.synchronize(self.device)
                self.nbytes += max(torch.cuda.memory_reserved(self.device) - before, 0)
        self.shapes.add(shape)
        return out
