"""The legacy and ported children run side by side, each on its share of the cores, and
are stopped together."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from porter.verify.child import RUNNING, run_model
from porter.verify.side_by_side import run_pair, threads_each

VERIFY = Path(__file__).resolve().parent.parent / "porter" / "verify"


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
    # Python's own Ctrl-C handler, whatever an earlier test in this process left installed
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=interrupt_when_running, daemon=True).start()
    slow = {"sleep": 60}
    try:
        with pytest.raises(KeyboardInterrupt):
            run_pair(lambda: run_model(sys.executable, tmp_path, slow, tmp_path / "slow", 120, runner=script),
                     lambda: run_model(sys.executable, tmp_path, slow, tmp_path / "slow2", 120, runner=script),
                     together=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - started < 30 and not RUNNING
    alive = subprocess.run(["pgrep", "-f", str(tmp_path / "slow")], capture_output=True, text=True)
    assert alive.stdout.strip() == "", "the child outlived the interruption"
