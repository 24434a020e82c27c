"""What every bench measures, one implementation each: model calls, A/B wall time, peak memory.

Errors and metrics live in engines/evaluation.py (host-free, shared with the engine tests).
"""
import statistics
import time

import torch


class ModelCalls:
    """Counts the calls that really run a diffusion model (a torch module): calls, batch rows,
    latent pixels, each call's input shape and noise level and, with `flops=True`, torch's FLOPs.

    Hooks the module itself, so it sees every call however the model is reached (a cached MODEL
    in the executor, a wrapper chain). `at`: a submodule that must run for a call to count (e.g.
    the UNet's output layer, so a cache that skips the body is not counted)."""

    def __init__(self, module, at=None, flops=False):
        self.module, self.at, self.flops_on = module, at, flops
        self.handles = []
        self.take()

    def __enter__(self):
        self.handles = [self.module.register_forward_pre_hook(self._enter, with_kwargs=True)]
        if self.at is not None:
            self.handles.append(self.at.register_forward_pre_hook(self._computed))
        if self.flops_on:
            self.handles.append(self.module.register_forward_hook(self._exit))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []

    def _enter(self, module, args, kwargs):
        x = args[0] if args else kwargs["x"]
        sigmas = kwargs.get("transformer_options", {}).get("sigmas")
        self._now = (float(sigmas.reshape(-1)[0]) if sigmas is not None else None, tuple(x.shape))
        if self.at is None:
            self._computed(module, args)
        if self.flops_on:
            from torch.utils.flop_counter import FlopCounterMode
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()

    def _computed(self, module, args):
        sigma, shape = self._now
        self.calls += 1
        self.rows += shape[0]
        self.pixels += shape[0] * shape[-2] * shape[-1]
        self.sigmas.append((sigma, shape[0]))
        self.shapes.append(shape)

    def _exit(self, module, args, output):
        self._counter.__exit__(None, None, None)
        self.flops += self._counter.get_total_flops()

    def take(self):
        """(calls, rows) since the last take, and reset every count."""
        counts = (getattr(self, "calls", 0), getattr(self, "rows", 0))
        self.calls = self.rows = self.pixels = self.flops = 0
        self.sigmas, self.shapes = [], []
        return counts


def device_name(device=None):
    """The device in words for bench headers: the GPU's name, or the CPU with its thread count."""
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU ({torch.get_num_threads()} threads)"


def sync(device=None):
    """Wait for queued GPU work, so a timing or memory reading covers it (no-op on CPU)."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def timed(fn):
    """(seconds, result) of fn(), GPU work included."""
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


def side_by_side(runs, rounds, warmup=False):
    """Median seconds per named callable fn(round), run A B C A B C ... so load drifts hit all alike."""
    if warmup:
        for fn in runs.values():
            fn(-1)
    times = {name: [] for name in runs}
    for i in range(rounds):
        for name, fn in runs.items():
            times[name].append(timed(lambda: fn(i))[0])
    return {name: statistics.median(t) for name, t in times.items()}


class PeakMemory:
    """Peak memory of a block above its start: torch's peak allocation on CUDA (and the peak the
    caching allocator reserved), else the growth of the process's peak resident set (VmHWM,
    reset through /proc/self/clear_refs; Linux)."""

    def __init__(self, cuda=None):
        self.cuda = torch.cuda.is_available() if cuda is None else cuda
        self.method = "torch.cuda peak allocation" if self.cuda else "peak RSS (VmHWM) growth"
        self.peak = self.reserved = 0

    @staticmethod
    def status(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            self.start = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.start = self.status("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
            self.reserved = torch.cuda.max_memory_reserved()
        else:
            self.peak = self.status("VmHWM") - self.start
