"""Run `runner.py` in a child process: a time limit, no Hub token, offline.

Legacy code and the code derived from it are strangers' code; they only ever run here,
never in the port-model process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

RUNNER = Path(__file__).with_name("runner.py")
SECRET_PREFIXES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN")
RUNNING: set[subprocess.Popen] = set()  # children of run_model, stopped together on interruption
_STOPPING = threading.Event()
_LOCK = threading.Lock()


@contextmanager
def stopped_together():
    """Within it, `stop_children` kills every running model child and any started later
    (other threads may be waiting on them, or about to start one)."""
    try:
        yield
    finally:
        _STOPPING.clear()


def stop_children() -> None:
    with _LOCK:
        _STOPPING.set()
        for process in RUNNING:
            process.kill()


@dataclass
class ChildResult:
    ok: bool
    result: dict
    outputs: Path | None
    error: str | None


def child_environment(hf_home: Path, threads: int | None = None) -> dict[str, str]:
    """The parent's environment without secrets, offline, with its own module cache (and
    `threads` compute threads, where given)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SECRET_PREFIXES)}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HOME": str(hf_home),
            "HF_MODULES_CACHE": str(hf_home / "modules"),
            "PYTHONDONTWRITEBYTECODE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "TRANSFORMERS_VERBOSITY": "error",
            "PYTHONWARNINGS": "ignore",
        }
    )
    env.pop("PYTHONPATH", None)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run_model(
    python: Path | str, repo: Path, spec: dict, work_dir: Path, timeout: float, runner: Path = RUNNER,
    threads: int | None = None,
) -> ChildResult:
    """Run `repo` with `python` according to `spec` (by `runner`, a standalone script); outputs land in `work_dir`.
    `threads` limits the child's torch threads (when another child runs beside it)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    # Old releases turn the folder name into a module name: give them one that is safe.
    staging = Path(tempfile.mkdtemp(prefix="pm-stage-", dir=work_dir))
    safe_repo = staging / "model_repo"
    safe_repo.symlink_to(repo.resolve(), target_is_directory=True)
    spec = {**spec, "repo": str(safe_repo), "out_dir": str(work_dir)}
    spec_path = work_dir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    log_path = work_dir / "child.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(python), str(runner), str(spec_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_environment(work_dir / "hf_home", threads),
            cwd=work_dir,
            stdin=subprocess.DEVNULL,
        )
        with _LOCK:
            RUNNING.add(process)
            if _STOPPING.is_set():
                process.kill()
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return ChildResult(False, {}, None, f"the model run exceeded its time limit of {timeout:.0f}s")
        finally:  # also on Ctrl-C and SIGTERM, which the CLI turns into KeyboardInterrupt
            process.kill()
            process.wait()
            with _LOCK:
                RUNNING.discard(process)
    result_path = work_dir / "result.json"
    if not result_path.exists():
        tail = log_path.read_text(errors="replace")[-2000:]
        return ChildResult(False, {}, None, f"the model process died (exit {returncode}): {tail}")
    result = json.loads(result_path.read_text())
    if not result.get("ok"):
        return ChildResult(False, result, None, _readable_error(result))
    return ChildResult(True, result, work_dir / "outputs.safetensors", None)


def _readable_error(result: dict) -> str:
    """The error with the innermost place in the model's own code file where it arose."""
    error = result.get("error", "unknown error")
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', result.get("traceback", ""))
    own = [f for f in frames if "/transformers_modules/" in f[0] or "model_repo" in f[0]]
    if own:
        path, line, function = own[-1]
        return f"{Path(path).name}:{line} in {function}: {error}"
    return error


def current_python() -> str:
    return sys.executable
