"""Verification shares work without proving less: one loaded model serves the probe and
continuous batching, and the legacy and ported children run side by side."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from porter.verify import make_inputs
from porter.verify.child import RUNNING, run_model
from porter.verify.side_by_side import run_pair, threads_each
from tests.modern import modern_llama

VERIFY = Path(__file__).resolve().parent.parent / "porter" / "verify"


@pytest.fixture(scope="module")
def child_modules():
    """runner.py and its siblings, importable in this process as the child imports them."""
    sys.path.insert(0, str(VERIFY))
    import engine_run
    import runner

    yield runner, engine_run
    sys.path.remove(str(VERIFY))
    torch.use_deterministic_algorithms(False)  # runner.main turns it on for its process


def _run(runner, repo, work: Path) -> tuple[dict, dict]:
    work.mkdir()
    config = json.loads((repo / "config.json").read_text())
    save_file(make_inputs(config), str(work / "inputs.safetensors"))
    spec = {
        "repo": str(repo), "out_dir": str(work), "inputs": str(work / "inputs.safetensors"), "generate": True,
        "max_new_tokens": 3, "pad_token_id": 0, "device": "cpu",
        "attn_implementations": ["sdpa"], "probe": True, "engine": True,
    }
    (work / "spec.json").write_text(json.dumps(spec))
    assert runner.main(str(work / "spec.json")) == 0, (work / "result.json").read_text()
    return json.loads((work / "result.json").read_text()), load_file(str(work / "outputs.safetensors"))


def test_shared_model_gives_what_fresh_loads_give(child_modules, cache_dir, tmp_path, monkeypatch):
    runner, engine_run = child_modules
    repo = modern_llama(cache_dir)
    loads = []
    monkeypatch.setattr(runner, "_load_model", lambda *a, _load=runner._load_model: loads.append(a[1]) or _load(*a))
    shared_result, shared = _run(runner, repo, tmp_path / "shared")
    assert loads == ["sdpa"]  # the probe and continuous batching reuse the sdpa model
    loads.clear()
    monkeypatch.setattr(engine_run, "switched", lambda model, kernel: None)  # every run loads its own model
    fresh_result, fresh = _run(runner, repo, tmp_path / "fresh")
    assert loads == ["sdpa", runner.PROBE_NAME]
    assert shared.keys() == fresh.keys() and "probe.single.output" in shared
    for name in shared:
        assert torch.equal(shared[name], fresh[name]), name
    assert shared_result["probe"]["calls"] == fresh_result["probe"]["calls"]
    assert len(shared_result["probe"]["calls"]) == shared_result["probe"]["num_layers"]
    assert shared_result["engine"] == fresh_result["engine"]
    batching = shared_result["engine"][0]["batching"]
    assert all(entry["tokens"] == batching["generate"] for entry in batching["batched"].values())


NOT_ROUTED = '''
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel


class NotRoutedConfig(PreTrainedConfig):
    model_type = "not_routed"


class NotRoutedAttention(nn.Module):
    def forward(self, x):
        return x


class NotRoutedModel(PreTrainedModel):
    config_class = NotRoutedConfig
    _supports_sdpa = True

    def __init__(self, config):
        super().__init__(config)
        self.attn = NotRoutedAttention()
        self.post_init()
'''


def test_a_model_that_cannot_switch_kernels_is_loaded_again(child_modules, tmp_path, monkeypatch):
    _, engine_run = child_modules
    (tmp_path / "not_routed_model.py").write_text(NOT_ROUTED)
    monkeypatch.syspath_prepend(str(tmp_path))
    from not_routed_model import NotRoutedConfig, NotRoutedModel

    model = NotRoutedModel(NotRoutedConfig(attn_implementation="eager"))
    # transformers only warns and keeps eager: the kernel is checked, not assumed
    assert engine_run.switched(model, "sdpa") is None
    assert engine_run.switched(None, "sdpa") is None


def test_threads_each_needs_two_cores_and_memory_for_both(monkeypatch):
    monkeypatch.setattr("porter.verify.side_by_side.cores", lambda: 4)
    monkeypatch.setattr("porter.verify.side_by_side.available_memory", lambda: 20 << 30)
    assert threads_each(1 << 30) == 2
    assert threads_each(5 << 30) is None  # 4 x 5 GiB + margin do not fit
    monkeypatch.setattr("porter.verify.side_by_side.cores", lambda: 1)
    assert threads_each(1) is None
    monkeypatch.setattr("porter.verify.side_by_side.cores", lambda: 2)
    monkeypatch.setenv("PORT_MODEL_SIDE_BY_SIDE", "0")
    assert threads_each(1) is None


def test_run_pair_runs_both_at_once_or_in_order():
    barrier = threading.Barrier(2, timeout=10)  # passes only if both calls run at the same time
    assert run_pair(lambda: barrier.wait() * 0 + 1, lambda: barrier.wait() * 0 + 2, together=True) == (1, 2)
    order = []
    assert run_pair(lambda: order.append(1) or False, lambda: order.append(2), together=False,
                    second_needs=bool) == (False, None)
    assert order == [1]


SLEEPER = textwrap.dedent(
    """
    import json, os, sys, time
    spec = json.load(open(sys.argv[1]))
    result = {"ok": True, "threads": os.environ.get("OMP_NUM_THREADS")}
    json.dump(result, open(os.path.join(spec["out_dir"], "result.json"), "w"))
    time.sleep(float(spec.get("sleep", 0)))
    """
)


def test_children_get_their_threads_and_are_stopped_on_interruption(tmp_path):
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    run = run_model(sys.executable, tmp_path, {}, tmp_path / "quick", 60, runner=script, threads=1)
    assert run.ok and run.result["threads"] == "1"

    def interrupt_when_running():
        while not RUNNING:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, delivered to the main thread as in the CLI

    started = time.monotonic()
    threading.Thread(target=interrupt_when_running, daemon=True).start()
    slow = {"sleep": 60}
    with pytest.raises(KeyboardInterrupt):
        run_pair(lambda: run_model(sys.executable, tmp_path, slow, tmp_path / "slow", 120, runner=script),
                 lambda: run_model(sys.executable, tmp_path, slow, tmp_path / "slow2", 120, runner=script), together=True)
    assert time.monotonic() - started < 30 and not RUNNING
    alive = subprocess.run(["pgrep", "-f", str(tmp_path / "slow")], capture_output=True, text=True)
    assert alive.stdout.strip() == "", "the child outlived the interruption"
