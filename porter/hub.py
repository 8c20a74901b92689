"""Repos on the Hugging Face Hub: a repo id as the source of a port, and the port as a pull request.

Settings come from the environment at call time, as the `huggingface_hub` client reads them:
`HF_ENDPOINT`, `HF_TOKEN` (or the saved login), `HF_HUB_OFFLINE`, `HF_HOME` / `HF_HUB_CACHE`.
The token is only ever handed to the client; nothing here prints, logs or stores it.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from porter.errors import BadInput, PortError

# `org/name` or `org/name@revision`; a folder that exists always wins over this reading.
REPO_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?$")
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
PR_TITLE = "Port to transformers 5 with port-model"
UNVERIFIED = "[UNVERIFIED] "


class PushRefused(PortError):
    """The port is not verified and `--force` was not given: nothing is pushed (exit 1)."""

    exit_code = 1


@dataclass
class Source:
    """Where a port reads from: a local folder, or a Hub snapshot with its exact commit."""

    path: Path
    label: str
    hub: dict = field(default_factory=dict)  # repo_id, revision, sha; empty for a local folder
    default_output: Path | None = None


# -- settings, read when used -------------------------------------------------------------------
def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_cache() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def backoff_base() -> float:
    """First retry delay in seconds; doubles per attempt. `PORT_MODEL_HUB_BACKOFF` overrides it."""
    return float(os.environ.get("PORT_MODEL_HUB_BACKOFF", "1.0"))


# -- retries ------------------------------------------------------------------------------------
def transient_delay(exc: BaseException, attempt: int, base: float, cap: float = 60.0) -> float | None:
    """Seconds to wait before retrying after `exc`, or None when retrying cannot help.

    429 and 5xx answers and dropped connections are transient; `Retry-After` is honoured.
    The client often wraps the HTTP error (e.g. in a cache miss), so the cause chain is searched.
    """
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, HfHubHTTPError) and current.response is not None:
            status = current.response.status_code
            if status not in TRANSIENT_STATUS:
                return None
            retry_after = current.response.headers.get("Retry-After", "")
            if retry_after.strip().isdigit():
                return float(retry_after)
            return _backoff(attempt, base, cap)
        if isinstance(current, httpx2.TransportError):
            return _backoff(attempt, base, cap)
        pending += [current.__cause__, current.__context__]
    return None


def _backoff(attempt: int, base: float, cap: float) -> float:
    return min(cap, base * 2**attempt) * random.uniform(0.5, 1.0)


def with_retries(call: Callable, what: str, progress: Callable[[str], None] = lambda m: None,
                 attempts: int = 6, sleep: Callable[[float], None] | None = None,
                 before_retry: Callable[[], object] | None = None):
    """Run `call`, retrying transient Hub failures with exponential backoff.

    `before_retry` runs before each new attempt; a result other than None is returned as is
    (used to find a pull request whose creation succeeded although its answer was lost).
    """
    base = backoff_base()
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:
            delay = transient_delay(exc, attempt, base)
            if delay is None or attempt == attempts - 1:
                raise
            progress(f"{what}: {_describe(exc)}; retry {attempt + 1} in {delay:.1f}s")
            (sleep or time.sleep)(delay)
            if before_retry is not None:
                found = before_retry()
                if found is not None:
                    return found
    raise AssertionError("unreachable")


def _describe(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if response is not None:
        return f"HTTP {response.status_code}"
    return type(exc).__name__


# -- the source ---------------------------------------------------------------------------------
def parse_repo_id(text: str) -> tuple[str, str | None] | None:
    match = REPO_ID.match(text)
    return (match.group("repo"), match.group("revision")) if match else None


def resolve_source(src: Path | str, progress: Callable[[str], None] = lambda m: None) -> Source:
    """A folder that exists is used as is; otherwise `org/name[@revision]` is fetched from the Hub."""
    path = Path(src)
    parsed = None if path.exists() else parse_repo_id(str(src))
    if parsed is None:
        return Source(path, str(path))
    return fetch(*parsed, progress=progress)


def fetch(repo_id: str, revision: str | None = None, progress: Callable[[str], None] = lambda m: None) -> Source:
    """Download a snapshot into the Hub cache and return a folder view of it at its exact commit."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    wanted = revision or "main"
    progress(f"fetching {repo_id}@{wanted} from {'the Hub cache' if offline() else endpoint()}")
    try:
        snapshot = with_retries(
            lambda: snapshot_download(repo_id, revision=wanted, endpoint=endpoint(), cache_dir=hub_cache(),
                                      local_files_only=offline()),
            f"downloading {repo_id}",
            progress,
        )
    except RepositoryNotFoundError:
        raise BadInput(f"{repo_id}: no folder of that name, and no such model repo on {endpoint()} "
                       "(or no access to it)") from None
    except RevisionNotFoundError:
        raise BadInput(f"{repo_id}@{wanted}: no such revision") from None
    except LocalEntryNotFoundError as exc:
        why = "HF_HUB_OFFLINE is set and it is not in the Hub cache" if offline() else str(exc).splitlines()[0]
        raise BadInput(f"{repo_id}@{wanted}: cannot be fetched: {why}") from None
    except HfHubHTTPError as exc:
        raise BadInput(f"{repo_id}@{wanted}: the Hub answered {_describe(exc)}") from None
    sha = Path(snapshot).name
    if not COMMIT_SHA.match(sha):
        raise BadInput(f"{repo_id}@{wanted}: the Hub cache gave {snapshot}, which names no commit")
    name = repo_id.split("/")[1]
    return Source(
        path=_folder_view(Path(snapshot), repo_id, sha),
        label=f"{repo_id}@{sha}",
        hub={"repo_id": repo_id, "revision": wanted, "sha": sha},
        default_output=Path.cwd() / f"{name}-ported",
    )


def _folder_view(snapshot: Path, repo_id: str, sha: str) -> Path:
    """The snapshot as plain files (hard links to the cached blobs, copies across devices).

    Hub cache snapshots are symlinks into `blobs/`, which a repo loader rightly refuses as links
    leaving the repo; the view is built once per commit and never written to afterwards.
    """
    from porter.environments import default_cache_dir

    view = default_cache_dir() / "hub-views" / repo_id.replace("/", "--") / sha
    if (view / ".complete").exists():
        return view
    staging = view.with_name(f".{sha}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    for path in sorted(snapshot.rglob("*")):
        if not path.is_file():
            continue
        target = staging / path.relative_to(snapshot)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path.resolve(), target)
        except OSError:
            shutil.copy2(path, target)
    staging.mkdir(parents=True, exist_ok=True)
    (staging / ".complete").write_text(sha + "\n")
    try:
        staging.rename(view)
    except OSError:  # another process finished the same view first
        shutil.rmtree(staging, ignore_errors=True)
    return view


# -- the pull request ---------------------------------------------------------------------------
@dataclass
class PullRequest:
    url: str
    num: int | None
    reused: bool


def change_key(report, output: Path) -> str:
    """Names one change: the ported commit, the port-model release, and the code written."""
    digest = hashlib.sha256()
    hub = report.hub
    digest.update(f"{hub['repo_id']}@{hub['sha']}|{report.versions.get('port-model')}".encode())
    for path in sorted(output.iterdir()):
        if path.is_file() and (path.suffix == ".py" or path.name == "config.json"):
            digest.update(path.name.encode() + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:12]


def pr_title(key: str, verified: bool) -> str:
    return f"{'' if verified else UNVERIFIED}{PR_TITLE} [{key}]"


def pr_description(report, key: str) -> str:
    hub = report.hub
    lines = []
    if not report.verified:
        lines += ["**Unverified**: equivalence with the legacy code was not shown for this port "
                  "(it was pushed with `--force`). Review the checks below before merging.", ""]
    lines += [
        f"This pull request ports `{hub['repo_id']}` at commit `{hub['sha']}` to transformers "
        f"{report.versions.get('transformers')} with port-model {report.versions.get('port-model')}.",
        "",
        f"Status: **{report.status}**" + (" (verified against the legacy code)" if report.verified else ""),
        "",
        "```",
        report.summary_table(),
        "```",
        "",
        "`PORTING.md` and `porting_report.json` in this pull request list every change and check.",
        "",
        f"<!-- port-model change {key} -->",
    ]
    return "\n".join(lines)


def push(result, force: bool = False, progress: Callable[[str], None] = lambda m: None,
         sleep: Callable[[float], None] | None = None) -> PullRequest:
    """Open a pull request with the ported repo against the commit it was ported from.

    An open pull request by the same user for the same change is reused. A commit whose answer
    is lost (dropped connection, 5xx after the fact) is looked up before it is retried, so a
    retry never opens a second pull request.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    report, output = result.report, Path(result.output)
    if not report.hub:
        raise BadInput("--push needs a Hub repo id as SRC (org/name[@revision])")
    if not report.verified and not force:
        why = "verification failed" if report.failed else "the port was not verified"
        raise PushRefused(f"not pushed: {why} (pass --force to push it marked unverified)")
    repo_id, sha = report.hub["repo_id"], report.hub["sha"]
    api = HfApi(endpoint=endpoint())
    user = with_retries(lambda: api.whoami()["name"], "checking the Hub token", progress, sleep=sleep)
    key = change_key(report, output)
    title = pr_title(key, report.verified)

    def existing() -> PullRequest | None:
        for discussion in api.get_repo_discussions(repo_id, author=user, discussion_type="pull_request",
                                                   discussion_status="open"):
            if f"[{key}]" in discussion.title and discussion.author == user:
                return PullRequest(f"{endpoint()}/{repo_id}/discussions/{discussion.num}", discussion.num, True)
        return None

    found = with_retries(existing, "listing pull requests", progress, sleep=sleep)
    if found is not None:
        progress(f"an open pull request for this change exists: {found.url}")
        return found

    source_files = with_retries(lambda: api.list_repo_files(repo_id, revision=sha), "listing files", progress,
                                sleep=sleep)
    written = {str(p.relative_to(output)) for p in output.rglob("*") if p.is_file()}
    replaced = [f for f in source_files if f not in written and _replaced_by_port(f)]
    branch = report.hub.get("revision") or "main"
    branch = "main" if COMMIT_SHA.match(branch) else branch

    def commit() -> PullRequest:
        operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(output / rel)) for rel in sorted(written)]
        operations += [CommitOperationDelete(path_in_repo=rel) for rel in replaced]
        info = api.create_commit(repo_id, operations, commit_message=title,
                                 commit_description=pr_description(report, key),
                                 create_pr=True, revision=branch, parent_commit=sha)
        return PullRequest(info.pr_url, info.pr_num, False)

    progress(f"opening a pull request on {repo_id} ({len(written)} file(s), {len(replaced)} removed)")
    return with_retries(commit, "pushing", progress, sleep=sleep,
                        before_retry=lambda: with_retries(existing, "listing pull requests", progress, sleep=sleep))


def _replaced_by_port(path: str) -> bool:
    """Checkpoint files of the source that the port's safetensors replace."""
    from porter.repo import WEIGHT_NAME

    return "/" not in path and bool(WEIGHT_NAME.match(path))
