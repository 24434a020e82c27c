"""A ComfyUI-Manager-style install into a clean ComfyUI copy: the pack's files copied into
custom_nodes/Sprint, its requirements (never torch) already satisfied by ComfyUI's own Python,
and every Sprint node registered by ComfyUI's own loader."""
import json
import pathlib
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.host

ROOT = pathlib.Path(__file__).resolve().parents[2]

REGISTER = """
import asyncio, json, sys
sys.argv_custom = sys.argv[1]
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options; comfy.options.enable_args_parsing()
import folder_paths  # its base path follows the linked file's real location: point it at this tree
folder_paths.folder_names_and_paths["custom_nodes"] = ([sys.argv_custom], set())
import nodes
asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
print("SPRINT_NODES " + json.dumps(sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("Sprint"))))
"""


def clean_comfyui(host_path, dest):
    """A ComfyUI tree whose files are the host's (linked) but whose custom_nodes holds only Sprint."""
    for entry in pathlib.Path(host_path).iterdir():
        if entry.name not in ("custom_nodes", "models", "output", "input", "temp", "user", ".git"):
            (dest / entry.name).symlink_to(entry)
    (dest / "custom_nodes").mkdir()
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:       # what a Registry archive / git clone holds: tracked and unignored files
        target = dest / "custom_nodes" / "Sprint" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / rel).is_file():
            shutil.copy2(ROOT / rel, target)
    return dest


def test_manager_style_install_on_a_clean_comfyui_registers_every_node(host, tmp_path):
    comfy = clean_comfyui(host.comfy_path, tmp_path)
    pack = comfy / "custom_nodes" / "Sprint"
    reqs = (pack / "requirements.txt").read_text()
    assert "torch" not in reqs.replace("# Runtime dependencies beyond what ComfyUI already installs (never torch).", "")
    # what ComfyUI-Manager runs, without the network: the requirements resolve from ComfyUI's own Python
    dry = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "-r",
                          str(pack / "requirements.txt")], capture_output=True, text=True)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "Would install" not in dry.stdout, dry.stdout
    boot = subprocess.run([sys.executable, "-c", REGISTER, str(comfy / "custom_nodes")], cwd=comfy, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": str(comfy)})
    log = boot.stdout + boot.stderr
    assert boot.returncode == 0, log[-4000:]
    # ComfyUI's own optional modules may fail here (no torchaudio); Sprint's import must not
    assert [ln for ln in log.splitlines() if "IMPORT FAILED" in ln and "Sprint" in ln] == [], log[-4000:]
    line = next(ln for ln in boot.stdout.splitlines() if ln.startswith("SPRINT_NODES "))
    assert json.loads(line.split(" ", 1)[1]) == host.sprint_nodes()
