"""Many repos at once: `port-model batch FILE` or `port-model batch --search QUERY`.

Every repo's state lives in SQLite, written as each repo starts and ends, so a batch that is
interrupted (Ctrl-C, a crash, a killed machine) resumes where it stopped: finished repos are
not redone and not pushed again; repos that were running are redone, and their push finds the
pull request a previous attempt may have opened (see `porter.hub.push`).
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from porter.errors import BadInput
from porter.jobs import JobSpec

COLUMNS = ["repo", "state", "sha", "status", "ported", "verified", "pushed", "pr_url", "failed", "why", "attempts",
           "seconds"]
FINAL = ("done", "failed")


@dataclass
class BatchOptions:
    out_dir: Path = Path("ported")
    state: Path | None = None  # default: OUT_DIR/batch.sqlite
    jobs: int = 1
    time_limit: float = 3600.0
    verify: bool = True
    push: bool = False
    force: bool = False
    device: str = "auto"
    reference_transformers: str | None = None
    reference: str = "own"
    retry_failed: bool = False
    executor: str = "local"
    ray_address: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def state_path(self) -> Path:
        return Path(self.state) if self.state else Path(self.out_dir) / "batch.sqlite"


# -- the list of repos --------------------------------------------------------------------------
def read_repo_list(path: Path) -> list[str]:
    """One repo id per line; blank lines and `#` comments are skipped."""
    from porter.hub import parse_repo_id

    repos = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if parse_repo_id(text) is None:
            raise BadInput(f"{path}:{number}: {text!r} is not a Hub repo id (org/name[@revision])")
        repos.append(text)
    return list(dict.fromkeys(repos))


def search_repos(query: str, filters: tuple[str, ...] = (), limit: int | None = None,
                 progress: Callable[[str], None] = lambda m: None) -> list[str]:
    """Model repos the Hub search finds, e.g. `search_repos("llama", ("custom_code",))`."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from porter.hub import endpoint, with_retries

    api = HfApi(endpoint=endpoint())
    try:
        found = with_retries(
            lambda: [m.id for m in api.list_models(search=query or None, filter=list(filters) or None, limit=limit)],
            "searching the Hub", progress,
        )
    except HfHubHTTPError as exc:
        raise BadInput(f"the Hub search failed: {str(exc).splitlines()[0]}") from None
    progress(f"the search found {len(found)} repo(s)")
    return found


# -- persistent state ---------------------------------------------------------------------------
class BatchState:
    """One row per repo; `state` is pending, running, done (nothing left to do) or failed."""

    def __init__(self, path: Path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(path.with_name(path.name + ".lock"), "w")  # noqa: SIM115 (held for the batch)
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BadInput.at(path, "another batch is running with this state file") from None
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS repos (repo TEXT PRIMARY KEY, position INTEGER, state TEXT, sha TEXT, "
            "status TEXT, ported INTEGER DEFAULT 0, verified INTEGER DEFAULT 0, pushed INTEGER DEFAULT 0, "
            "pr_url TEXT, failed INTEGER DEFAULT 0, why TEXT DEFAULT '', attempts INTEGER DEFAULT 0, "
            "seconds REAL DEFAULT 0, updated REAL)"
        )
        self._write = threading.Lock()

    def add(self, repos: list[str]) -> None:
        with self._write:
            start = self.db.execute("SELECT COALESCE(MAX(position), 0) FROM repos").fetchone()[0]
            self.db.executemany(
                "INSERT OR IGNORE INTO repos (repo, position, state, updated) VALUES (?, ?, 'pending', ?)",
                [(repo, start + i + 1, time.time()) for i, repo in enumerate(repos)],
            )

    def todo(self, retry_failed: bool = False) -> list[str]:
        states = ("pending", "running", "failed") if retry_failed else ("pending", "running")
        marks = ",".join("?" * len(states))
        return [r for (r,) in self.db.execute(f"SELECT repo FROM repos WHERE state IN ({marks}) ORDER BY position",
                                              states)]

    def start(self, repo: str) -> None:
        with self._write:
            self.db.execute("UPDATE repos SET state='running', attempts=attempts+1, updated=? WHERE repo=?",
                            (time.time(), repo))

    def finish(self, outcome: dict) -> None:
        with self._write:
            self.db.execute(
                "UPDATE repos SET state=?, sha=?, status=?, ported=?, verified=?, pushed=?, pr_url=?, failed=?, "
                "why=?, seconds=?, updated=? WHERE repo=?",
                ("failed" if outcome["failed"] else "done", outcome["sha"], outcome["status"], int(outcome["ported"]),
                 int(outcome["verified"]), int(outcome["pushed"]), outcome["pr_url"], int(outcome["failed"]),
                 outcome["why"], outcome["seconds"], time.time(), outcome["repo"]),
            )

    def rows(self, repos: list[str] | None = None) -> list[dict]:
        cursor = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM repos ORDER BY position")
        rows = [dict(zip(COLUMNS, row, strict=True)) for row in cursor]
        for row in rows:
            for flag in ("ported", "verified", "pushed", "failed"):
                row[flag] = bool(row[flag])
        return rows if repos is None else [r for r in rows if r["repo"] in set(repos)]

    def close(self) -> None:
        self.db.close()
        self._lock_file.close()


# -- progress -----------------------------------------------------------------------------------
class Progress:
    """Live counts on stderr: a redrawn bar on a terminal, one line per finished repo otherwise."""

    def __init__(self, rows: list[dict], stream=sys.stderr):
        self.stream = stream
        self.total = len(rows)
        self.counts = {"done": 0, "ported": 0, "verified": 0, "pushed": 0, "failed": 0, "running": 0}
        for row in rows:
            if row["state"] in FINAL:
                self._count(row)
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def _count(self, row: dict) -> None:
        self.counts["done"] += 1
        for flag in ("ported", "verified", "pushed", "failed"):
            self.counts[flag] += bool(row[flag])

    def line(self) -> str:
        c = self.counts
        width = 30
        filled = int(width * c["done"] / self.total) if self.total else width
        return (f"[{'#' * filled}{'.' * (width - filled)}] {c['done']}/{self.total}  ported {c['ported']}  "
                f"verified {c['verified']}  pushed {c['pushed']}  failed {c['failed']}  running {c['running']}")

    def started(self, spec: JobSpec) -> None:
        self.counts["running"] += 1
        if self.tty:
            self._draw()

    def finished(self, outcome: dict) -> None:
        self.counts["running"] -= 1
        self._count(outcome)
        if self.tty:
            self._draw()
        else:
            what = "failed: " + outcome["why"] if outcome["failed"] else (outcome["status"] or "")
            what += f", pull request {outcome['pr_url']}" if outcome["pushed"] else ""
            print(f"{self.line()}  | {outcome['repo']}: {what}", file=self.stream, flush=True)

    def _draw(self) -> None:
        print("\r" + self.line(), end="", file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=self.stream, flush=True)


# -- the run ------------------------------------------------------------------------------------
def output_folder(out_dir: Path, repo: str) -> Path:
    return Path(out_dir) / repo.replace("/", "--").replace("@", "--")


def run_batch(repos: list[str], options: BatchOptions, stream=sys.stderr) -> list[dict]:
    """Port every repo not yet finished in the state file; returns the table of all repos listed."""
    from porter.executors import make_executor

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # one progress display: ours
    state = BatchState(options.state_path)
    try:
        state.add(repos)
        todo = [r for r in state.todo(options.retry_failed) if r in set(repos)]
        progress = Progress(state.rows(repos), stream)
        if len(todo) < len(repos):
            print(f"resuming: {len(repos) - len(todo)} of {len(repos)} repo(s) already finished", file=stream)
        specs = [
            JobSpec(repo=repo, out=str(output_folder(options.out_dir, repo).resolve()), verify=options.verify,
                    push=options.push, force=options.force, device=options.device,
                    reference_transformers=options.reference_transformers, reference=options.reference,
                    time_limit=options.time_limit)
            for repo in todo
        ]
        if specs:
            executor = make_executor(options.executor, options.jobs, options.ray_address, options.verify)

            def on_start(spec: JobSpec) -> None:
                state.start(spec.repo)
                progress.started(spec)

            def on_done(spec: JobSpec, outcome: dict) -> None:
                state.finish(outcome)
                progress.finished(outcome)

            try:
                executor.run(specs, on_start, on_done)
            finally:
                if hasattr(executor, "shutdown"):
                    executor.shutdown()
        progress.close()
        rows = state.rows(repos)
    finally:
        state.close()
    write_tables(rows, Path(options.out_dir))
    return rows


def write_tables(rows: list[dict], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out_dir / "batch.csv", out_dir / "batch.json"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps(rows, indent=2) + "\n")
    return csv_path, json_path


def summary(rows: list[dict]) -> str:
    count = {flag: sum(r[flag] for r in rows) for flag in ("ported", "verified", "pushed", "failed")}
    return (f"{len(rows)} repo(s): ported {count['ported']}, verified {count['verified']}, "
            f"pushed {count['pushed']}, failed {count['failed']}")
