"""Hub repos as the source of a port and pull requests as its output, through the real
`huggingface_hub` client talking HTTP to the test Hub in `tests/hub_server.py`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hub_server import FakeHub
from tests.tiny_repos import tiny_repo_files

TOKEN = "hf_port_model_tests_0123456789secret"
USER = "porter-bot"


def hub_env(hub: FakeHub, tmp_path: Path) -> dict[str, str]:
    """What a user sets to reach a Hub: endpoint, token, cache; the test Hub speaks LFS, not Xet."""
    return {
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": TOKEN,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
        "PORT_MODEL_CACHE": str(tmp_path / "port-model-cache"),
        "PORT_MODEL_HUB_BACKOFF": "0.01",
    }


@pytest.fixture
def hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    server = FakeHub({TOKEN: USER, "hf_someone_else": "someone"}).start()
    for name, value in hub_env(server, tmp_path).items():
        monkeypatch.setenv(name, value)
    # The client reads these two when it is imported; this process imported it already.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    yield server
    server.stop()


@pytest.fixture
def sleeps(monkeypatch):
    """Retry delays asked for, instead of waited."""
    import time

    asked: list[float] = []
    monkeypatch.setattr(time, "sleep", asked.append)
    return asked


def port(src: str, out: Path, **options):
    import porter

    return porter.port(src, out, verify=False, **options)


def test_repo_ids_and_local_folders(tmp_path, monkeypatch):
    from porter.hub import parse_repo_id, resolve_source

    assert parse_repo_id("acme/tiny") == ("acme/tiny", None)
    assert parse_repo_id("acme/tiny@refs/pr/3") == ("acme/tiny", "refs/pr/3")
    assert parse_repo_id("acme/tiny@" + "a" * 40) == ("acme/tiny", "a" * 40)
    for not_an_id in ("tiny", "./acme/tiny", "/abs/path", "acme/tiny/extra", "acme/tiny@"):
        assert parse_repo_id(not_an_id) is None, not_an_id
    monkeypatch.chdir(tmp_path)
    (tmp_path / "acme" / "tiny").mkdir(parents=True)
    source = resolve_source("acme/tiny")  # a folder that exists wins: no Hub call is made
    assert source.path == Path("acme/tiny") and source.hub == {}


def test_port_from_the_hub_records_the_exact_commit_and_uses_the_hub_cache(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from porter.errors import BadInput

    first = hub.add_repo("acme/tiny", tiny_repo_files(0))
    latest = hub.add_repo("acme/tiny", {"README.md": b"# tiny\n\nnew card\n"}, message="card")

    pinned = port(f"acme/tiny@{first}", tmp_path / "pinned")
    assert pinned.report.hub == {"repo_id": "acme/tiny", "revision": first, "sha": first}
    assert pinned.report.source == f"acme/tiny@{first}"
    saved = json.loads((tmp_path / "pinned" / "porting_report.json").read_text())
    assert saved["hub"]["sha"] == first and saved["status"] == "ported"
    assert (tmp_path / "pinned" / "model.safetensors").exists()
    assert not (tmp_path / "pinned" / "pytorch_model.bin").exists()
    assert f"commit `{first}`" in (tmp_path / "pinned" / "PORTING.md").read_text()

    on_main = port("acme/tiny", tmp_path / "main")
    assert on_main.report.hub["sha"] == latest and on_main.report.hub["revision"] == "main"
    snapshot = Path(os.environ["HF_HUB_CACHE"]) / "models--acme--tiny" / "snapshots" / latest
    assert (snapshot / "modeling_tiny.py").is_file()
    assert (snapshot.parent.parent / "refs" / "main").read_text() == latest

    # Offline, the cache answers with the same commit; the Hub is not asked.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    asked = len(hub.log)
    offline = port("acme/tiny", tmp_path / "main", overwrite=True)
    assert offline.report.hub["sha"] == latest and len(hub.log) == asked
    with pytest.raises(BadInput, match="HF_HUB_OFFLINE"):
        port("acme/never-downloaded", tmp_path / "never")


def test_unknown_repo_and_revision_are_bad_input(hub, tmp_path):
    from porter.errors import BadInput

    hub.add_repo("acme/tiny", tiny_repo_files(0))
    with pytest.raises(BadInput, match="no such model repo"):
        port("acme/missing", tmp_path / "a")
    with pytest.raises(BadInput, match="no such revision"):
        port("acme/tiny@v9", tmp_path / "b")


def test_push_refuses_unverified_then_force_opens_one_pull_request_and_reuses_it(hub, tmp_path):
    from porter.hub import UNVERIFIED, PushRefused, push

    sha = hub.add_repo("acme/tiny", tiny_repo_files(0))
    hub.add_repo("acme/tiny", {"README.md": b"# tiny\n\nlater\n"}, message="a later commit on main")
    result = port(f"acme/tiny@{sha}", tmp_path / "out")

    with pytest.raises(PushRefused, match="not verified"):
        push(result)
    assert hub.pull_requests("acme/tiny") == []

    opened = push(result, force=True)
    assert not opened.reused and opened.url.endswith("/acme/tiny/discussions/1")
    [pr] = hub.pull_requests("acme/tiny")
    assert pr.author == USER and pr.title.startswith(UNVERIFIED)
    assert "**Unverified**" in pr.description and "F2    equivalence with the legacy model" in pr.description
    # Based on the ported commit, not on the newer main; the replaced checkpoint is removed.
    pr_commit = hub.repos["acme/tiny"].resolve(pr.ref)
    assert pr_commit.parent == sha
    files = hub.files_at("acme/tiny", pr.ref)
    assert "pytorch_model.bin" not in files and "porting_report.json" in files
    assert files["model.safetensors"] == (tmp_path / "out" / "model.safetensors").read_bytes()
    assert files["README.md"].startswith(b"# tiny\n\nA legacy model.")

    again = push(result, force=True)
    assert again.reused and again.url == opened.url
    assert len(hub.pull_requests("acme/tiny")) == 1
    assert len(hub.requests("POST", r"/commit/")) == 1


def test_pull_requests_of_other_authors_or_other_changes_are_not_reused(hub, tmp_path):
    from porter.hub import change_key, pr_title, push

    sha = hub.add_repo("acme/tiny", tiny_repo_files(0))
    result = port("acme/tiny", tmp_path / "out")
    key = change_key(result.report, result.output)
    repo = hub.repos["acme/tiny"]
    from tests.hub_server import Discussion

    repo.discussions.append(Discussion(1, pr_title(key, False), "", "someone", True))
    repo.discussions.append(Discussion(2, pr_title("000000000000", False), "", USER, True))
    assert not push(result, force=True).reused
    assert [d.author for d in hub.pull_requests("acme/tiny")] == ["someone", USER, USER]
    assert sha == result.report.hub["sha"]


def test_rate_limits_errors_and_lost_answers_never_duplicate_a_pull_request(hub, tmp_path, sleeps):
    from porter.hub import push

    hub.add_repo("acme/tiny", tiny_repo_files(0))
    hub.fail(r"/api/models/acme/tiny/revision/main", 429, retry_after=7)
    hub.fail(r"/api/models/acme/tiny/tree/", "drop")
    result = port("acme/tiny", tmp_path / "out")
    assert result.report.hub["sha"]
    assert 7.0 in sleeps  # Retry-After honoured

    hub.fail(r"/api/models/acme/tiny/commit/", 500)  # refused before it landed: retried
    hub.fail(r"/api/models/acme/tiny/commit/", "drop-after")  # landed, answer lost: found, not redone
    opened = push(result, force=True)
    assert opened.url.endswith("/discussions/1")
    assert len(hub.pull_requests("acme/tiny")) == 1
    assert [r[2] for r in hub.requests("POST", r"/commit/")] == [500, "dropped"]


def test_push_on_the_command_line_never_shows_the_token(hub, tmp_path):
    hub.add_repo("acme/tiny", tiny_repo_files(0))
    env = {**os.environ, **hub_env(hub, tmp_path)}
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "porter.cli", "acme/tiny", "-o", out, "--no-verify", "--push",
                             "--force", "--json", "-v"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # stdout stays the report alone
    assert report["hub"]["repo_id"] == "acme/tiny" and report["hub"]["sha"] == hub.repos["acme/tiny"].refs["main"]
    assert "opened pull request: " + hub.url in result.stderr
    assert hub.requests("POST", "/commit/")[0][3]  # the token was sent to the Hub...
    [pr] = hub.pull_requests("acme/tiny")
    written = [p.read_bytes() for p in out.rglob("*") if p.is_file()]
    for text in (result.stdout, result.stderr, pr.description, pr.title):
        assert TOKEN not in text  # ...and shown nowhere
    assert all(TOKEN.encode() not in data for data in written)
