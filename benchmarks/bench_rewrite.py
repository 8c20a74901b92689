"""Time of port-model's rewrite stage over the legacy corpus, against libcst's floor.

The corpus is the tests' one (tests/corpus.py: the in-library models of transformers
4.30.2, 4.36.2 and 4.44.2 made into remote-code repos, and the BERT repo with trained
weights; built into the cache on first use, as the tests do) plus the team sample
``samples/tiny_legacy_lm``. For every repo, in the same run:

  floor    ``libcst.parse_module(text).code`` for each of its Python files: a bare parse
           and code generation, the least any libcst tool pays
  rewrite  ``porter.rewrite_code(repo)``: parse, analysis, every registered transform,
           added imports, code generation (what a port pays before weights and checks)
  walk     one no-op ``libcst.CSTVisitor`` over each parsed file (parsing not timed): the
           least a pass that looks at every node in Python costs
  needed   a parse and two code generations of each file: what the rewrite cannot skip
           (the parse, the read-back check of each parsed file, the output's code)

The last two show how many passes over the tree the 2 x floor target leaves for the
analysis and all the transforms together.

One rewrite of the sample is run first and not timed, so that imports made on first use
(transformers modules the transforms consult) are not counted. Each measurement is
repeated ``--repeat`` times and the minimum kept, the least disturbed by other load on
the machine. Both wall time and the process's CPU time are printed; on a shared machine
CPU time is the steadier of the two.

    python benchmarks/bench_rewrite.py [--repeat 3] [REPO ...]

Target (performance issue): rewrite <= 2 x floor.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import libcst as cst

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from porter.environments import default_cache_dir  # noqa: E402
from porter.pipeline import load, rewrite_code  # noqa: E402
from porter.repo import parse_tree  # noqa: E402

SAMPLE = ROOT / "samples" / "tiny_legacy_lm"
TARGET = 2.0


def corpus_repos() -> list[Path]:
    from tests.corpus import CORPUS, minilm_bert

    cache = default_cache_dir()
    return [model.build(cache) for model in CORPUS] + [minilm_bert(cache), SAMPLE]


def timed(function, repeat: int) -> tuple[float, float]:
    """Minimum wall and minimum CPU seconds of ``function()`` over ``repeat`` runs."""
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repos", nargs="*", type=Path, help="repos to rewrite (default: the corpus and the sample)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    repos = args.repos or corpus_repos()

    rewrite_code(load(SAMPLE), allow_partial=True)  # warm-up: imports made on first use
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; min of {args.repeat} run(s)\n")
    print(f"{'repo':22s} {'lines':>6s} {'floor s':>8s} {'rewrite s':>10s} {'wall x':>7s} "
          f"{'cpu floor':>10s} {'cpu rewrite':>12s} {'cpu x':>6s} {'cpu walk':>9s}")
    totals = [0.0] * 6
    all_lines = 0
    for path in repos:
        repo = load(path)
        texts = [text for name, text in repo.code.items() if name.endswith(".py")]
        lines = sum(text.count("\n") for text in texts)

        def floor(texts=texts) -> None:
            for text in texts:
                _ = cst.parse_module(text).code

        trees = [cst.parse_module(text) for text in texts]

        def walk(trees=trees) -> None:
            for tree in trees:
                tree.visit(cst.CSTVisitor())

        def needed(texts=texts) -> None:
            for text in texts:
                tree = cst.parse_module(text)
                _ = tree.code, tree.code

        def rewrite(repo=repo) -> None:
            parse_tree.cache_clear()  # every run parses, as the floor does
            rewrite_code(repo, allow_partial=True)

        floor_wall, floor_cpu = timed(floor, args.repeat)
        rewrite_wall, rewrite_cpu = timed(rewrite, args.repeat)
        walk_cpu = timed(walk, args.repeat)[1]
        needed_cpu = timed(needed, args.repeat)[1]
        for i, value in enumerate((floor_wall, rewrite_wall, floor_cpu, rewrite_cpu, walk_cpu, needed_cpu)):
            totals[i] += value
        all_lines += lines
        print(f"{path.name:22s} {lines:6d} {floor_wall:8.2f} {rewrite_wall:10.2f} {rewrite_wall / floor_wall:6.1f}x "
              f"{floor_cpu:10.2f} {rewrite_cpu:12.2f} {rewrite_cpu / floor_cpu:5.1f}x {walk_cpu:9.2f}")
    floor_wall, rewrite_wall, floor_cpu, rewrite_cpu, walk_cpu, needed_cpu = totals
    print(f"{'all':22s} {all_lines:6d} {floor_wall:8.2f} {rewrite_wall:10.2f} {rewrite_wall / floor_wall:6.1f}x "
          f"{floor_cpu:10.2f} {rewrite_cpu:12.2f} {rewrite_cpu / floor_cpu:5.1f}x {walk_cpu:9.2f}")
    per_kline = rewrite_cpu / all_lines * 1000
    print(f"\nrewrite: {per_kline:.2f} CPU s per 1000 lines; floor {floor_cpu / all_lines * 1000:.2f}")
    left = TARGET * floor_cpu - needed_cpu
    print(f"needed (parse, read-back, output code) {needed_cpu:.2f} CPU s = {needed_cpu / floor_cpu:.2f} x floor; "
          f"one no-op walk {walk_cpu:.2f} CPU s = {walk_cpu / floor_cpu:.2f} x floor")
    print(f"{TARGET:.0f} x floor leaves {left:.2f} CPU s = {left / walk_cpu:.1f} walk(s) for the analysis and every "
          f"transform; the rewrite spends {(rewrite_cpu - needed_cpu) / walk_cpu:.1f}")
    ratio = rewrite_cpu / floor_cpu
    print(f"target rewrite <= {TARGET:.0f} x floor (CPU): {ratio:.1f}x  {'PASS' if ratio <= TARGET else 'MISS'}")


if __name__ == "__main__":
    main()
