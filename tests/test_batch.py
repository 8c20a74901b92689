"""`port-model batch`: hundreds of Hub repos, faults, a kill in the middle, and a resume that
neither loses a repo nor pushes one twice. The real client talks HTTP to `tests/hub_server.py`."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.test_hub import TOKEN, hub, hub_env  # noqa: F401 (the fixture)
from tests.tiny_repos import tiny_repo_files

CLI = [sys.executable, "-m", "porter.cli"]


def finished(state_file) -> set[str]:
    if not state_file.exists():
        return set()
    with sqlite3.connect(f"file:{state_file}?mode=ro", uri=True) as db:
        try:
            return {r for (r,) in db.execute("SELECT repo FROM repos WHERE state IN ('done', 'failed')")}
        except sqlite3.OperationalError:  # the table is not created yet
            return set()


def test_batch_of_200_repos_survives_faults_a_kill_and_a_resume(hub, tmp_path):  # noqa: F811
    names = [f"acme/tiny-{i:03d}" for i in range(200)]
    files = tiny_repo_files(0)
    for name in names:
        hub.add_repo(name, files)
    hub.add_repo("acme/tiny-untagged", files, tags=["transformers"])  # the search filter leaves it out
    hub.add_repo("acme/other", files)  # the search query leaves it out

    hub.fail(r"^/api/models\?", 429, retry_after=1)  # the search itself is rate limited
    hub.fail(r"/api/models/acme/tiny-000/revision/", "hang", times=2)  # never answers: the time limit ends it
    hub.fail(r"/api/models/acme/tiny-010/revision/", 503)
    hub.fail(r"/acme/tiny-020/resolve/", "drop")
    hub.fail(r"/api/models/acme/tiny-030/commit/", 500)
    hub.fail(r"/api/models/acme/tiny-040/commit/", "drop-after")  # the pull request opens, the answer is lost

    out = tmp_path / "batch"
    state = out / "batch.sqlite"
    env = {**os.environ, **hub_env(hub, tmp_path)}
    command = [*CLI, "batch", "--search", "tiny", "--filter", "custom_code", "-j", "2", "--time-limit", "10",
               "--no-verify", "--push", "--force", "--out-dir", str(out)]

    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 600
    while len(finished(state)) < 60:
        assert first.poll() is None and time.monotonic() < deadline, "the batch ended before it was killed"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # no clean-up of any kind
    first.wait()
    done_before = finished(state)
    asked_before = len(hub.log)

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 1, second.stderr  # one repo failed: the one that hung
    assert f"resuming: {len(done_before)} of 200 repo(s) already finished" in second.stderr
    assert "200/200" in second.stderr

    rows = json.loads((out / "batch.json").read_text())
    assert [r["repo"] for r in rows] == names
    [hung] = [r for r in rows if r["failed"]]
    assert hung["repo"] == "acme/tiny-000" and "time limit of 10s" in hung["why"] and not hung["pushed"]
    for row in rows[1:]:
        assert row["state"] == "done" and row["ported"] and row["pushed"] and row["status"] == "ported", row
        assert row["sha"] == hub.repos[row["repo"]].refs["main"]
    with open(out / "batch.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 200

    # Nothing pushed twice, no pull request duplicated, nothing finished done again.
    for name in names[1:]:
        assert len(hub.pull_requests(name)) == 1, name
        assert len(hub.requests("POST", f"/api/models/{name}/commit/")) <= 2, name
    assert hub.pull_requests("acme/tiny-000") == []
    assert len(hub.requests("POST", "/api/models/acme/tiny-040/commit/")) == 1
    for name in done_before:
        assert not [r for r in hub.log[asked_before:] if f"/{name}/" in r[1]], f"{name} was redone"
    for name in names[1:]:
        assert (out / name.replace("/", "--") / "model.safetensors").exists()
    for text in (second.stdout, second.stderr, *(p.read_bytes().decode(errors="replace") for p in out.glob("batch.*"))):
        assert TOKEN not in text


def test_repo_list_files_are_checked_line_by_line(tmp_path):
    listing = tmp_path / "repos.txt"
    listing.write_text("# legacy models\nacme/tiny-a\n\nnot a repo id\n")
    result = subprocess.run([*CLI, "batch", str(listing)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"{listing}:4: 'not a repo id' is not a Hub repo id" in result.stderr
    usage = subprocess.run([*CLI, "batch"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and "give either FILE or --search QUERY" in usage.stderr


def test_state_keeps_finished_repos_and_refuses_a_second_batch(tmp_path):
    from porter.batch import BatchState
    from porter.errors import BadInput

    state = BatchState(tmp_path / "s.sqlite")
    state.add(["a/one", "a/two", "a/three"])
    state.start("a/one")
    state.finish({"repo": "a/one", "sha": "0" * 40, "status": "ported", "ported": True, "verified": False,
                  "pushed": True, "pr_url": "http://hub/a/one/discussions/1", "failed": False, "why": "",
                  "seconds": 0.1})
    state.start("a/two")  # interrupted while running
    with pytest.raises(BadInput, match="another batch is running"):
        BatchState(tmp_path / "s.sqlite")
    state.close()

    resumed = BatchState(tmp_path / "s.sqlite")
    resumed.add(["a/one", "a/four"])  # listed again: kept once, in first-seen order
    assert resumed.todo() == ["a/two", "a/three", "a/four"]
    [one] = resumed.rows(["a/one"])
    assert one["pushed"] and one["state"] == "done" and one["attempts"] == 1
    resumed.close()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (pip install '.[ray]')")
def test_ray_executor_runs_the_same_jobs_on_a_local_ray_instance(hub, tmp_path):  # noqa: F811
    from porter.batch import BatchOptions, run_batch

    for name in ("acme/ray-a", "acme/ray-b"):
        hub.add_repo(name, tiny_repo_files(1))
    hub.fail(r"/api/models/acme/ray-b/commit/", "drop-after")
    options = BatchOptions(out_dir=tmp_path / "out", jobs=2, verify=False, push=True, force=True, executor="ray",
                           time_limit=300)
    rows = run_batch(["acme/ray-a", "acme/ray-b"], options)
    assert [(r["repo"], r["pushed"], r["failed"]) for r in rows] == [("acme/ray-a", True, False),
                                                                      ("acme/ray-b", True, False)]
    assert [len(hub.pull_requests(n)) for n in ("acme/ray-a", "acme/ray-b")] == [1, 1]
