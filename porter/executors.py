"""Where the repos of a batch are ported: local processes (the default) or a Ray cluster.

Each repo is ported in a process of its own, with a time limit, so that one repo's crash,
hang or memory use cannot touch another's. Both executors call `on_start(spec)` before a
job and `on_done(spec, outcome)` after it, from one thread at a time.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable

from porter.errors import BadInput
from porter.jobs import PRELOAD, JobSpec, failed, run_job, spec_json

OnStart = Callable[[JobSpec], None]
OnDone = Callable[[JobSpec, dict], None]


class LocalExecutor:
    """`jobs` repos at a time, each in a process forked from a server that has the porter imported.

    Forking from a preloaded server makes a process per repo cheap (importing transformers
    takes seconds; a fork takes milliseconds).
    """

    def __init__(self, jobs: int = 1):
        import multiprocessing

        self.jobs = max(1, jobs)
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(PRELOAD)
        self._lock = threading.Lock()

    def run(self, specs: Iterable[JobSpec], on_start: OnStart, on_done: OnDone) -> None:
        pending: queue.Queue = queue.Queue()
        for spec in specs:
            pending.put(spec)

        def slot() -> None:
            while True:
                try:
                    spec = pending.get_nowait()
                except queue.Empty:
                    return
                with self._lock:
                    on_start(spec)
                outcome = self._run_one(spec)
                with self._lock:
                    on_done(spec, outcome)

        threads = [threading.Thread(target=slot, daemon=True) for _ in range(self.jobs)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _run_one(self, spec: JobSpec) -> dict:
        receiver, sender = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_child, args=(spec, sender), name=f"port {spec.repo}")
        process.start()
        sender.close()
        try:
            if receiver.poll(spec.time_limit):
                try:
                    return receiver.recv()
                except EOFError:
                    pass
            else:
                _kill_group(process.pid)
                return failed(spec, f"time limit of {spec.time_limit:g}s exceeded", spec.time_limit)
        finally:
            process.join(timeout=10)
            if process.is_alive():
                _kill_group(process.pid)
                process.join()
            receiver.close()
        return failed(spec, f"the port process died (exit code {process.exitcode})")


def _child(spec: JobSpec, sender) -> None:
    os.setpgrp()  # the time limit kills the port and everything it started
    parent = os.getppid()
    _die_with_parent()
    if parent == 1 or os.getppid() != parent:  # the batch died before the line above took effect
        os._exit(1)
    outcome = run_job(spec)
    sender.send(outcome)
    sender.close()


def _die_with_parent() -> None:
    """A batch killed outright takes its ports with it (Linux), so none pushes behind a resumed batch."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _kill_group(pid: int) -> None:
    for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            kill()
        except (ProcessLookupError, PermissionError):
            pass


# -- Ray --------------------------------------------------------------------------------------
# Settings a Ray worker needs to reach the same Hub; the token is deliberately not among them:
# workers use their own HF_TOKEN or saved login, so it never travels in a job description.
FORWARDED_ENV = ("HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_XET", "HF_HUB_CACHE", "HF_HOME",
                 "PORT_MODEL_CACHE", "PORT_MODEL_HUB_BACKOFF", "PYTHONPATH")


def run_isolated(spec: JobSpec) -> dict:
    """The job in a fresh Python process with the spec's time limit (what a Ray task runs)."""
    command = [sys.executable, "-m", "porter.jobs", spec_json(spec)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               start_new_session=True)
    try:
        stdout, _ = process.communicate(timeout=spec.time_limit)
    except subprocess.TimeoutExpired:
        _kill_group(process.pid)
        process.communicate()
        return failed(spec, f"time limit of {spec.time_limit:g}s exceeded", spec.time_limit)
    lines = stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return failed(spec, f"the port process died (exit code {process.returncode})")


class RayExecutor:
    """Each repo is one Ray task; a task asks for a GPU for verification when the cluster has any."""

    def __init__(self, jobs: int = 1, address: str | None = None, verify: bool = True):
        try:
            import ray
        except ImportError:
            raise BadInput("--executor ray needs Ray: pip install 'port-model[ray]'") from None
        self.ray = ray
        env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
        ray.init(address=address or os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True,
                 runtime_env={"env_vars": env}, include_dashboard=False, log_to_driver=False)
        self.gpus = ray.cluster_resources().get("GPU", 0) if verify else 0
        self.jobs = max(1, jobs)
        self.task = ray.remote(num_cpus=1, num_gpus=1 if self.gpus else 0, max_retries=0)(run_isolated)

    def run(self, specs: Iterable[JobSpec], on_start: OnStart, on_done: OnDone) -> None:
        waiting = list(specs)[::-1]
        running: dict = {}
        while waiting or running:
            while waiting and len(running) < self.jobs:
                spec = waiting.pop()
                on_start(spec)
                running[self.task.remote(spec)] = spec
            done, _ = self.ray.wait(list(running), num_returns=1)
            for ref in done:
                spec = running.pop(ref)
                try:
                    outcome = self.ray.get(ref)
                except Exception as exc:  # the task itself failed: a node was lost, a worker died
                    outcome = failed(spec, f"Ray task failed: {type(exc).__name__}")
                on_done(spec, outcome)

    def shutdown(self) -> None:
        self.ray.shutdown()


def make_executor(kind: str, jobs: int, address: str | None = None, verify: bool = True):
    if kind == "ray":
        return RayExecutor(jobs, address, verify)
    return LocalExecutor(jobs)
