"""Port and verify legacy architectures of the wide corpus and print the outcome of each.

    python benchmarks/sweep_architectures.py                 # every entry
    python benchmarks/sweep_architectures.py falcon bloom     # entries whose id contains a word
    python benchmarks/sweep_architectures.py --json out.json  # also write the outcomes

Repos and reference environments are built once under `PORT_MODEL_CACHE` (default: the
user cache). An outcome is `ported` (every check passed), `failed` (written, some check
failed: the items and their reasons are listed), `refused` (exit 2: the diagnostics), or
`crashed` (a traceback: always a bug in port-model).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import porter  # noqa: E402
from porter.environments import default_cache_dir  # noqa: E402
from porter.errors import PortError  # noqa: E402
from porter.report import PASS, SKIP  # noqa: E402
from tests.wide_corpus import WIDE_CORPUS  # noqa: E402


def sweep_one(entry, cache_dir: Path, work: Path) -> dict:
    started = time.perf_counter()
    outcome = {"id": entry.id}
    try:
        repo = entry.build(cache_dir)
    except Exception as error:  # the repo itself could not be made: not port-model's doing
        return {**outcome, "outcome": "unbuilt", "detail": f"{type(error).__name__}: {error}"[:400]}
    try:
        result = porter.port(repo, work / entry.id)
    except PortError as error:
        return {**outcome, "outcome": "refused", "detail": error.render()[:2000], "seconds": time.perf_counter() - started}
    except Exception:
        return {**outcome, "outcome": "crashed", "detail": traceback.format_exc()[-3000:]}
    failing = [c for c in result.checks if c.status not in (PASS, SKIP)]
    return {
        **outcome,
        "outcome": "failed" if failing else "ported",
        "failing": [{"item": c.item, "name": c.name, "detail": c.detail[:300]} for c in failing],
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("words", nargs="*", help="only entries whose id contains one of these")
    parser.add_argument("--json", type=Path, help="write the outcomes here")
    args = parser.parse_args()
    entries = [e for e in WIDE_CORPUS if not args.words or any(w in e.id for w in args.words)]
    cache_dir = default_cache_dir()
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="sweep-") as work:
        for entry in entries:
            outcome = sweep_one(entry, cache_dir, Path(work))
            outcomes.append(outcome)
            print(f"{outcome['id']:<28} {outcome['outcome']:<8} {outcome.get('seconds', '')}", flush=True)
            for failure in outcome.get("failing", []):
                print(f"    {failure['item']} {failure['name']}: {failure['detail']}", flush=True)
            if outcome["outcome"] in ("refused", "crashed", "unbuilt"):
                print("    " + outcome["detail"].replace("\n", "\n    "), flush=True)
    counts = {k: sum(o["outcome"] == k for o in outcomes) for k in ("ported", "failed", "refused", "crashed", "unbuilt")}
    print("counts:", ", ".join(f"{k} {v}" for k, v in counts.items()), f"of {len(outcomes)}")
    if args.json:
        args.json.write_text(json.dumps(outcomes, indent=2) + "\n")
    return 0 if counts["crashed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
