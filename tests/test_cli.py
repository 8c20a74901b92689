"""The command line: every flag and exit code, bad input, and interrupted runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import tree_digest

CLI = [sys.executable, "-m", "porter.cli"]


def run_cli(*args, cwd=None, timeout=600):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)


@pytest.fixture
def legacy(sample_repo, tmp_path) -> Path:
    repo = tmp_path / "legacy"
    shutil.copytree(sample_repo, repo)
    return repo


def test_default_output_is_a_new_sibling_and_input_is_unchanged(legacy):
    before = tree_digest(legacy)
    result = run_cli(legacy, "--no-verify")
    assert result.returncode == 0, result.stderr
    out = legacy.parent / "legacy-ported"
    assert (out / "model.safetensors").exists()
    assert tree_digest(legacy) == before
    assert "ported" in result.stdout


def test_diff_prints_changes_and_writes_nothing(legacy):
    before = set(legacy.parent.iterdir())
    result = run_cli(legacy, "--diff")
    assert result.returncode == 0
    assert "--- a/modeling_tiny_legacy_lm.py" in result.stdout
    assert "+def eager_attention_forward(" in result.stdout
    assert set(legacy.parent.iterdir()) == before


def test_check_exit_codes(legacy, tmp_path):
    assert run_cli(legacy, "--check").returncode == 1
    out = tmp_path / "ported"
    assert run_cli(legacy, "-o", out, "--no-verify", "-q").returncode == 0
    unchanged = run_cli(out, "--check")
    assert unchanged.returncode == 0, unchanged.stdout
    assert "unchanged" in unchanged.stdout


def test_json_report_on_stdout(legacy, tmp_path):
    result = run_cli(legacy, "-o", tmp_path / "o", "--no-verify", "--json")
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert report["status"] == "ported"
    assert any(t["transform"] == "attention-interface" for t in report["transforms"])
    assert {c["status"] for c in report["checks"] if c["item"] == "F2"} == {"SKIP"}
    assert report["versions"]["port-model"]


def test_verbose_lists_transforms_and_quiet_is_short(legacy, tmp_path):
    verbose = run_cli(legacy, "-o", tmp_path / "v", "--no-verify", "-v")
    assert "attention-interface" in verbose.stdout and "modeling_tiny_legacy_lm.py:" in verbose.stdout
    quiet = run_cli(legacy, "-o", tmp_path / "q", "--no-verify", "-q")
    assert quiet.stdout.strip().count("\n") == 0 and quiet.stderr == ""


def test_device_cuda_without_gpu_is_exit_2(legacy, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = run_cli(legacy, "-o", tmp_path / "o", "--device", "cuda")
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr
    assert not (tmp_path / "o").exists()


def test_existing_output_is_refused(legacy, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli(legacy, "-o", out, "--no-verify")
    assert result.returncode == 2 and "exists" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_output_inside_input_is_refused(legacy):
    result = run_cli(legacy, "-o", legacy / "out", "--no-verify")
    assert result.returncode == 2


def test_usage_error_is_exit_2():
    assert run_cli("--no-such-flag").returncode == 2


def _break(repo: Path, how: str) -> str:
    """Damage a copy of the repo; return the file name the error must mention."""
    if how == "no-config":
        (repo / "config.json").unlink()
        return "config.json"
    if how == "bad-json":
        (repo / "config.json").write_text("{not json")
        return "config.json"
    if how == "no-modeling":
        config = json.loads((repo / "config.json").read_text())
        config["auto_map"] = {"AutoConfig": config["auto_map"]["AutoConfig"]}
        (repo / "config.json").write_text(json.dumps(config))
        (repo / "modeling_tiny_legacy_lm.py").unlink()
        return "modeling_"
    if how == "missing-class":
        config = json.loads((repo / "config.json").read_text())
        config["auto_map"]["AutoModel"] = "modeling_tiny_legacy_lm.NoSuchModel"
        (repo / "config.json").write_text(json.dumps(config))
        return "NoSuchModel"
    if how == "missing-file":
        config = json.loads((repo / "config.json").read_text())
        config["auto_map"]["AutoModel"] = "modeling_other.TinyLegacyLMModel"
        (repo / "config.json").write_text(json.dumps(config))
        return "modeling_other.py"
    if how == "outside-repo":
        config = json.loads((repo / "config.json").read_text())
        config["auto_map"]["AutoModel"] = "someone/else--modeling.Model"
        (repo / "config.json").write_text(json.dumps(config))
        return "outside the repo"
    if how == "syntax-error":
        path = repo / "modeling_tiny_legacy_lm.py"
        path.write_text(path.read_text() + "\ndef broken(:\n")
        return "modeling_tiny_legacy_lm.py:"
    if how == "unreadable-weights":
        (repo / "pytorch_model.bin").write_bytes(b"this is not a checkpoint")
        return "pytorch_model.bin"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    ["no-config", "bad-json", "no-modeling", "missing-class", "missing-file", "outside-repo", "syntax-error", "unreadable-weights"],
)
def test_bad_input_is_one_clear_line_and_exit_2(legacy, tmp_path, how):
    needle = _break(legacy, how)
    out = tmp_path / "out"
    result = run_cli(legacy, "-o", out, "--no-verify")
    assert result.returncode == 2, result.stdout + result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".out.partial*"))


def test_interrupted_run_leaves_no_output(legacy, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*CLI, str(legacy), "-o", str(out)], stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        if "running the legacy model" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    assert not out.exists()
    assert not list(tmp_path.glob(".out.partial*"))
    # A rerun after the interruption succeeds.
    assert run_cli(legacy, "-o", out, "--no-verify", "-q").returncode == 0
    assert (out / "model.safetensors").exists()


def test_killed_run_leftovers_are_cleaned_by_the_next_run(legacy, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([*CLI, str(legacy), "-o", str(out)], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "running the legacy model" in line:
            break
    proc.kill()
    proc.wait(timeout=60)
    assert not out.exists()
    assert run_cli(legacy, "-o", out, "--no-verify", "-q").returncode == 0
    assert not list(tmp_path.glob(".out.partial*"))
