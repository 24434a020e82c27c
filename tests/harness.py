"""Host-tier harness: ComfyUI booted once, in-memory objects fed to prompts, the real server.

`put(obj)` stores a MODEL/CLIP/VAE/LATENT/CONDITIONING/... and `source(graph, obj)` adds a
HarnessSource node that hands it to the executor, so prompts run on tiny models built in memory.
"""
import contextlib
import itertools
import json
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

from sprint.bench import host as hostlib

OBJECTS = {}
_keys = itertools.count()
TYPES = ("MODEL", "CLIP", "VAE", "LATENT", "CONDITIONING", "IMAGE", "SAMPLER", "SIGMAS", "UPSCALE_MODEL", "CONTROL_NET")


def _source_node(type_name):
    class HarnessSource:
        """Test-only: returns an object the test stored with put()."""
        RETURN_TYPES = (type_name,)
        FUNCTION = "get"
        CATEGORY = "testing"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"key": ("STRING", {"default": ""})}}

        @classmethod
        def IS_CHANGED(cls, key):
            return key

        def get(self, key):
            return (OBJECTS[key],)
    return HarnessSource


def boot(comfy_path, base_dir, cpu=True):
    """ComfyUI booted on CPU, or (cpu=False) in its default GPU mode, with the harness nodes."""
    host = hostlib.boot(comfy_path, base_dir, cpu=cpu)
    for t in TYPES:
        host.nodes.NODE_CLASS_MAPPINGS[f"HarnessSource{t}"] = _source_node(t)
    return host


def put(obj):
    key = f"obj{next(_keys)}"
    OBJECTS[key] = obj
    return key


def source(graph, type_name, obj):
    """A node in `graph` (a comfy_execution GraphBuilder) that outputs `obj` as `type_name`."""
    return graph.node(f"HarnessSource{type_name}", key=put(obj)).out(0)


@contextlib.contextmanager
def captured_events():
    """Stand in for PromptServer.instance during a block; yields the (event, data) list it got."""
    import server

    class Recorder:
        client_id = "harness"

        def __init__(self):
            self.events = []

        def send_sync(self, event, data, sid=None):
            self.events.append((event, data))

    recorder, previous = Recorder(), getattr(server.PromptServer, "instance", None)
    server.PromptServer.instance = recorder
    try:
        yield recorder.events
    finally:
        if previous is None:
            del server.PromptServer.instance
        else:
            server.PromptServer.instance = previous

def cli(host, *args, cache=None, timeout=900, env=None):
    """`python <Sprint> --comfyui <host> ARGS` as a user runs it (with --gpu in the CUDA tier), with
    its cache in `cache` and `env` added to the environment; returns the finished process (stdout,
    stderr as text) after asserting it succeeded."""
    import os
    env = dict(os.environ, **({"SPRINT_CACHE": str(cache)} if cache else {}), **(env or {}))
    gpu = ["--gpu"] if os.environ.get("SPRINT_TEST_DEVICE") == "cuda" else []
    run = subprocess.run([sys.executable, str(hostlib.PACK_ROOT), "--comfyui", str(host.comfy_path), *gpu, *map(str, args)],
                         capture_output=True, text=True, timeout=timeout, env=env)
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-3000:])
    return run


def free_port():
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The real ComfyUI server (main.py, --cpu unless cpu=False) on a loopback port, Sprint
    reachable through an extra model-paths file, an in-memory database and a temp base directory;
    `custom_nodes`: test-only custom-node files linked into its custom_nodes folder."""

    def __init__(self, comfy_path, base_dir, checkpoints_dir=None, cpu=True, custom_nodes=()):
        self.base_dir = pathlib.Path(base_dir)
        packs = self.base_dir / "packs"
        hostlib.link_pack(packs)
        (self.base_dir / "custom_nodes").mkdir(exist_ok=True)   # main.py lists it unconditionally
        for module in custom_nodes:
            (self.base_dir / "custom_nodes" / pathlib.Path(module).name).symlink_to(pathlib.Path(module).resolve())
        paths = {"sprint_test": {"base_path": str(self.base_dir), "custom_nodes": str(packs)}}
        if checkpoints_dir:
            paths["sprint_test"]["checkpoints"] = str(checkpoints_dir)
        (self.base_dir / "extra_model_paths.yaml").write_text(json.dumps(paths))  # JSON is YAML
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(self.base_dir / "server.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "main.py", *(["--cpu"] if cpu else []), "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(self.base_dir), "--disable-api-nodes", "--disable-auto-launch",
             "--database-url", "sqlite:///:memory:",
             "--extra-model-paths-config", str(self.base_dir / "extra_model_paths.yaml")],
            cwd=comfy_path, stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self, timeout=240):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI server exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            try:
                return self.get("/system_stats")
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI server did not answer within {timeout}s:\n{self.log_text()[-4000:]}")

    def get(self, path, timeout=30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, path, payload, timeout=30):
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def log_text(self):
        self.log.flush()
        return (self.base_dir / "server.log").read_text(errors="replace")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
