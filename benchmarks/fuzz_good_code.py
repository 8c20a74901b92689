"""Good code stays good (CONTRACT G3), over every modeling file of the installed transformers.

Each `transformers/models/*/modeling_*.py` (with its configuration file, imports made
absolute as in a remote-code repo) goes through the rewrite. A file that already uses the
attention interface must come out unchanged and unrefused; the others are reported as
legacy, and no file may crash the tool. Prints the counts, then every harmed good file
and every crash, and exits 1 if there is either.

    python benchmarks/fuzz_good_code.py [--limit N] [--only NAME ...] [--group good|legacy] [--smallest-first] [--jsonl FILE] [-v]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fuzz.good_code import INTERFACE, installed_modeling_files, rewrite_installed_file  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="only the first N files")
    parser.add_argument("--only", nargs="*", help="model folder names, e.g. llama gpt2")
    parser.add_argument("--jsonl", type=Path, help="write one line per file with its outcome")
    parser.add_argument("--group", choices=["good", "legacy"], help="only files on the interface, or only the others")
    parser.add_argument("--smallest-first", action="store_true", help="order by size, to cover most files early")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every file as it is done")
    args = parser.parse_args()

    paths = installed_modeling_files()
    if args.only:
        paths = [p for p in paths if p.parent.name in args.only]
    if args.group:
        paths = [p for p in paths if (INTERFACE in p.read_text()) == (args.group == "good")]
    if args.smallest_first:
        paths.sort(key=lambda p: p.stat().st_size)
    paths = paths[: args.limit]
    counts: collections.Counter = collections.Counter()
    blamed: collections.Counter = collections.Counter()
    harmed, crashed = [], []
    lines = 0
    started = time.monotonic()
    sink = args.jsonl.open("w") if args.jsonl else None
    for index, path in enumerate(paths, 1):
        lines += path.read_text().count("\n")
        t0 = time.monotonic()
        outcome = rewrite_installed_file(path)
        group = "good" if outcome.on_interface else "legacy"
        counts[(group, outcome.kind)] += 1
        if outcome.good_code_harmed and outcome.kind != "crashed":
            harmed.append(outcome)
            blamed.update(outcome.transforms)
        if outcome.kind == "crashed":
            crashed.append(outcome)
        if sink:
            record = {"file": f"{path.parent.name}/{path.name}", "group": group, "kind": outcome.kind,
                      "transforms": outcome.transforms, "seconds": round(time.monotonic() - t0, 2),
                      "detail": outcome.detail[:4000]}
            sink.write(json.dumps(record) + "\n")
            sink.flush()
        if args.verbose:
            print(f"[{index}/{len(paths)}] {group:6} {outcome.kind:9} {path.parent.name}/{path.name} "
                  f"{' '.join(outcome.transforms)}", flush=True)
    elapsed = time.monotonic() - started

    good = sum(n for (g, _), n in counts.items() if g == "good")
    legacy = sum(n for (g, _), n in counts.items() if g == "legacy")
    print(f"{len(paths)} modeling files, {lines} lines, {elapsed:.0f} s ({1000 * elapsed / max(lines, 1):.1f} s per 1000 lines)")
    print(f"on the attention interface: {good}")
    for kind in ("unchanged", "changed", "refused", "crashed"):
        print(f"  {kind:10} {counts[('good', kind)]}")
    print(f"legacy (not on the interface): {legacy}")
    for kind in ("unchanged", "changed", "refused", "crashed"):
        print(f"  {kind:10} {counts[('legacy', kind)]}")
    if blamed:
        print("transforms that changed or refused good code (files): "
              + ", ".join(f"{name} {n}" for name, n in blamed.most_common()))
    for outcome in harmed:
        print(f"\nHARMED {outcome.path.parent.name}/{outcome.path.name} ({outcome.kind}): {', '.join(outcome.transforms)}")
        print(outcome.detail[:2000])
    for outcome in crashed:
        print(f"\nCRASHED {outcome.path.parent.name}/{outcome.path.name}\n{outcome.detail}")
    return 1 if harmed or crashed else 0


if __name__ == "__main__":
    sys.exit(main())
