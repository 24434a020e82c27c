"""`python <Sprint> run`: the stock workflow on a given checkpoint, and a bundled Sprint workflow on
the embedded default model (the light decoder is provided too)."""
import importlib.util
import os
import pathlib

import pytest

import harness

pytestmark = pytest.mark.host


def test_run_command_on_a_given_checkpoint(host, sd15_checkpoint, tmp_path):
    import folder_paths
    ckpt = os.path.join(folder_paths.get_folder_paths("checkpoints")[0], sd15_checkpoint)
    run = harness.cli(host, "run", "--ckpt", ckpt, "--size", "64", "--steps", "2", "--repeat", "2", cache=tmp_path)
    lines = run.stdout.splitlines()
    assert any(line.startswith("run 2: ") for line in lines)
    assert "median" in lines[-1] and "sprint_" in lines[-1]
    assert "random weights" not in run.stdout           # a given checkpoint is not called random
    # ComfyUI's own optional modules (audio nodes without torchaudio here) say so in one line
    assert "Traceback" not in run.stdout + run.stderr, run.stderr[-3000:]
    if importlib.util.find_spec("torchaudio") is None:
        assert "optional node module(s) did not import (nodes_audio.py" in run.stderr
        assert "IMPORT FAILED" not in run.stderr


def test_random_checkpoint_is_announced_with_its_size_before_writing(host, tmp_path, monkeypatch, capsys):
    """The 2.1 GB stand-in is named before the minutes it takes to write (here a stub writes it)."""
    import folder_paths
    bench = host.pack.bench
    monkeypatch.setenv("SPRINT_CACHE", str(tmp_path))
    announced = []
    monkeypatch.setattr(bench.synthetic, "write_sd15_checkpoint",
                        lambda path, **_: (announced.append(capsys.readouterr().out), path.write_bytes(b"stub")))
    name = bench.run.provide_checkpoint()
    try:
        assert "writing a random-weight SD1.5 checkpoint (about 2.1 GB)" in announced[0]
    finally:
        (pathlib.Path(folder_paths.get_folder_paths("checkpoints")[0]) / name).unlink()


def test_run_sprint_fast_workflow_provides_its_light_decoder(host, sd15_checkpoint, tmp_path):
    """Once failed with "taesd_decoder ... is not in models/vae_approx": the command now provides it."""
    import folder_paths
    ckpt = os.path.join(folder_paths.get_folder_paths("checkpoints")[0], sd15_checkpoint)
    workflow = harness.hostlib.WORKFLOWS / "api" / "sprint_fast.json"
    run = harness.cli(host, "run", "--workflow", workflow, "--ckpt", ckpt, cache=tmp_path)
    assert "run 1: " in run.stdout and "sprint_fast" in run.stdout.splitlines()[-1]
    assert "writing a random-weight taesd light decoder" in run.stdout      # the stand-in decoder is announced
