"""The pack as ComfyUI and the registry see it: cheap import, host-free engines, metadata, tiers."""
import ast
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
HOST_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "nodes", "execution"}


def imported_roots(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module.split(".")[0]


def test_engines_never_import_the_host():
    for path in sorted((ROOT / "engines").rglob("*.py")):
        assert not HOST_MODULES & set(imported_roots(path)), path


def test_importing_the_pack_is_cheap_and_host_free():
    code = ("import importlib.util, sys; "
            f"s = importlib.util.spec_from_file_location('pack', r'{ROOT / '__init__.py'}', submodule_search_locations=[r'{ROOT}']); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
            "heavy = sorted({'torch', 'comfy', 'comfy_api', 'onnxruntime', 'tensorrt'} & set(sys.modules)); "
            "print(m.WEB_DIRECTORY, callable(m.comfy_entrypoint), heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "./web True []"


def test_every_node_module_exists():
    import sprint
    for name in sprint.NODE_MODULES:
        assert (ROOT / "nodes" / f"{name}.py").is_file(), name


def test_nodes_hold_only_adapters():
    """nodes/ is what ComfyUI loads: the registered node modules and their shared glue, nothing
    of the bench wing; no module is reached through a string look-up of its name."""
    import sprint
    assert {p.stem for p in (ROOT / "nodes").glob("*.py")} == {*sprint.NODE_MODULES, "common", "__init__"}
    for path in (ROOT / "nodes").glob("*.py"):
        assert not any(node.module and "bench" in node.module for node in ast.walk(ast.parse(path.read_text()))
                       if isinstance(node, ast.ImportFrom)), path
    for path in {*ROOT.glob("*/*.py"), *ROOT.glob("tests/**/*.py")} - {pathlib.Path(__file__)}:
        assert "host.module(" not in path.read_text(), path


def test_every_cli_command_has_a_test():
    tree = ast.parse((ROOT / "bench" / "cli.py").read_text())
    commands = next(n.value for n in ast.walk(tree) if isinstance(n, ast.Assign) and n.targets[0].id == "COMMANDS")
    tested = "".join(p.read_text() for p in (ROOT / "tests" / "bench").glob("test_*.py"))
    for key in commands.keys:
        assert f'"{key.value}"' in tested, f"no test in tests/bench runs `{key.value}`"


def test_pyproject_matches_requirements_and_registry_rules():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert meta["project"]["dependencies"] == reqs
    assert not any(re.match(r"torch\b", r) for r in reqs)
    comfy = meta["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["requires-comfyui"]
    assert "web" not in comfy          # WEB_DIRECTORY alone, or the JS registers twice
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["project"]["version"])   # the Registry's semver
    icon = ROOT / comfy["Icon"]
    assert icon.is_file() and icon.read_text().lstrip().startswith("<svg")
    assert comfy["Icon"] in comfy["includes"]
    for url in meta["project"].get("urls", {}).values():   # a real address or none, never a placeholder
        assert url.startswith("https://") and "example" not in url and "sprint-comfy" not in url
    assert re.search(r"^## " + re.escape(meta["project"]["version"]) + r"\b", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert "GNU GENERAL PUBLIC LICENSE" in (ROOT / "LICENSE").read_text()[:200]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^bash \.ci/test$", readme, re.M)
    assert command and "\nbash .ci/test\n" in ci


@pytest.mark.parametrize("require", ["", "1"])
def test_missing_host_skips_with_one_line_or_fails_when_required(require, tmp_path):
    if (ROOT.parent.parent / "comfy" / "model_management.py").is_file():
        pytest.skip("Sprint sits inside a ComfyUI checkout: a missing host cannot be simulated")
    env = dict(os.environ, COMFYUI_PATH=str(tmp_path / "no-comfyui"), SPRINT_REQUIRE_HOST=require)
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                          "tests/nodes/test_host.py::test_pack_loads_without_import_failures"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("skipped 1: 1 x host tier: ")]
    if require:
        assert run.returncode == 1 and "SPRINT_REQUIRE_HOST=1" in run.stdout
    else:
        assert run.returncode == 0 and len(lines) == 1 and "COMFYUI_PATH" in lines[0], run.stdout


def test_cuda_tier_without_cuda_skips_with_one_line():
    env = dict(os.environ, SPRINT_TEST_DEVICE="cuda", CUDA_VISIBLE_DEVICES="", SPRINT_REQUIRE_HOST="")
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                          "tests/nodes/test_host.py::test_pack_loads_without_import_failures"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("skipped 1: 1 x host tier: ")]
    assert run.returncode == 0 and len(lines) == 1, run.stdout
    assert "SPRINT_TEST_DEVICE=cuda but torch" in lines[0] and "sees no CUDA device" in lines[0]
