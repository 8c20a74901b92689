"""A Hugging Face Hub for the tests: the HTTP endpoints the real `huggingface_hub` client
calls, served from memory by the standard library in a background thread.

Point the client at it with `HF_ENDPOINT=hub.url`. It implements what port-model uses:
repo info at a revision, the file tree, file downloads (`resolve`, HEAD and GET with the
commit and etag headers), model search with `Link` pagination, repo creation, `whoami`,
preupload, the LFS batch and upload endpoints, commits (to a branch or as a pull request)
and the discussions list. Uploads use the LFS protocol, not Xet: run the client with
`HF_HUB_DISABLE_XET=1`. Faults are injected per request: an HTTP status (429 with
`Retry-After`, 5xx), a connection dropped before the request is handled, one dropped after
it was handled (the client never hears that its commit landed), or no answer at all.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt")
PAGE_SIZE = 50  # small, so that listing a few hundred repos crosses pages
HANG_SECONDS = 120


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str, data: bytes) -> bool:
    return path.endswith(LFS_SUFFIXES) or len(data) > 10_000_000


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, bytes]
    message: str


@dataclass
class Discussion:
    num: int
    title: str
    description: str
    author: str
    is_pull_request: bool
    status: str = "open"
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()))
    ref: str | None = None


@dataclass
class Repo:
    repo_id: str
    tags: list[str]
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    discussions: list[Discussion] = field(default_factory=list)

    def resolve(self, revision: str) -> Commit | None:
        oid = self.refs.get(revision, revision)
        return self.commits.get(oid)


@dataclass
class Fault:
    """Answer the next `times` requests matching method and path with `action`."""

    method: str | None
    pattern: str
    action: int | str  # an HTTP status, "drop" (before handling), "drop-after" (after handling), or "hang"
    times: int = 1
    retry_after: int | None = None


class FakeHub:
    def __init__(self, tokens: dict[str, str] | None = None):
        self.tokens = dict(tokens or {})  # token -> user name
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.faults: list[Fault] = []
        self.log: list[list] = []  # [method, path, status, sent a token], in order of arrival
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            state = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- seeding and inspection (what the tests use directly) -------------------------------
    def add_repo(self, repo_id: str, files: Path | dict[str, bytes], tags=("transformers", "custom_code"),
                 message: str = "initial commit") -> str:
        """Create a repo, or add or replace files in a new commit on `main`; returns the commit sha."""
        if isinstance(files, Path):
            files = {str(p.relative_to(files)): p.read_bytes() for p in sorted(files.rglob("*")) if p.is_file()}
        with self.lock:
            repo = self.repos.setdefault(repo_id, Repo(repo_id, list(tags)))
            for path, data in files.items():
                if is_lfs(path, data):
                    self.lfs[hashlib.sha256(data).hexdigest()] = data
            parent = repo.refs.get("main")
            tree = {**(repo.commits[parent].files if parent else {}), **files}
            return self._commit(repo, parent, tree, message, "main")

    def fail(self, pattern: str, action: int | str, times: int = 1, method: str | None = None,
             retry_after: int | None = None) -> None:
        with self.lock:
            self.faults.append(Fault(method, pattern, action, times, retry_after))

    def pull_requests(self, repo_id: str) -> list[Discussion]:
        with self.lock:
            return [d for d in self.repos[repo_id].discussions if d.is_pull_request]

    def files_at(self, repo_id: str, revision: str) -> dict[str, bytes]:
        with self.lock:
            return dict(self.repos[repo_id].resolve(revision).files)

    def requests(self, method: str | None = None, pattern: str = "") -> list[tuple]:
        with self.lock:
            return [tuple(r) for r in self.log if (method is None or r[0] == method) and re.search(pattern, r[1])]

    # -- state changes ----------------------------------------------------------------------
    def _commit(self, repo: Repo, parent: str | None, files: dict[str, bytes], message: str, ref: str) -> str:
        digest = hashlib.sha1(repr((parent, message, time.time_ns())).encode())
        for path in sorted(files):
            digest.update(path.encode() + hashlib.sha1(files[path]).digest())
        oid = digest.hexdigest()
        repo.commits[oid] = Commit(oid, parent, files, message)
        repo.refs[ref] = oid
        return oid


# -- the HTTP side ----------------------------------------------------------------------------
class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class _Drop(Exception):
    """Close the connection without an answer."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: FakeHub

    def log_message(self, format, *args):  # quiet: the hub keeps its own log
        pass

    def do_GET(self):
        self._handle("GET")

    def do_HEAD(self):
        self._handle("HEAD")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    # -- dispatch ---------------------------------------------------------------------------
    def _handle(self, method: str) -> None:
        hub = self.state
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        body = self._read_body() if method in ("POST", "PUT") else b""
        user = self._user()
        fault = self._take_fault(method, self.path)
        record = [method, self.path, "pending", self.headers.get("authorization") is not None]
        with hub.lock:  # logged on arrival, so the log's order is the order requests came in
            hub.log.append(record)
        try:
            if fault is not None and fault.action == "hang":  # a Hub that stops answering
                time.sleep(HANG_SECONDS)
                raise _Drop
            if fault is not None and fault.action == "drop":
                raise _Drop
            if fault is not None and isinstance(fault.action, int):
                raise _Injected(fault, {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {})
            status, payload, headers = self._route(method, path, query, body, user)
            if fault is not None and fault.action == "drop-after":
                raise _Drop
            record[2] = status
            self._send(status, payload, headers, head=(method == "HEAD"))
        except _Injected as injected:
            record[2] = injected.fault.action
            self._send(injected.fault.action, {"error": "injected fault"}, injected.headers)
        except HubError as error:
            record[2] = error.status
            headers = {"X-Error-Code": error.code} if error.code else {}
            headers["X-Error-Message"] = error.message
            self._send(error.status, {"error": error.message}, headers, head=(method == "HEAD"))
        except _Drop:
            record[2] = "dropped"
            self.close_connection = True

    def _take_fault(self, method: str, path: str) -> Fault | None:
        hub = self.state
        with hub.lock:
            for fault in hub.faults:
                if fault.times > 0 and (fault.method in (None, method)) and re.search(fault.pattern, path):
                    fault.times -= 1
                    return fault
        return None

    def _route(self, method, path, query, body, user):
        hub = self.state
        if path == "/api/whoami-v2":
            if user is None:
                raise HubError(401, "Invalid credentials in Authorization header")
            return 200, {"type": "user", "name": user, "fullname": user, "orgs": [],
                         "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": "write"}}}, {}
        if path == "/api/validate-yaml" and method == "POST":
            return 200, {"errors": [], "warnings": []}, {}
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo(json.loads(body), user)
        if path == "/api/models" and method == "GET":
            return self._search(query)
        if path.startswith("/api/models/"):
            org, name, *rest = path[len("/api/models/"):].split("/")
            return self._model_api(method, f"{org}/{name}", rest, query, body, user)
        if path.startswith("/lfs-upload/") and method == "PUT":
            oid = path.rsplit("/", 1)[1]
            if hashlib.sha256(body).hexdigest() != oid:
                raise HubError(400, "LFS object does not match its oid")
            with hub.lock:
                hub.lfs[oid] = body
            return 200, {}, {}
        match = re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if match and method == "POST":
            return self._lfs_batch(match.group(1), json.loads(body), user)
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if match and method in ("GET", "HEAD"):
            return self._resolve(match.group(1), unquote(match.group(2)), unquote(match.group(3)))
        raise HubError(404, f"no route for {method} {path}")

    # -- endpoints --------------------------------------------------------------------------
    def _repo(self, repo_id: str) -> Repo:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _commit_at(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(unquote(revision))
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _require(self, user: str | None) -> str:
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def _model_api(self, method, repo_id, rest, query, body, user):
        hub = self.state
        with hub.lock:
            repo = self._repo(repo_id)
            kind = rest[0] if rest else ""
            if method == "GET" and kind in ("", "revision"):
                commit = self._commit_at(repo, "/".join(rest[1:]) if rest else "main")
                return 200, self._model_info(repo, commit), {}
            if method == "GET" and kind == "tree":
                commit = self._commit_at(repo, rest[1])
                return 200, self._tree(commit, "/".join(rest[2:])), {}
            if method == "POST" and kind == "preupload":
                self._require(user)
                commit = self._commit_at(repo, rest[1]) if "create_pr" not in query else None
                files = json.loads(body)["files"]
                return 200, {"files": [self._upload_mode(f, commit) for f in files]}, {}
            if method == "POST" and kind == "commit":
                return self._commit(repo, unquote(rest[1]), query, body, self._require(user))
            if method == "GET" and kind == "discussions" and len(rest) == 1:
                return 200, self._discussions(repo, query), {}
        raise HubError(404, f"no route for {method} /api/models/{repo_id}/{'/'.join(rest)}")

    def _model_info(self, repo: Repo, commit: Commit) -> dict:
        return {
            "id": repo.repo_id, "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": commit.oid,
            "private": False, "disabled": False, "gated": False, "tags": repo.tags, "library_name": "transformers",
            "lastModified": "2024-01-01T00:00:00.000Z", "createdAt": "2024-01-01T00:00:00.000Z",
            "downloads": 0, "likes": 0, "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        }

    def _tree(self, commit: Commit, prefix: str) -> list[dict]:
        entries = []
        for path in sorted(commit.files):
            if prefix and not path.startswith(prefix.rstrip("/") + "/"):
                continue
            data = commit.files[path]
            entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_oid(data)}
            if is_lfs(path, data):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        return entries

    def _upload_mode(self, file: dict, commit: Commit | None) -> dict:
        sample = base64.b64decode(file["sample"])
        mode = "lfs" if is_lfs(file["path"], sample) or file["size"] > 10_000_000 else "regular"
        existing = commit.files.get(file["path"]) if commit else None
        oid = None
        if existing is not None:
            oid = hashlib.sha256(existing).hexdigest() if mode == "lfs" else git_blob_oid(existing)
        return {"path": file["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid}

    def _commit(self, repo: Repo, revision: str, query: dict, body: bytes, user: str):
        hub = self.state
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        create_pr = query.get("create_pr", ["0"])[0] in ("1", "true", "True")
        parent = header.get("parentCommit")
        head = self._commit_at(repo, revision)
        base = self._commit_at(repo, parent) if parent else head
        if parent and not create_pr and parent != head.oid:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(base.files)
        for item in lines:
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in hub.lfs:
                    raise HubError(422, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = hub.lfs[value["oid"]]
            elif item["key"] == "deletedFile":
                files.pop(value["path"], None)
            elif item["key"] == "deletedFolder":
                files = {p: d for p, d in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
        summary = header.get("summary", "")
        if create_pr:
            num = len(repo.discussions) + 1
            ref = f"refs/pr/{num}"
            oid = hub._commit(repo, base.oid, files, summary, ref)
            repo.discussions.append(Discussion(num, summary, header.get("description") or "", user, True, ref=ref))
            pr_url = f"{self.state.url}/{repo.repo_id}/discussions/{num}"
        else:
            oid = hub._commit(repo, base.oid, files, summary, revision)
            pr_url = None
        return 200, {"success": True, "commitOid": oid, "commitUrl": f"{hub.url}/{repo.repo_id}/commit/{oid}",
                     "pullRequestUrl": pr_url}, {}

    def _discussions(self, repo: Repo, query: dict) -> dict:
        kind = query.get("type", ["all"])[0]
        status = query.get("status", ["all"])[0]
        author = query.get("author", [None])[0]
        page = int(query.get("p", ["0"])[0])
        selected = [
            d for d in reversed(repo.discussions)
            if (kind == "all" or (kind == "pull_request") == d.is_pull_request)
            and (status == "all" or d.status == status)
            and (author is None or d.author == author)
        ]
        start = page * PAGE_SIZE
        return {
            "count": len(selected), "start": start, "numClosedDiscussions": 0,
            "discussions": [
                {"num": d.num, "title": d.title, "status": d.status, "isPullRequest": d.is_pull_request,
                 "createdAt": d.created_at, "author": {"name": d.author},
                 "repo": {"name": repo.repo_id, "type": "model"}, "pinned": False, "numComments": 1, "topReactions": []}
                for d in selected[start:start + PAGE_SIZE]
            ],
        }

    def _create_repo(self, payload: dict, user: str | None):
        self._require(user)
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        with self.state.lock:
            if repo_id in self.state.repos:
                raise HubError(409, "You already created this model repo")
            self.state.add_repo(repo_id, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                                tags=[])
        return 200, {"url": f"{self.state.url}/{repo_id}", "name": repo_id}, {}

    def _search(self, query: dict):
        hub = self.state
        search = query.get("search", [""])[0].lower()
        filters = set(query.get("filter", []))
        author = query.get("author", [None])[0]
        cursor = int(query.get("cursor", ["0"])[0])
        with hub.lock:
            found = [
                repo for repo_id, repo in sorted(hub.repos.items())
                if search in repo_id.lower() and filters <= set(repo.tags)
                and (author is None or repo_id.split("/")[0] == author)
            ]
            page = found[cursor:cursor + PAGE_SIZE]
            items = [{"id": r.repo_id, "modelId": r.repo_id, "sha": r.refs["main"], "tags": r.tags, "private": False,
                      "lastModified": "2024-01-01T00:00:00.000Z", "downloads": 0, "likes": 0} for r in page]
        headers = {}
        if cursor + PAGE_SIZE < len(found):
            rest = {k: v for k, v in query.items() if k != "cursor"}
            params = "&".join(f"{k}={quote(v)}" for k, values in rest.items() for v in values)
            headers["Link"] = f'<{hub.url}/api/models?{params}&cursor={cursor + PAGE_SIZE}>; rel="next"'
        return 200, items, headers

    def _lfs_batch(self, repo_id: str, payload: dict, user: str | None):
        self._require(user)
        with self.state.lock:
            self._repo(repo_id)
            objects = []
            for obj in payload["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"]}
                if obj["oid"] not in self.state.lfs:
                    entry["authenticated"] = True
                    entry["actions"] = {"upload": {"href": f"{self.state.url}/lfs-upload/{obj['oid']}"}}
                objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}

    def _resolve(self, repo_id: str, revision: str, path: str):
        with self.state.lock:
            repo = self._repo(repo_id)
            commit = self._commit_at(repo, revision)
            if path not in commit.files:
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
            data = commit.files[path]
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_oid(data)}"'}
        if is_lfs(path, data):
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
            headers["X-Linked-Size"] = str(len(data))
        return 200, data, headers

    # -- plumbing ---------------------------------------------------------------------------
    def _user(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return self.state.tokens.get(auth[7:]) if auth.startswith("Bearer ") else None

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", ""):
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                chunk = self.rfile.read(size) if size else b""
                self.rfile.readline()
                if not size:
                    return b"".join(chunks)
                chunks.append(chunk)
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _send(self, status: int, payload, headers: dict, head: bool = False) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        if not isinstance(payload, bytes) and "Content-Type" not in headers:
            self.send_header("Content-Type", "application/json")
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)


class _Injected(Exception):
    def __init__(self, fault: Fault, headers: dict):
        super().__init__(fault.action)
        self.fault, self.headers = fault, headers
