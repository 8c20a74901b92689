"""Fuzz the tool with damaged legacy repos and print how each case ended.

Sources: `samples/tiny_legacy_lm` and every corpus repo already built under
`$PORT_MODEL_CACHE/repos` (tests/corpus.py makes them from transformers 4.30.2, 4.36.2
and 4.44.2). Each case damages 1 to 3 code edits deep (statements removed, names renamed,
statements swapped, syntax broken; see tests/fuzz/damage.py), ports the result without
verification, and classifies it: refused (PortError, exit 2), ported or unchanged
(output compiles, report honest), or BROKEN (a crash, output that does not compile, a
report that lies). Cases keep going after a BROKEN one; each is printed with its edits.
Exits 1 if any case was BROKEN.

With `--counts FILE` the counts so far are rewritten to FILE (JSON) after every case, so a
long run that is stopped keeps them. A case costs the rewrite of a whole real repo (seconds
of libcst work; there is no verification to skip), so throughput comes from cores:
`--workers N` runs N processes on seeds of their own and merges their counts.

    python benchmarks/fuzz_damage.py [--cases 10000] [--minutes M] [--seed S] [--only NAME ...] [--counts FILE] [--workers N]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

from tests.fuzz.damage import Broken, build_case, damaged_repo, port_damaged  # noqa: E402


def sources(only: list[str] | None) -> list[Path]:
    cache = Path(os.environ.get("PORT_MODEL_CACHE", ROOT / ".port-model-cache"))
    found = [ROOT / "samples" / "tiny_legacy_lm"]
    found += sorted(p.parent for p in (cache / "repos").glob("*/.complete"))
    if only:
        found = [p for p in found if p.name in only]
    return found


class Stop(Exception):
    """The time limit was reached."""


def write_counts(path: Path, args, repos, counts, by_edit, broken, elapsed: float, finished: bool = False) -> None:
    """The counts so far, replaced whole (written beside, then renamed) so a reader never sees half a file."""
    total = sum(counts.values())
    record = {
        "seed": args.seed, "cases_asked": args.cases, "cases_run": total, "finished": finished,
        "seconds": round(elapsed), "cases_per_second": round(total / max(elapsed, 1e-9), 3),
        "sources": [p.name for p in repos], "outcomes": dict(counts),
        "edits": {f"{kind} {outcome}": n for (kind, outcome), n in sorted(by_edit.items())},
        "broken": broken,
    }
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(record, indent=1) + "\n")
    partial.replace(path)


def run_workers(args) -> int:
    """Run `args.workers` copies of this script on seeds seed*1000+k, merging their counts."""
    if args.counts:  # beside the merged file, so that the workers' counts survive too
        folder = args.counts.with_name(args.counts.stem + "-workers")
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="fuzz-damage-"))
    share = -(-args.cases // args.workers)
    procs, files = [], []
    for k in range(args.workers):
        files.append(folder / f"worker-{k}.json")
        command = [sys.executable, __file__, "--cases", str(share), "--seed", str(args.seed * 1000 + k),
                   "--counts", str(files[-1])]
        command += ["--minutes", str(args.minutes)] if args.minutes else []
        command += ["--only", *args.only] if args.only else []
        procs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
    print(f"{args.workers} workers, {share} cases each; their counts in {folder}", flush=True)
    while True:
        done = all(p.poll() is not None for p in procs)
        merged = merge_counts([json.loads(f.read_text()) for f in files if f.exists()])
        merged.update(workers=args.workers, finished=done)
        if args.counts:
            partial = args.counts.with_name(args.counts.name + ".tmp")
            partial.write_text(json.dumps(merged, indent=1) + "\n")
            partial.replace(args.counts)
        print(f"{merged['cases_run']} cases: {merged['outcomes']}", flush=True)
        if done:
            break
        time.sleep(30)
    for case in merged["broken"]:
        print(f"BROKEN {case}")
    return 1 if merged["broken"] or any(p.returncode not in (0, 1) for p in procs) else 0


def merge_counts(records: list[dict]) -> dict:
    outcomes: collections.Counter = collections.Counter()
    edits: collections.Counter = collections.Counter()
    for record in records:
        outcomes.update(record["outcomes"])
        edits.update(record["edits"])
    seconds = max((r["seconds"] for r in records), default=0)
    total = sum(outcomes.values())
    return {"seeds": [r["seed"] for r in records], "cases_run": total, "seconds": seconds,
            "cases_per_second": round(total / max(seconds, 1e-9), 3), "outcomes": dict(outcomes),
            "edits": dict(edits), "broken": [b for r in records for b in r["broken"]]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, help="stop after this long, whatever the count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="source repo folder names")
    parser.add_argument("--counts", type=Path, help="rewrite the counts so far to this JSON file as the run goes")
    parser.add_argument("--workers", type=int, default=1, help="processes, each with its own seed and share of the cases")
    args = parser.parse_args()
    if args.workers > 1:
        return run_workers(args)

    repos = sources(args.only)
    print(f"sources: {', '.join(p.name for p in repos)}", flush=True)
    counts: collections.Counter = collections.Counter()
    by_edit: collections.Counter = collections.Counter()
    broken: list[str] = []
    started = time.monotonic()
    deadline = started + 60 * args.minutes if args.minutes else None

    @seed(args.seed)
    @settings(max_examples=args.cases, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(damaged_repo(repos))
    def case(drawn):
        if deadline and time.monotonic() > deadline:
            raise Stop
        source, files, edits = drawn
        with tempfile.TemporaryDirectory() as tmp:
            repo = build_case(source, files, Path(tmp))
            try:
                outcome = port_damaged(repo, Path(tmp) / "out")
            except Broken as exc:
                outcome = "BROKEN"
                broken.append(f"{source.name}: {'; '.join(map(str, edits))}\n{exc}")
                print(f"BROKEN {broken[-1]}", flush=True)
        counts[outcome] += 1
        for edit in edits:
            by_edit[(edit.kind, outcome)] += 1
        total = sum(counts.values())
        elapsed = time.monotonic() - started
        if args.counts:  # every case: a case costs seconds, the file a millisecond
            write_counts(args.counts, args, repos, counts, by_edit, broken, elapsed)
        if total % 10 == 0:
            print(f"{total} cases, {elapsed:.0f} s: {dict(counts)}", flush=True)

    try:
        case()
    except Stop:
        pass
    elapsed = time.monotonic() - started
    total = sum(counts.values())
    if args.counts:
        write_counts(args.counts, args, repos, counts, by_edit, broken, elapsed, finished=True)
    print(f"\n{total} cases in {elapsed:.0f} s ({total / max(elapsed, 1e-9):.2f} cases/s)")
    for outcome in ("refused", "ported", "unchanged", "BROKEN"):
        print(f"  {outcome:10} {counts[outcome]}")
    print("edits by kind and outcome:")
    for kind in ("remove", "rename", "swap", "syntax"):
        row = {o: by_edit[(kind, o)] for o in ("refused", "ported", "unchanged", "BROKEN")}
        print(f"  {kind:7} {row}")
    if total < args.cases:
        print(f"stopped after {total} of {args.cases} cases (time limit)")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
