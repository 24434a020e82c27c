"""The main-job command line, as a user runs it: `python <Sprint folder> run ...`."""
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.host


def test_run_command_on_a_given_checkpoint(host, sd15_checkpoint, tmp_path):
    import folder_paths
    ckpt = os.path.join(folder_paths.get_folder_paths("checkpoints")[0], sd15_checkpoint)
    run = subprocess.run([sys.executable, str(host.pack.__file__).rsplit(os.sep, 1)[0], "--comfyui", str(host.comfy_path),
                          "run", "--ckpt", ckpt, "--size", "64", "--steps", "2", "--repeat", "2"],
                         capture_output=True, text=True, timeout=600, env=dict(os.environ, SPRINT_CACHE=str(tmp_path)))
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert any(line.startswith("run 2: ") for line in lines)
    assert "median" in lines[-1] and "sprint_" in lines[-1]
    assert "random weights" not in run.stdout           # a given checkpoint is not called random
