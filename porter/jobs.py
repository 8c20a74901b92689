"""One repo of a batch: fetch it from the Hub, port it, open its pull request.

`run_job` is what every executor runs, in a process of its own per repo. It never raises: the
outcome it returns says what was done and, when something was not, why. `python -m
porter.jobs SPEC_JSON` runs one job and prints its outcome as the last line of stdout.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Imported by the batch's fork server before it forks a process per repo.
PRELOAD = ["porter.fork_preload"]


@dataclass
class JobSpec:
    repo: str  # as listed: org/name or org/name@revision
    out: str
    verify: bool = True
    push: bool = False
    force: bool = False
    device: str = "auto"
    reference_transformers: str | None = None
    reference: str = "own"
    time_limit: float = 3600.0

    @classmethod
    def from_dict(cls, data: dict) -> JobSpec:
        return cls(**data)


def empty_outcome(spec: JobSpec) -> dict:
    return {"repo": spec.repo, "sha": None, "status": None, "ported": False, "verified": False, "pushed": False,
            "pr_url": None, "failed": False, "why": "", "seconds": 0.0}


def failed(spec: JobSpec, why: str, seconds: float = 0.0) -> dict:
    return {**empty_outcome(spec), "failed": True, "why": why, "seconds": round(seconds, 2)}


def run_job(spec: JobSpec) -> dict:
    from porter.errors import PortError
    from porter.hub import parse_repo_id, push
    from porter.pipeline import PortOptions, run_port

    started = time.monotonic()
    outcome = empty_outcome(spec)
    try:
        if parse_repo_id(spec.repo) is None:
            raise ValueError(f"not a Hub repo id: {spec.repo!r}")
        options = PortOptions(out=Path(spec.out), verify=spec.verify, device=spec.device, overwrite=True,
                              reference_transformers=spec.reference_transformers, reference=spec.reference)
        result = run_port(spec.repo, options)
        report = result.report
        outcome.update(sha=report.hub.get("sha"), status=report.status, ported=True, verified=report.verified)
        if report.failed or report.status == "partial":
            names = ", ".join(f"{c.item} {c.name}" for c in report.failed) or "partial port"
            outcome.update(failed=True, why=f"verification failed: {names}")
        if spec.push and (report.verified or spec.force):
            pull_request = push(result, force=spec.force)
            outcome.update(pushed=True, pr_url=pull_request.url)
        elif spec.push and not outcome["failed"]:
            outcome.update(failed=True, why="not pushed: the port was not verified (--force pushes it marked unverified)")
    except PortError as exc:
        outcome.update(failed=True, why=exc.render().replace("\n", " "))
    except Exception as exc:  # one repo's failure never stops the batch
        outcome.update(failed=True, why=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    outcome["seconds"] = round(time.monotonic() - started, 2)
    return outcome


def main(argv: list[str]) -> None:
    outcome = run_job(JobSpec.from_dict(json.loads(argv[0])))
    print(json.dumps(outcome), flush=True)


def spec_json(spec: JobSpec) -> str:
    return json.dumps(asdict(spec))


if __name__ == "__main__":
    main(sys.argv[1:])
