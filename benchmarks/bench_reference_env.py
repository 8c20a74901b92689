"""Time to build a reference environment the first time, and to reuse it.

    python benchmarks/bench_reference_env.py [--transformers 4.36.2] [--keep DIR]

The environment is built in a fresh temporary cache (or DIR), then asked for again; the
second call must find it ready. Both figures and their ratio are printed, measured in the
same run. Set PIP_INDEX_URL etc. as for any pip install.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from porter.environments import ensure_reference_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transformers", default="4.36.2", help="release to build an environment for")
    parser.add_argument("--keep", type=Path, help="cache folder to build in and keep (default: a temporary one)")
    args = parser.parse_args()

    cache = args.keep or Path(tempfile.mkdtemp(prefix="pm-bench-env-"))
    try:
        start = time.perf_counter()
        first = ensure_reference_env(args.transformers, cache)
        build = time.perf_counter() - start
        start = time.perf_counter()
        second = ensure_reference_env(args.transformers, cache)
        reuse = time.perf_counter() - start
    finally:
        if args.keep is None:
            shutil.rmtree(cache, ignore_errors=True)
    print(f"transformers {args.transformers} reference environment")
    print(f"  first call (build):  {build:8.2f} s   reused={first.reused}")
    print(f"  second call (reuse): {reuse:8.4f} s   reused={second.reused}")
    print(f"  build / reuse:       {build / max(reuse, 1e-9):8.0f}x")


if __name__ == "__main__":
    main()
