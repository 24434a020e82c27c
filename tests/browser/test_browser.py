"""Browser tier: the real ComfyUI server with its real frontend (comfyui-frontend-package) and Sprint
loaded, driven in headless Chromium by playwright-core (drive.mjs under node; no browser download).

One drive per session: the page loads, each bundled workflow is opened the way a user does it
(Templates dialog -> Custom Nodes / Sprint -> its card), its geometry is read from app.graph (node
and group boxes, wires sampled along the drawn splines, the view), and each is run as shipped:
the server holds files under the names the workflows and the README give (stand-ins: the shallow
test checkpoint, random-weight light decoders, and tiny random-weight Qwen-Image and Qwen2.5-VL
files, which the server loads at their sizes: tiny_qwen_image_server.py). The tests judge what it recorded; screenshots are kept in test-artifacts/browser/.
Needs node, Chromium ($SPRINT_CHROMIUM or /usr/bin/chromium) and playwright-core
($SPRINT_NODE_MODULES or ~/.cache/sprint/node/node_modules, see .ci/env.sh); without them the tier
is skipped with one line, or fails when SPRINT_REQUIRE_BROWSER=1.
"""
import json
import os
import re
import pathlib
import shutil
import subprocess

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.host]

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "example_workflows"
# The API twins the UI workflows must queue as; SPRINT_API_TWINS points at drafts while regenerating.
TWINS = pathlib.Path(os.environ.get("SPRINT_API_TWINS", WORKFLOWS / "api"))
ARTIFACTS = ROOT / "test-artifacts" / "browser"
PACK = "Sprint"                             # the folder name the server knows the pack by (hostlib.PACK_FOLDER)
SPRINT_URLS = (f"/extensions/{PACK}", f"/api/workflow_templates/{PACK}")
CHROMIUM = os.environ.get("SPRINT_CHROMIUM", "/usr/bin/chromium")   # Debian's; never a downloaded one
BADGE_COLORS = {"ok": (0x1f, 0x6f, 0x43), "warn": (0x9a, 0x5b, 0x00)}   # web/sprint.js COLORS
# The model files the workflows and the README name (placed here as stand-ins of those names).
README_CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
README_DECODER = "taesd_decoder.pth"
LOADERS = ("CheckpointLoaderSimple", "UNETLoader", "CLIPLoader")   # nodes whose first widget names a model file
MIN_SCALE = 0.7          # the opening zoom: node titles (14 px) at >= 10 px on screen


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
    import folder_paths
    import torch
    # The files the workflows name (the README's), here stand-ins of the same names: the shallow
    # test checkpoint, and a random-weight taesd decoder saved as the official .pth is.
    checkpoints = pathlib.Path(folder_paths.get_folder_paths("checkpoints")[0])
    if not (checkpoints / README_CHECKPOINT).exists():
        (checkpoints / README_CHECKPOINT).symlink_to(checkpoints / sd15_checkpoint)
    vae_approx = comfy_server.base_dir / "models" / "vae_approx"
    vae_approx.mkdir(parents=True, exist_ok=True)
    torch.save(synthetic.taesd_decoder_file(synthetic.taesd_state_dict(seed=4)), vae_approx / README_DECODER)
    # The Qwen-Image workflow's files, under the names its models list gives.
    writers = {"diffusion_models": synthetic.qwen_image_diffusion_model_file,
               "text_encoders": synthetic.qwen_image_text_encoder_file,
               "vae_approx": lambda path: torch.save(synthetic.light_decoder_state_dict("taew2_1"), path)}
    for entry in json.loads((WORKFLOWS / "sprint_fast_qwen_image.json").read_text())["models"]:
        (comfy_server.base_dir / "models" / entry["directory"]).mkdir(parents=True, exist_ok=True)
        writers[entry["directory"]](comfy_server.base_dir / "models" / entry["directory"] / entry["name"])

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    work = tmp_path_factory.mktemp("browser")
    config = {
        "url": comfy_server.url, "pack": PACK, "workflows": _workflow_names(),
        "node_modules": str(_node_modules()), "chromium": CHROMIUM,
        "artifacts": str(ARTIFACTS), "result": str(work / "result.json"),
        "runs": [{"workflow": name, "size": 256, "max_steps": 8, "timeout_ms": 400_000} for name in _workflow_names()],
    }
    (work / "config.json").write_text(json.dumps(config))
    proc = subprocess.run(["node", str(pathlib.Path(__file__).with_name("drive.mjs")), str(work / "config.json")],
                          capture_output=True, text=True, timeout=1500)
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
        assert (WORKFLOWS / f"{name}.jpg").is_file(), f"example_workflows/{name}.jpg (its Templates thumbnail) is missing"


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


def test_text_reports_are_shown_as_badges(drive):
    """Frontend 1.27 draws no node's text output; Sprint's extension shows it, one badge line per
    part; the sampler's report is not repeated under its event line."""
    report = drive["events"]["report"]
    assert report["badge"] == "hits 1 memory + 0 disk, misses 2, bypassed 0\nmemory 3 entries, 0.1/256 MB", report
    assert "7 of 7 model calls" not in (report["sampler"] or ""), report


@pytest.mark.parametrize("name", _workflow_names())
def test_workflow_opens_from_templates_with_no_missing_nodes(drive, name):
    opened = drive["workflows"][name]
    assert opened["types"], f"{name} did not open"
    assert opened["missing"] == []
    assert opened["dialogs"] == [], "a dialog (missing nodes/models?) showed after opening"


@pytest.mark.parametrize("name", _workflow_names())
def test_api_twin_is_what_the_frontend_queues(drive, name):
    """example_workflows/api/<name>.json equals graphToPrompt() of the opened UI workflow (class_type + inputs),
    opened while Sprint.DefaultPreset is "draft": a saved preset wins over the setting."""
    assert (TWINS / f"{name}.json").is_file(), f"no API twin {TWINS / name}.json"
    twin = json.loads((TWINS / f"{name}.json").read_text())
    prompt = drive["workflows"][name]["prompt"]
    strip = lambda p: {i: {"class_type": n["class_type"], "inputs": n["inputs"]} for i, n in p.items()}  # noqa: E731
    assert strip(prompt) == strip(twin)


def _inside(point, box, margin=0.0):
    x, y = point
    return box[0] + margin < x < box[0] + box[2] - margin and box[1] + margin < y < box[1] + box[3] - margin


def _overlap(a, b):
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _untidy(geometry):
    """Nodes overlapping one another, and wires passing behind a node other than their own two ends."""
    nodes = geometry["nodes"]
    problems = [f"{a['title']} overlaps {b['title']}" for i, a in enumerate(nodes) for b in nodes[i + 1:]
                if _overlap(a["box"], b["box"])]
    for link in geometry["links"]:
        for node in nodes:
            if node["id"] not in (link["from"], link["to"]) and any(_inside(p, node["box"]) for p in link["points"]):
                problems.append(f"wire {link['id']} ({link['from']} -> {link['to']}) passes behind {node['title']}")
    return problems


@pytest.mark.parametrize("name", _workflow_names())
def test_workflow_opens_fitted_and_readable(drive, name):
    """The saved view (extra.ds) shows every node whole, at a zoom where the frontend draws text."""
    view = drive["workflows"][name]["geometry"]["view"]
    assert view["scale"] >= MIN_SCALE and not view["low_quality"], view
    scale, (ox, oy) = view["scale"], view["offset"]
    for node in drive["workflows"][name]["geometry"]["nodes"]:
        x, y, w, h = node["box"]
        left, top, right, bottom = (x + ox) * scale, (y + oy) * scale, (x + w + ox) * scale, (y + h + oy) * scale
        assert left >= 0 and top >= 0 and right <= view["width"] and bottom <= view["height"], \
            f"{node['title']} is (partly) off-screen: {left:.0f},{top:.0f}..{right:.0f},{bottom:.0f} in {view}"


@pytest.mark.parametrize("name", _workflow_names())
def test_graph_is_tidy(drive, name):
    """No node overlaps another, no wire runs behind a node, every working node sits in a stage group
    (groups apart), every note has a title saying what it explains."""
    geometry = drive["workflows"][name]["geometry"]
    assert _untidy(geometry) == []
    groups = geometry["groups"]
    assert len(groups) >= 3 and not [(a["title"], b["title"]) for i, a in enumerate(groups) for b in groups[i + 1:]
                                     if _overlap(a["box"], b["box"])]
    for node in geometry["nodes"]:
        if node["type"] in ("MarkdownNote", "Note"):
            assert node["title"] not in ("Note", "Markdown Note", ""), node
        elif node["type"] != "Reroute":
            assert any(_inside(corner, g["box"], -1) for g in groups
                       for corner in [(node["box"][0] + node["box"][2] / 2, node["box"][1] + node["box"][3] / 2)]), \
                f"{node['title']} is in no group"
    # Every file a loader names is in the workflow's models list (the missing-models dialog offers
    # it) and in its "Get the models" note; SD checkpoints go by the README's name.
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    shipped = {m["name"] for m in ui["models"]}
    named = [n["widgets_values"][0] for n in ui["nodes"] if n["type"] in LOADERS]
    assert named and set(named) <= shipped, (named, shipped)
    guide = next(n for n in ui["nodes"] if n.get("title") == "Get the models")["widgets_values"][0]
    assert [f for f in sorted(shipped) if f"`{f}`" not in guide] == []
    checkpoints = [n["widgets_values"][0] for n in ui["nodes"] if n["type"] == "CheckpointLoaderSimple"]
    assert all(c == README_CHECKPOINT for c in checkpoints)
    assert not checkpoints or README_CHECKPOINT in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("name", _workflow_names())
def test_workflow_runs_as_shipped_and_its_badge_agrees(drive, name):
    """Run pressed on the opened template (its model file names as shipped) completes; the sampler's
    badge shows the run's own numbers, worded like the node's report; the badge is drawn."""
    run = drive["runs"][name]
    assert run["outcome"]["ok"], run["outcome"]["detail"]
    sampler = run["sampler"]
    stats = sampler["event"]
    assert stats is not None and sampler["badge"], (sampler, run["badges"])
    assert f"{stats['calls']}/{stats['budget']} model calls" in sampler["badge"]
    shown = re.search(r"est\. error (\S+)", sampler["badge"])
    assert shown and float(shown.group(1)) == pytest.approx(stats["est_error"], rel=0.05), sampler
    if stats["saved"] > 0:
        assert f"{stats['saved']} saved · settled at step {stats['stop_step']}" in sampler["badge"]
    else:
        assert f"whole {stats['budget']}-call budget spent" in sampler["badge"] and "saved" not in sampler["badge"]
    assert sampler["report"].startswith(f"{stats['calls']} of {stats['budget']} model calls")
    assert any("prompt cache" in text for text in run["badges"].values()), run["badges"]
    # Visible: the canvas pixel where the badge was drawn has the badge's colour.
    expected = BADGE_COLORS[sampler["colors"][0]]
    assert run["pixel"] is not None and max(abs(a - b) for a, b in zip(run["pixel"][:3], expected)) <= 8, \
        (run["pixel"], expected)
    assert _untidy(run["geometry"]) == []       # nothing grew into a neighbour with the results shown
