"""A port killed outright (SIGKILL: no cleanup runs) at a random point leaves the output
folder complete or absent, never half-written, and the next run succeeds (CONTRACT G1).

Kill points are drawn from a fixed seed: a random stage of the port (as its progress
messages announce it), then a random delay into that stage.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "porter.cli"]
STAGES = ["reading", "rewriting code", "writing code", "converting"]
KILLS = 2


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _kill_during(src: Path, out: Path, stage: str, delay: float) -> None:
    proc = subprocess.Popen([*CLI, str(src), "-o", str(out), "--no-verify", "--overwrite"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    for line in proc.stderr:
        if stage in line or time.monotonic() > deadline:
            break
    time.sleep(delay)
    proc.kill()
    proc.wait(timeout=60)
    proc.stderr.close()


def test_sigkill_at_random_points_leaves_output_complete_or_absent(sample_repo: Path, tmp_path: Path) -> None:
    src = tmp_path / "legacy"
    shutil.copytree(sample_repo, src)
    out = tmp_path / "out"
    rng = random.Random(20261123)
    seen = []
    for _ in range(KILLS):
        stage, delay = rng.choice(STAGES), rng.uniform(0.0, 1.0)
        _kill_during(src, out, stage, delay)
        seen.append((stage, round(delay, 2), _files(out) if out.exists() else None))

    rerun = subprocess.run([*CLI, str(src), "-o", str(out), "--no-verify", "--overwrite", "-q"],
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    complete = _files(out)
    assert json.loads((out / "porting_report.json").read_text())["status"] == "ported"
    for stage, delay, files in seen:
        assert files is None or files == complete, f"killed {delay}s into {stage!r}: partial output {files}"
    assert not list(tmp_path.glob(".out.partial-*")), "staging folders of killed runs were not cleaned"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["legacy", "out"]
