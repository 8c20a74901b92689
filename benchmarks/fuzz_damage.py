"""Fuzz the tool with damaged legacy repos and print how each case ended.

Sources: `samples/tiny_legacy_lm` and every corpus repo already built under
`$PORT_MODEL_CACHE/repos` (tests/corpus.py makes them from transformers 4.30.2, 4.36.2
and 4.44.2). Each case damages 1 to 3 code edits deep (statements removed, names renamed,
statements swapped, syntax broken; see tests/fuzz/damage.py), ports the result without
verification, and classifies it: refused (PortError, exit 2), ported or unchanged
(output compiles, report honest), or BROKEN (a crash, output that does not compile, a
report that lies). Cases keep going after a BROKEN one; each is printed with its edits.
Exits 1 if any case was BROKEN.

The cases come in batches of `BATCH`, batch b drawn by hypothesis from its own seed
(`--seed` and b), so case n is the same case whatever `--cases` or `--workers` is, and a
run can be stopped and resumed. With `--counts FILE` every finished batch is kept in
`FILE`'s batch folder (`damage.json` -> `damage-batches/`), the merged counts are rewritten
to FILE as the run goes, and running the same command again runs only the batches not
finished yet (a batch stopped half way is run again whole). A case costs the rewrite of a
whole real repo (seconds of libcst work; there is no verification to skip), so throughput
comes from cores: `--workers N` runs N processes, each on its own share of the batches.

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

BATCH = 50
OUTCOMES = ("refused", "ported", "unchanged", "BROKEN")


def sources(only: list[str] | None) -> list[Path]:
    cache = Path(os.environ.get("PORT_MODEL_CACHE", ROOT / ".port-model-cache"))
    found = [ROOT / "samples" / "tiny_legacy_lm"]
    found += sorted(p.parent for p in (cache / "repos").glob("*/.complete"))
    if only:
        found = [p for p in found if p.name in only]
    return found


class Stop(Exception):
    """The time limit was reached."""


def write_json(path: Path, record: dict) -> None:
    """Replace `path` whole (written beside, then renamed), so a reader never sees half a file."""
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(record, indent=1) + "\n")
    partial.replace(path)


def batch_file(folder: Path, index: int) -> Path:
    return folder / f"batch-{index:05d}.json"


def run_batch(index: int, args, repos: list[Path], folder: Path, deadline: float | None) -> dict:
    """Run batch `index` (its own hypothesis seed); keep it in `folder` once it is whole."""
    counts: collections.Counter = collections.Counter()
    by_edit: collections.Counter = collections.Counter()
    broken: list[str] = []
    started = time.monotonic()

    @seed(args.seed * 100_003 + index)
    @settings(max_examples=BATCH, deadline=None, database=None, phases=[Phase.generate],
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
                broken.append(f"batch {index}, {source.name}: {'; '.join(map(str, edits))}\n{exc}")
                print(f"BROKEN {broken[-1]}", flush=True)
        counts[outcome] += 1
        for edit in edits:
            by_edit[f"{edit.kind} {outcome}"] += 1

    case()  # Stop propagates: a batch cut short is not kept
    record = {"batch": index, "seed": args.seed, "sources": [p.name for p in repos],
              "seconds": round(time.monotonic() - started, 1), "outcomes": dict(counts),
              "edits": dict(by_edit), "broken": broken}
    write_json(batch_file(folder, index), record)
    return record


def finished_batches(folder: Path, args, repos: list[Path]) -> dict[int, dict]:
    """The batches of this seed already kept in `folder`; a folder of another run is refused."""
    done = {}
    for path in sorted(folder.glob("batch-*.json")):
        record = json.loads(path.read_text())
        if record["seed"] != args.seed or record["sources"] != [p.name for p in repos]:
            raise SystemExit(f"{path} was run with another --seed or other sources; give another --counts file")
        done[record["batch"]] = record
    return done


def merge(records: list[dict], batches_asked: int, seconds: float) -> dict:
    outcomes: collections.Counter = collections.Counter()
    edits: collections.Counter = collections.Counter()
    for record in records:
        outcomes.update(record["outcomes"])
        edits.update(record["edits"])
    total = sum(outcomes.values())
    return {"cases_asked": batches_asked * BATCH, "cases_run": total, "batches_run": len(records),
            "finished": len(records) >= batches_asked, "seconds_this_run": round(seconds),
            "batch_seconds": round(sum(r["seconds"] for r in records)),
            "outcomes": dict(outcomes), "edits": dict(sorted(edits.items())),
            "broken": [b for r in records for b in r["broken"]]}


def run_worker(args, repos: list[Path], folder: Path, pending: list[int]) -> None:
    deadline = time.monotonic() + 60 * args.minutes if args.minutes else None
    for index in pending:
        try:
            record = run_batch(index, args, repos, folder, deadline)
        except Stop:
            return
        print(f"batch {index}: {record['outcomes']} in {record['seconds']} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help=f"rounded up to a whole batch of {BATCH}")
    parser.add_argument("--minutes", type=float, help="stop after this long, whatever the count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="source repo folder names")
    parser.add_argument("--counts", type=Path, help="keep the batches beside this JSON file and resume from them")
    parser.add_argument("--workers", type=int, default=1, help="processes, each with its own share of the batches")
    parser.add_argument("--batches", help=argparse.SUPPRESS)  # a worker's share and folder, given by the parent
    parser.add_argument("--batch-folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    repos = sources(args.only)
    if args.batch_folder:
        folder = args.batch_folder
    elif args.counts:
        folder = args.counts.with_name(args.counts.stem + "-batches")
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="fuzz-damage-"))
    if args.batches is not None:  # a worker started by the parent below
        run_worker(args, repos, folder, [int(b) for b in args.batches.split(",") if b])
        return 0

    asked = -(-args.cases // BATCH)
    done = finished_batches(folder, args, repos)
    pending = [b for b in range(asked) if b not in done]
    print(f"sources: {', '.join(p.name for p in repos)}")
    print(f"{asked} batches of {BATCH} cases, {len(done)} already finished in {folder}; "
          f"{len(pending)} to run on {args.workers} worker(s)", flush=True)
    command = [sys.executable, __file__, "--seed", str(args.seed), "--batch-folder", str(folder)]
    command += ["--minutes", str(args.minutes)] if args.minutes else []
    command += ["--only", *args.only] if args.only else []
    procs = [subprocess.Popen([*command, "--batches", ",".join(map(str, pending[k::args.workers]))])
             for k in range(args.workers) if pending[k::args.workers]]
    started = time.monotonic()
    while True:
        running = any(p.poll() is None for p in procs)
        records = [r for b, r in finished_batches(folder, args, repos).items() if b < asked]
        merged = merge(records, asked, time.monotonic() - started)
        if args.counts:
            write_json(args.counts, {"seed": args.seed, "sources": [p.name for p in repos], **merged})
        print(f"{merged['cases_run']} of {merged['cases_asked']} cases: {merged['outcomes']}", flush=True)
        if not running:
            break
        time.sleep(30)

    print(f"\n{merged['cases_run']} cases in {merged['batches_run']} batches "
          f"({merged['batch_seconds']} s of batch time, {merged['seconds_this_run']} s of wall time this run)")
    for outcome in OUTCOMES:
        print(f"  {outcome:10} {merged['outcomes'].get(outcome, 0)}")
    print("edits by kind and outcome:")
    for kind in ("remove", "rename", "swap", "syntax"):
        print(f"  {kind:7} " + ", ".join(f"{o} {merged['edits'].get(f'{kind} {o}', 0)}" for o in OUTCOMES))
    for case in merged["broken"]:
        print(f"BROKEN {case}")
    if not merged["finished"]:
        print(f"stopped after {merged['batches_run']} of {asked} batches; the same command resumes")
    return 1 if merged["broken"] or any(p.returncode != 0 for p in procs) else 0


if __name__ == "__main__":
    sys.exit(main())
