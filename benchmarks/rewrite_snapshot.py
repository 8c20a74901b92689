"""Record what the rewrite produces for every corpus repo, or compare it with a record.

A change to the rewrite's mechanics (how transforms are run, skipped or share work) must
not change its output. Record before the change, compare after it:

    python benchmarks/rewrite_snapshot.py save /tmp/rewrite-before
    python benchmarks/rewrite_snapshot.py compare /tmp/rewrite-before

Recorded per repo: every rewritten file, every change with its line, the diagnostics,
the weight ops and the facts. The repos are those of ``bench_rewrite.py`` (the test
corpus built into the cache, and the team sample); pass folders, or names of repos in
``$PORT_MODEL_CACHE/repos``, to use others, or ``--all-cached`` for every repo there (the
wide corpus too: many more shapes). Exit code 1 when anything differs.

    python benchmarks/rewrite_snapshot.py save /tmp/rewrite-wide --all-cached
    python benchmarks/rewrite_snapshot.py compare /tmp/rewrite-wide falcon_4_44_2 gpt2_4_44_2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_rewrite import corpus_repos  # noqa: E402

from porter.environments import default_cache_dir  # noqa: E402
from porter.pipeline import load, rewrite_code  # noqa: E402


def _plain(value: object) -> object:
    """JSON for what json cannot write: a set sorted (its repr's order changes from one
    process to the next with string hashing), anything else as its repr."""
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return repr(value)


def snapshot(repo_path: Path) -> dict:
    result = rewrite_code(load(repo_path), allow_partial=True)
    return {
        "files": result.files,
        "changes": [c.as_dict() for c in result.changes],
        "diagnostics": [d.as_dict() for d in result.diagnostics],
        "weight_ops": json.loads(json.dumps(result.weight_ops, default=_plain)),
        "facts": json.loads(json.dumps(result.facts, default=_plain, sort_keys=True)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("save", "compare"))
    parser.add_argument("record", type=Path, help="folder of the record")
    parser.add_argument("repos", nargs="*", type=Path, help="repo folders or cached repo names (default: the corpus and the sample)")
    parser.add_argument("--all-cached", action="store_true", help="every repo in the cache's repos folder")
    args = parser.parse_args()
    cached = default_cache_dir() / "repos"
    repos = [path if path.is_dir() else cached / path for path in args.repos]
    if args.all_cached:
        repos += sorted(path.parent for path in cached.glob("*/config.json"))
    repos = repos or corpus_repos()
    args.record.mkdir(parents=True, exist_ok=True)
    different = []
    for path in repos:
        record = args.record / f"{path.name}.json"
        now = snapshot(path)
        if args.action == "save":
            record.write_text(json.dumps(now, indent=1, sort_keys=True))
            print(f"saved    {path.name}")
            continue
        before = json.loads(record.read_text())
        now = json.loads(json.dumps(now, sort_keys=True))
        keys = [key for key in before if before[key] != now.get(key)]
        print(f"{'same' if not keys else 'DIFFERS':8s} {path.name} {', '.join(keys)}")
        if keys:
            different.append(path.name)
    if different:
        print(f"\n{len(different)} repo(s) differ: {', '.join(different)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
