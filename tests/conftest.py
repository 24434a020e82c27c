"""Test tiers: engines (always), host (`host` marker: a ComfyUI checkout), browser (`browser`).

The pack is importable here as `sprint` (its folder name is whatever the clone is called). The
host tier boots ComfyUI once per session, on CPU (SPRINT_TEST_DEVICE=cuda: in ComfyUI's default GPU
mode, its fp16/bf16 weights and memory manager; tests marked `cpu_only` skip there), and loads
Sprint through ComfyUI's own custom-node loader; without a host (or, for cuda, without a CUDA
device) it is skipped with one line, or fails when SPRINT_REQUIRE_HOST=1.
"""
import importlib.util
import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(pathlib.Path(__file__).parent))     # harness.py, toy_unet.py (pytest's importlib mode)
_spec = importlib.util.spec_from_file_location("sprint", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
sprint = importlib.util.module_from_spec(_spec)
sys.modules["sprint"] = sprint
_spec.loader.exec_module(sprint)

from sprint.bench import host as hostlib  # noqa: E402

REQUIRE_HOST = os.environ.get("SPRINT_REQUIRE_HOST") == "1"
DEVICE = os.environ.get("SPRINT_TEST_DEVICE", "cpu")
ENABLE_HINT = "fix it, or point COMFYUI_PATH at a working ComfyUI 0.3.64 checkout"


def _host_path():
    if DEVICE not in ("cpu", "cuda"):
        return None, f"SPRINT_TEST_DEVICE={DEVICE!r}: choose cpu (default) or cuda"
    if DEVICE == "cuda":
        import torch
        if not torch.cuda.is_available():
            return None, f"SPRINT_TEST_DEVICE=cuda but torch {torch.__version__} sees no CUDA device"
    try:
        return hostlib.find_comfyui(), None
    except hostlib.HostNotFound as e:
        return None, str(e)


HOST_PATH, HOST_MISSING = _host_path()
_host_state = {"host": None, "error": None}


def pytest_configure(config):
    config.addinivalue_line("markers", "cpu_only(reason): checks something only a CPU host shows; "
                                       "skipped with SPRINT_TEST_DEVICE=cuda")


def pytest_report_header(config):
    return f"ComfyUI host: {HOST_PATH or 'none'} on {DEVICE}" + (" (required)" if REQUIRE_HOST else "")


def _unavailable(reason):
    if REQUIRE_HOST:
        pytest.fail(f"SPRINT_REQUIRE_HOST=1 but the host tier cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def host(tmp_path_factory):
    """The booted ComfyUI (hostlib.Host) with Sprint and the harness nodes loaded."""
    if HOST_PATH is None:
        _unavailable(HOST_MISSING)
    if _host_state["host"] is None and _host_state["error"] is None:
        try:
            import harness
            _host_state["host"] = harness.boot(HOST_PATH, tmp_path_factory.mktemp("comfy-base"), cpu=DEVICE == "cpu")
        except Exception as e:  # a broken host is reported, and fails when the host is required
            _host_state["error"] = f"ComfyUI at {HOST_PATH} failed to boot: {type(e).__name__}: {e}"
    if _host_state["error"]:
        _unavailable(_host_state["error"])
    return _host_state["host"]


@pytest.fixture(autouse=True)
def _tiers(request):
    """Host and browser tests start by asking for the host, so they skip (or fail) together."""
    if request.node.get_closest_marker("host") or request.node.get_closest_marker("browser"):
        request.getfixturevalue("host")
    cpu_only = request.node.get_closest_marker("cpu_only")
    if cpu_only and DEVICE != "cpu":
        pytest.skip(f"CPU-specific ({cpu_only.args[0] if cpu_only.args else 'CPU host only'})")


def pytest_sessionfinish(session):
    """Free the host's models while ComfyUI's modules still exist: a ModelPatcher collected at
    interpreter exit prints an ignored AttributeError from its __del__."""
    if _host_state["host"] is not None:
        import gc
        import comfy.model_management
        import harness
        harness.OBJECTS.clear()                 # what the tests' graphs were handed
        comfy.model_management.unload_all_models()
        gc.collect()


def pytest_terminal_summary(terminalreporter):
    """One line for all skips, counted by reason (a missing host or browser is named once)."""
    reasons = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2].removeprefix("Skipped: ") if isinstance(report.longrepr, tuple) else "skipped"
        if reason == HOST_MISSING or (_host_state["error"] and reason == _host_state["error"]):
            reason = f"host tier: {reason}" + ("" if HOST_MISSING else f"; {ENABLE_HINT}")
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        terminalreporter.write_line(f"skipped {sum(reasons.values())}: "
                                    + "; ".join(f"{n} x {reason}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])))


@pytest.fixture(scope="session")
def taesd_data():
    """shared/data/taesd (the real taef2 weights), beside the checkout or beside its worktrees folder."""
    folder = hostlib.shared_taesd()
    if folder is not None:
        return folder
    pytest.skip(f"no shared/data/taesd beside {ROOT} or its parent: the real TAESD weights come with the project's shared/ folder")


@pytest.fixture
def model_calls():
    """attach(MODEL) -> bench.meters.ModelCalls counting its diffusion model's calls for the rest of
    the test (clones share the diffusion model, so every clone's calls count)."""
    from sprint.bench.meters import ModelCalls
    meters = []

    def attach(model):
        meters.append(ModelCalls(model.model.diffusion_model).__enter__())
        return meters[-1]
    yield attach
    for meter in meters:
        meter.__exit__(None, None, None)


@pytest.fixture(scope="session")
def synthetic(host):
    """bench/synthetic.py as ComfyUI loaded it: random-weight SD1.5 models and the GMM model."""
    return host.pack.bench.synthetic


@pytest.fixture(scope="session")
def tiny_model(synthetic):
    """A 32-channel SD1.5-architecture MODEL (clone before patching, as nodes do)."""
    return synthetic.sd15_model("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_clip(synthetic):
    return synthetic.sd15_clip(tiny=True, seed=0)


@pytest.fixture(scope="session")
def taesd_vae(synthetic):
    return synthetic.taesd_vae(seed=0)


@pytest.fixture(scope="session")
def small_kl_vae(synthetic):
    return synthetic.small_kl_vae(seed=0)


@pytest.fixture(scope="session")
def sd15_checkpoint(host, synthetic):
    """File name of a shallow full-width SD1.5 checkpoint in the host's models/checkpoints."""
    import folder_paths
    name = "sprint_shallow_sd15.safetensors"
    path = pathlib.Path(folder_paths.get_folder_paths("checkpoints")[0]) / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        synthetic.write_sd15_checkpoint(path, unet="shallow", vae="taesd", seed=0)
    return name


@pytest.fixture(scope="session")
def light_decoder(host, synthetic, tmp_path_factory):
    """A random-weight taesd decoder linked into models/vae_approx, as the bench provides one."""
    import folder_paths
    file = tmp_path_factory.mktemp("light") / "taesd_decoder.safetensors"
    synthetic.write_taesd_decoder(file)
    name = host.pack.bench.run.provide_light_decoder(file)
    yield file
    (pathlib.Path(folder_paths.get_folder_paths("vae_approx")[0]) / name).unlink()


@pytest.fixture(scope="session")
def comfy_server(host, sd15_checkpoint, tmp_path_factory):
    """The real ComfyUI server on a loopback port (harness.Server), stopped after the session; it
    loads Qwen-Image files at the sizes of the tiny stand-ins (tests/browser/tiny_qwen_image_server.py)."""
    import folder_paths
    import harness
    server = harness.Server(host.comfy_path, tmp_path_factory.mktemp("server-base"),
                            folder_paths.get_folder_paths("checkpoints")[0], cpu=DEVICE == "cpu",
                            custom_nodes=[ROOT / "tests" / "browser" / "tiny_qwen_image_server.py"])
    try:
        server.wait()
        yield server
    finally:
        server.stop()
