"""Run the legacy reference and the ported model at the same time, each on its share of the cores.

The two child processes do not depend on each other, and a forward of a large model on the
CPU is bound by memory bandwidth far more than by cores: on two cores, one thread runs a
forward of a 1B model about as fast as two. So each child gets half the cores and they run
together, when the machine has the memory for both models at once; otherwise one after
the other, with every core, as before. Both children get the same number of threads, so
the reference and the ported model reduce their sums in the same order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TypeVar

from porter.verify.child import stop_children, stopped_together

T = TypeVar("T")

# Peak memory of both children, in multiples of the checkpoint: a legacy release loads the
# state dict beside the model it initialised (2x), the ported model maps its safetensors
# and holds one model at a time (up to 2x while a model is replaced).
MEMORY_PER_WEIGHT_BYTE = 4
MEMORY_MARGIN = 1 << 30


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes; None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def weight_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in repo.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))


def threads_each(checkpoint_bytes: int) -> int | None:
    """Threads for each of the two children when they can run side by side; None when they
    must run one after the other (one core, or not enough free memory for both)."""
    if os.environ.get("PORT_MODEL_SIDE_BY_SIDE", "1") == "0":
        return None
    free = available_memory()
    if cores() < 2 or free is None or free < MEMORY_PER_WEIGHT_BYTE * checkpoint_bytes + MEMORY_MARGIN:
        return None
    return cores() // 2


def run_pair(
    first: Callable[[], T], second: Callable[[], T], together: bool, second_needs: Callable[[T], bool] = lambda _: True
) -> tuple[T, T | None]:
    """Both results. The calls run in two threads (each waits on its own child process), or
    in order, where `second` runs only if `second_needs` the first result (None otherwise)."""
    if not together:
        result = first()
        return result, second() if second_needs(result) else None
    with stopped_together(), ThreadPoolExecutor(max_workers=2) as pool:
        a, b = pool.submit(first), pool.submit(second)
        try:
            wait((a, b), return_when=FIRST_EXCEPTION)
            if a.exception() or b.exception():
                raise a.exception() or b.exception()
        except BaseException:  # a failure, Ctrl-C or SIGTERM (they reach this thread only): stop both children
            stop_children()
            raise
        return a.result(), b.result()
