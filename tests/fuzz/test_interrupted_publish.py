"""A run killed inside `--overwrite`'s publish, between renaming the previous output aside
and renaming the new one into place, leaves `.out.old-PID-*` behind: the next run puts the
previous output back when nothing took its place, and removes it when the new output did."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import porter
from porter.errors import BadInput
from tests.tiny_repos import tiny_repo_files


@pytest.fixture()
def tiny_src(tmp_path: Path) -> Path:
    src = tmp_path / "legacy"
    src.mkdir()
    for name, data in tiny_repo_files().items():
        (src / name).write_bytes(data)
    return src


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_killed_after_moving_the_old_output_aside_gets_it_back(tiny_src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    porter.port(tiny_src, out, verify=False)
    previous = _files(out)
    aside = tmp_path / f".out.old-{_dead_pid()}-1"
    out.rename(aside)  # the state a SIGKILL between the two renames leaves

    with pytest.raises(BadInput, match="exists"):  # the previous output is back, so no --overwrite: refused
        porter.port(tiny_src, out, verify=False)
    assert _files(out) == previous and not aside.exists()

    porter.port(tiny_src, out, verify=False, overwrite=True)
    assert json.loads((out / "porting_report.json").read_text())["status"] == "ported"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["legacy", "out"]


def test_killed_after_the_new_output_is_in_place_removes_the_old_one(tiny_src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    porter.port(tiny_src, out, verify=False)
    aside = tmp_path / f".out.old-{_dead_pid()}-1"
    aside.mkdir()
    (aside / "config.json").write_text("{}")  # the old output, not yet removed when the run was killed

    porter.port(tiny_src, out, verify=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["legacy", "out"]


def test_the_old_output_of_a_live_run_is_left_alone(tiny_src: Path, tmp_path: Path) -> None:
    import os

    out = tmp_path / "out"
    live = tmp_path / f".out.old-{os.getpid()}-1"
    live.mkdir()
    porter.port(tiny_src, out, verify=False)
    assert live.exists()
