"""The `neon` command as a user runs it."""

import os
import subprocess
import sys

import pytest

from neon.cli import main


def test_info_prints_counts_per_module(capsys):
    assert main(["info", "--preset", "edge_3b"]) == 0
    out = capsys.readouterr().out
    for line in ("Qwen/Qwen2.5-Omni-3B", "proprio", "fusion", "heads.arms", "heads.hands", "total", "design: 2.0M",
                 "features: 68 tokens (8x8 image grid + 4 text bins) from hidden layer 18 of 36; 18 language-model"):
        assert line in out


def test_info_all_lists_named_and_grid_presets(capsys):
    assert main(["info", "--all"]) == 0
    out = capsys.readouterr().out
    assert "large_wholebody" in out and "cosmos2b_whole_body_large" in out
    assert len([ln for ln in out.splitlines()[1:] if ln.strip()]) == 8 + 24


def test_info_into_a_closed_pipe_ends_quietly():
    """`neon info --all | head -2`: the reader goes before the writing ends; no traceback, exit 0."""
    proc = subprocess.Popen([sys.executable, "-m", "neon.cli", "info", "--all"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # gone before the first line (the command takes a second to import)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()[-2000:]


def test_info_unknown_preset_is_a_clear_error(capsys):
    assert main(["info", "--preset", "huge_arms"]) == 2
    assert "unknown preset 'huge_arms'" in capsys.readouterr().err


def test_demo_runs_end_to_end():
    r = subprocess.run([sys.executable, "-m", "neon.cli", "demo", "--runs", "2", "--mode", "whole_body",
                        "--audio", "--lidar", "--eef"],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert "16 steps x 46 dims at 30 fps" in r.stdout
    assert "inside joint limits: True" in r.stdout
    for stage in ("backbone", "audio", "heads", "total"):
        assert stage in r.stdout


@pytest.mark.parametrize("args,msg", [(["demo", "--checkpoint", "/nonexistent/ckpt"], "neither a checkpoint folder")])
def test_demo_bad_checkpoint(capsys, args, msg):
    assert main(args) == 2
    assert msg in capsys.readouterr().err
