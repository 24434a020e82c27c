"""`python <Sprint> batch`: a local Ray cluster of 2 CPU workers runs 32 seeds; one worker is killed
for real mid-run and its item goes to the other; a re-run does nothing; outputs equal `run`'s."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import harness

pytestmark = pytest.mark.host
pytest.importorskip("ray", reason="ray is in tests/requirements.txt")


def test_batch_survives_a_killed_worker_resumes_and_equals_run(host, sd15_checkpoint, tmp_path):
    import folder_paths
    ckpt = os.path.join(folder_paths.get_folder_paths("checkpoints")[0], sd15_checkpoint)
    out = tmp_path / "out"
    args = ["batch", "--ckpt", ckpt, "--seeds", "0:32", "--size", "64", "--steps", "1", "--workers", "2", "--out", out]
    proc = subprocess.Popen([sys.executable, str(harness.hostlib.PACK_ROOT), "--comfyui", str(host.comfy_path), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, SPRINT_CACHE=str(tmp_path)))
    manifest = out / "manifest.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:        # kill a worker once both have delivered
        entries = [json.loads(line) for line in manifest.read_text().splitlines()] if manifest.exists() else []
        if len({e["worker"] for e in entries}) == 2 and len(entries) < 28:
            os.kill(entries[-1]["worker"], signal.SIGKILL)
            break
        time.sleep(0.2)
    else:
        pytest.fail("the batch never had two workers delivering before the end")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, (stdout[-2000:], stderr[-3000:])
    assert "a worker left" in stdout and stdout.count("a worker left") == 1

    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert sorted(e["index"] for e in entries) == list(range(32))
    files = sorted(f for e in entries for f in e["files"])
    assert len(set(files)) == 32 and sorted(p.name for p in out.glob("*.png")) == files
    assert not list(out.glob("*.tmp*"))
    pixels = {e["seed"]: np.asarray(Image.open(out / e["files"][0])) for e in entries}
    assert pixels[0].shape == (64, 64, 3) and not np.array_equal(pixels[0], pixels[1])

    again = harness.cli(host, *args, cache=tmp_path)
    assert "0 new item(s)" in again.stdout and "32/32 done" in again.stdout
    assert manifest.read_text().splitlines() == [json.dumps(e) for e in entries]

    # bit-identical at the workers' torch thread count (CPU kernels split their sums by thread)
    one = harness.cli(host, "run", "--ckpt", ckpt, "--size", "64", "--steps", "1", "--repeat", "2", cache=tmp_path,
                      env={"OMP_NUM_THREADS": "1"})
    name, folder = re.search(r"images: \['([^']+)'\] in (\S+)$", one.stdout.splitlines()[-1]).groups()
    assert np.array_equal(np.asarray(Image.open(os.path.join(folder, name))), pixels[1])    # run's 2nd run is seed 1
