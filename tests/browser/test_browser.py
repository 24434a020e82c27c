"""Browser tier: the real ComfyUI server with its real frontend (comfyui-frontend-package) and Sprint
loaded, driven in headless Chromium by playwright-core (drive.mjs under node; no browser download).

One drive per session: the page loads, each bundled workflow is opened the way a user does it
(Templates dialog -> Custom Nodes / Sprint -> its card), and the fast one is queued on the shallow
test checkpoint. The tests judge what it recorded; screenshots are kept in test-artifacts/browser/.
Needs node, Chromium ($SPRINT_CHROMIUM or /usr/bin/chromium) and playwright-core
($SPRINT_NODE_MODULES or ~/.cache/sprint/node/node_modules, see .ci/env.sh); without them the tier
is skipped with one line, or fails when SPRINT_REQUIRE_BROWSER=1.
"""
import json
import os
import pathlib
import shutil
import subprocess

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.host]

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows"
# The API twins the UI workflows must queue as; SPRINT_API_TWINS points at drafts while regenerating.
TWINS = pathlib.Path(os.environ.get("SPRINT_API_TWINS", WORKFLOWS / "api"))
ARTIFACTS = ROOT / "test-artifacts" / "browser"
PACK = "Sprint"                             # the folder name the server knows the pack by (hostlib.PACK_FOLDER)
SPRINT_URLS = (f"/extensions/{PACK}", f"/api/workflow_templates/{PACK}")
CHROMIUM = os.environ.get("SPRINT_CHROMIUM", "/usr/bin/chromium")   # Debian's; never a downloaded one
BADGE_COLORS = {"ok": (0x1f, 0x6f, 0x43), "warn": (0x9a, 0x5b, 0x00)}   # web/sprint.js COLORS


def _missing_dependency():
    if shutil.which("node") is None:
        return "no `node` on PATH"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set SPRINT_CHROMIUM)"
    if not (_node_modules() / "playwright-core" / "index.mjs").is_file():
        return f"no playwright-core in {_node_modules()} (npm install --prefix {_node_modules().parent} playwright-core)"
    return None


def _node_modules():
    default = pathlib.Path.home() / ".cache" / "sprint" / "node" / "node_modules"
    return pathlib.Path(os.environ.get("SPRINT_NODE_MODULES", default))


def _workflow_names():
    return sorted(p.stem for p in WORKFLOWS.glob("*.json"))


@pytest.fixture(scope="session")
def browser_tools():
    """Skip (one line for the tier, see conftest) or fail before any server starts."""
    missing = _missing_dependency()
    if missing:
        if os.environ.get("SPRINT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"SPRINT_REQUIRE_BROWSER=1 but the browser tier cannot run: {missing}", pytrace=False)
        pytest.skip(f"browser tier skipped: {missing}")


@pytest.fixture(scope="session")
def drive(browser_tools, comfy_server, sd15_checkpoint, synthetic, tmp_path_factory):
    """What drive.mjs saw in the browser (a dict, see drive.mjs)."""
    # The fast workflow's light decoder reads models/vae_approx/taesd_decoder.* of the server.
    vae_approx = comfy_server.base_dir / "models" / "vae_approx"
    vae_approx.mkdir(parents=True, exist_ok=True)
    synthetic.write_taesd_decoder(vae_approx / "taesd_decoder.safetensors", seed=4)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    work = tmp_path_factory.mktemp("browser")
    config = {
        "url": comfy_server.url, "pack": PACK, "workflows": _workflow_names(),
        "node_modules": str(_node_modules()), "chromium": CHROMIUM,
        "artifacts": str(ARTIFACTS), "result": str(work / "result.json"),
        "run": {"workflow": "sprint_fast", "ckpt": sd15_checkpoint, "size": 256, "max_steps": 8,
                "timeout_ms": 400_000} if "sprint_fast" in _workflow_names() else None,
    }
    (work / "config.json").write_text(json.dumps(config))
    proc = subprocess.run(["node", str(pathlib.Path(__file__).with_name("drive.mjs")), str(work / "config.json")],
                          capture_output=True, text=True, timeout=900)
    print(f"browser screenshots: {ARTIFACTS}")
    result_file = work / "result.json"
    if proc.returncode != 0 or not result_file.exists():
        pytest.fail(f"drive.mjs failed ({proc.returncode}):\n{proc.stderr[-4000:]}\n"
                    f"server log:\n{comfy_server.log_text()[-3000:]}", pytrace=False)
    return json.loads(result_file.read_text())


def _from_sprint(entry):
    """An error Sprint caused: its code or files in the URL/stack, Sprint in the message, or any
    error while one of Sprint's templates was being opened or run."""
    where = f"{entry.get('url', '')} {entry.get('text', '')}"
    return any(u in where for u in SPRINT_URLS) or "sprint" in entry.get("text", "").lower() \
        or entry["phase"] != "load"


def test_bundled_workflows_exist_with_thumbnails():
    names = _workflow_names()
    assert {"sprint_fast", "sprint_quality"} <= set(names)
    for name in names:
        assert (WORKFLOWS / f"{name}.jpg").is_file(), f"workflows/{name}.jpg (its Templates thumbnail) is missing"


def test_extension_loads_without_sprint_errors(drive):
    assert "Sprint.Extension" in drive["extensions"]
    assert [e for e in drive["logs"] if _from_sprint(e)] == []
    assert [e for e in drive["http_errors"] if any(u in e["url"] for u in SPRINT_URLS)] == []


def test_default_preset_setting(drive):
    """Registered with its default; fresh Sprint nodes with a preset widget take the setting."""
    assert drive["preset"]["default"] == "balanced"
    assert all(value == "draft" for value in drive["preset"]["fresh_nodes"].values()), drive["preset"]


def test_engine_build_toasts_and_fallback_badge(drive):
    events = drive["events"]
    assert any("Building the onnxruntime fp32 UNet engine: 25%" in t for t in events["building"]), events
    assert not any("Building" in t for t in events["ready"]) and any("engine ready" in t for t in events["ready"]), events
    assert "PyTorch fallback (the image is larger than the engine's profile)" in events["badge"]
    assert events["colors"] == ["warn"]


@pytest.mark.parametrize("name", _workflow_names())
def test_workflow_opens_from_templates_with_no_missing_nodes(drive, name):
    opened = drive["workflows"][name]
    assert opened["types"], f"{name} did not open"
    assert opened["missing"] == []
    assert opened["dialogs"] == [], "a dialog (missing nodes/models?) showed after opening"


@pytest.mark.parametrize("name", _workflow_names())
def test_api_twin_is_what_the_frontend_queues(drive, name):
    """workflows/api/<name>.json equals graphToPrompt() of the opened UI workflow (class_type + inputs),
    opened while Sprint.DefaultPreset is "draft": a saved preset wins over the setting."""
    assert (TWINS / f"{name}.json").is_file(), f"no API twin {TWINS / name}.json"
    twin = json.loads((TWINS / f"{name}.json").read_text())
    prompt = drive["workflows"][name]["prompt"]
    strip = lambda p: {i: {"class_type": n["class_type"], "inputs": n["inputs"]} for i, n in p.items()}  # noqa: E731
    assert strip(prompt) == strip(twin)


def test_fast_workflow_runs_and_shows_sprint_badges(drive):
    run = drive["run"]
    assert run is not None, "no sprint_fast workflow to run"
    assert run["outcome"]["ok"], run["outcome"]["detail"]
    sampler = run["sampler"]
    assert sampler["badge"], f"no Sprint badge on the sampler node {sampler}; badges: {run['badges']}"
    if sampler["type"] == "SprintKSampler":
        assert "model calls" in sampler["badge"]
    assert any("prompt cache" in text for text in run["badges"].values()), run["badges"]
    # Visible: the canvas pixel where the badge was drawn has the badge's colour.
    expected = BADGE_COLORS[sampler["colors"][0]]
    assert run["pixel"] is not None and max(abs(a - b) for a, b in zip(run["pixel"][:3], expected)) <= 8, \
        (run["pixel"], expected)
