"""Peak memory and wall time of port-model's weight conversion, against two baselines.

Builds a synthetic ``pytorch_model.bin`` (default 2.2 GiB: fp32 and bf16 tensors, the
largest 256 MiB) and measures, in the same run, each step in a fresh process so that
its peak RSS is its own:

  convert    porter.weights.convert_checkpoint(..., max_shard_size="5GB"), the CLI default
             (reads with mmap, streams, writes safetensors, reloads and compares every tensor)
  serial     the same with one verification thread (porter.weights.VERIFY_THREADS = 1):
             each tensor compared in the writing thread right after it is written,
             nothing overlapped
  load-save  torch.load(mmap=False) of the whole state dict + safetensors.torch.save_file
  cp         cp of the same bytes

Peak RSS is the high-water mark of the process after exec (VmHWM, file-backed pages
included, as in ru_maxrss); for cp, ru_maxrss from os.wait4. This script itself never
imports torch (it builds the checkpoint in a child) so that a forked child does not
inherit its memory in ru_maxrss.

Before each step the previous output is deleted, ``sync`` flushes dirty pages (not
timed) and the source is read once, so every step reads a warm page cache (dropping the
cache needs root; this benchmark does not try). "wall" is the step's process from start
to exit (interpreter start-up and imports included); "op" is the operation alone,
timed inside the process (for cp, its wall); "op CPU" the user + system CPU seconds of
all the process's threads during the operation (for cp, of the whole process): on a
machine shared with other work, the steadier measure; "+sync" is the time of a ``sync``
run by this script right after the step's process exits, i.e. the extra time until the
output is on disk. Each step runs ``--repeat`` times, in rotating order; the table shows
medians. Needs about 7 GiB of free disk.

    python benchmarks/bench_weights.py [--dir DIR] [--size-gib 2.2] [--repeat 3] [--shard-size 5GB]

``--shard-size`` is passed to the conversions.

Targets (from the weights issue): peak RSS of convert <= 1.25 x largest tensor group +
300 MB; wall of convert <= 1.5 x cp.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 2**20
LARGEST_MIB = 256  # the embedding: the largest tensor, and the largest tensor group (no merges)
CHILD = """
import json, os, resource, sys, time
from pathlib import Path
step, src, out, shard_size = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
phases = {}
if step in ("convert", "serial"):
    import porter.weights as weights

    if step == "serial":
        weights.VERIFY_THREADS = 1

    def timed(phase, function):  # writing (written tensors verified meanwhile), then the wait
        def run(*args, **kwargs):
            t = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                phases[phase] = time.perf_counter() - t
        return run

    weights._write_all = timed("write", weights._write_all)
    weights._verify = timed("verify", weights._verify)
    t, r = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    report = weights.convert_checkpoint([src], out, max_shard_size=shard_size)
    assert report.verified
else:
    import torch
    from safetensors.torch import save_file
    t, r = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    state = torch.load(src, map_location="cpu", weights_only=True)
    out.mkdir()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
op = time.perf_counter() - t
end = resource.getrusage(resource.RUSAGE_SELF)  # all threads of the process
phases["cpu"] = end.ru_utime + end.ru_stime - r.ru_utime - r.ru_stime
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"op": op, "hwm_mib": hwm / 1024, **phases}))
"""


# ---------------------------------------------------------------- building the checkpoint


def plan(size_gib: float) -> list[tuple[str, tuple[int, ...], str]]:
    """Tensor names, shapes and dtypes of a small-LLM-like checkpoint of >= size_gib."""
    tensors = [("model.embed_tokens.weight", (LARGEST_MIB * MiB // 4 // 1024, 1024), "float32"),
               ("lm_head.weight", (LARGEST_MIB * MiB // 4 // 1024, 1024), "bfloat16")]
    total = 3 * LARGEST_MIB * MiB // 2
    layer = 0
    while total < size_gib * 2**30:
        p = f"model.layers.{layer}"
        tensors += [(f"{p}.self_attn.{n}_proj.weight", (2048, 2048), "bfloat16") for n in "qkvo"]
        tensors += [(f"{p}.mlp.up_proj.weight", (8192, 2048), "float32"),
                    (f"{p}.mlp.down_proj.weight", (2048, 8192), "float32"),
                    (f"{p}.input_layernorm.weight", (2048,), "float32"),
                    (f"{p}.post_attention_layernorm.weight", (2048,), "float32")]
        total += 4 * 2048 * 2048 * 2 + 2 * 8192 * 2048 * 4 + 2 * 2048 * 4
        layer += 1
    tensors.append(("model.norm.weight", (1024,), "float32"))
    return tensors


def build(path: Path, size_gib: float) -> tuple[int, int]:
    """Write the checkpoint; returns (file bytes, largest tensor bytes).

    Each tensor is generated into its own scratch file a chunk at a time and mapped back
    (torch.from_file), so torch.save reads file-backed pages: building needs about one
    chunk of anonymous memory, not the checkpoint's size.
    """
    import torch

    gen = torch.Generator().manual_seed(0)
    scratch = path.parent / "scratch"
    scratch.mkdir()
    state, largest = {}, 0
    try:
        for i, (name, shape, dtype_name) in enumerate(plan(size_gib)):
            dtype = getattr(torch, dtype_name)
            numel = 1
            for n in shape:
                numel *= n
            raw = scratch / f"{i}.raw"
            with open(raw, "wb") as f:
                for start in range(0, numel, 8 * MiB):
                    chunk = torch.randn(min(8 * MiB, numel - start), generator=gen).to(dtype)
                    f.write(chunk.view(torch.uint8).numpy().tobytes())
            state[name] = torch.from_file(str(raw), shared=False, size=numel, dtype=dtype).view(shape)
            largest = max(largest, numel * dtype.itemsize)
        torch.save(state, path)
    finally:
        state.clear()
        shutil.rmtree(scratch)
    return path.stat().st_size, largest


# ---------------------------------------------------------------- measuring


def warm(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(16 * MiB):
            pass


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, float, str, float]:
    """Wall seconds, peak RSS (MiB), stdout and CPU seconds (user + system) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
    stdout = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{cmd[:3]}... failed with exit code {proc.returncode}")
    return wall, usage.ru_maxrss / 1024, stdout, usage.ru_utime + usage.ru_stime  # ru_maxrss: KiB


def measure(step: str, src: Path, out: Path, shard_size: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    out.with_suffix(".bin").unlink(missing_ok=True)
    os.sync()
    warm(src)
    if step == "cp":
        dst = out.with_suffix(".bin")
        wall, rss, _, cpu = run_measured(["cp", str(src), str(dst)])
        timings = {"op": wall, "hwm_mib": rss, "cpu": cpu}
    else:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                            os.environ.get("PYTHONPATH", "")])}
        wall, rss, stdout, _ = run_measured([sys.executable, "-c", CHILD, step, str(src), str(out), shard_size],
                                         env)
        timings = json.loads(stdout.strip().splitlines()[-1])
    t = time.perf_counter()
    os.sync()  # until the output is on disk
    sync = time.perf_counter() - t
    shutil.rmtree(out, ignore_errors=True)
    out.with_suffix(".bin").unlink(missing_ok=True)
    # VmHWM is the process's own peak; ru_maxrss may include the parent's at fork time.
    return {"wall": wall, "op": timings["op"], "cpu": timings["cpu"], "sync": sync, "rss": timings["hwm_mib"],
            "maxrss": rss,
            **{k: timings[k] for k in ("write", "verify") if k in timings}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--size-gib", type=float, default=2.2, help="checkpoint size (>= 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each step; medians shown")
    parser.add_argument("--shard-size", default="5GB", help="max_shard_size of the conversions")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)  # internal: the child that builds
    args = parser.parse_args()
    if args.build:
        print(json.dumps(build(args.build, args.size_gib)))
        return

    work = Path(tempfile.mkdtemp(prefix="bench-weights-", dir=args.dir))
    try:
        src = work / "pytorch_model.bin"
        t = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--build", str(src), "--size-gib", str(args.size_gib)],
                             check=True, stdout=subprocess.PIPE, text=True).stdout
        size, largest = json.loads(out.strip().splitlines()[-1])
        print(f"checkpoint: {src} {size / 2**30:.2f} GiB, largest tensor {largest / MiB:.0f} MiB "
              f"(built in {time.perf_counter() - t:.0f} s)")
        print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
              f"{os.uname().sysname} {os.uname().release}, load average {os.getloadavg()[0]:.1f}")
        print(f"max_shard_size {args.shard_size}")
        steps = ("convert", "serial", "load-save", "cp")
        runs: dict[str, list[dict]] = {s: [] for s in steps}
        for i in range(args.repeat):
            turn = i % len(steps)
            for step in steps[turn:] + steps[:turn]:  # rotate the order: no step always goes first
                runs[step].append(measure(step, src, work / f"out-{step}", args.shard_size))
        report(runs, largest, args.repeat)
        print(f"load average after: {os.getloadavg()[0]:.1f}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def report(runs: dict[str, list[dict]], largest: int, repeat: int) -> None:
    med = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for s, rs in runs.items()}
    print(f"\nmedians of {repeat} run(s); page cache warm for every step\n")
    print(f"{'step':<10} {'wall s':>8} {'op s':>8} {'op CPU s':>9} {'+sync s':>8} {'peak RSS MiB':>13} "
          f"{'ru_maxrss':>10}   all ops (s)")
    for step, m in med.items():
        ops = " ".join(f"{r['op']:.2f}" for r in runs[step])
        print(f"{step:<10} {m['wall']:>8.2f} {m['op']:>8.2f} {m['cpu']:>9.2f} {m['sync']:>8.2f} {m['rss']:>13.0f} "
              f"{m['maxrss']:>10.0f}   {ops}")
    conv, cp, base, serial = med["convert"], med["cp"], med["load-save"], med["serial"]
    print()
    for step in ("convert", "serial"):
        walls = {phase: " ".join(f"{r[phase]:.2f}" for r in runs[step]) for phase in ("write", "verify")}
        print(f"{step} op: writing {med[step]['write']:.2f} s ({walls['write']}), then waiting for "
              f"verification {med[step]['verify']:.2f} s ({walls['verify']})")
    for step in ("convert", "serial"):
        m = med[step]
        print(f"\n{step + ' / cp:':<20} wall {m['wall'] / cp['wall']:.2f}x   op {m['op'] / cp['op']:.2f}x   "
              f"op+sync {(m['op'] + m['sync']) / (cp['op'] + cp['sync']):.2f}x   op CPU {m['cpu'] / cp['cpu']:.2f}x",
              end="")
    print(f"\nconvert / serial:    op {conv['op'] / serial['op']:.2f}x   op CPU {conv['cpu'] / serial['cpu']:.2f}x")
    print(f"convert / load-save: wall {conv['wall'] / base['wall']:.2f}x   op {conv['op'] / base['op']:.2f}x   "
          f"peak RSS {conv['rss'] / base['rss']:.2f}x")
    rss_target = (1.25 * largest + 300e6) / MiB
    print("\ntargets")
    print(f"  peak RSS <= 1.25 x largest tensor group ({largest / MiB:.0f} MiB) + 300 MB = "
          f"{rss_target:.0f} MiB: {conv['rss']:.0f} MiB  {'PASS' if conv['rss'] <= rss_target else 'MISS'}")
    for label, ours, theirs in (("wall (process)", conv["wall"], cp["wall"]),
                                ("op (conversion call)", conv["op"], cp["op"]),
                                ("op + sync", conv["op"] + conv["sync"], cp["op"] + cp["sync"])):
        verdict = "PASS" if ours <= 1.5 * theirs else "MISS"
        print(f"  {label:<22} <= 1.5 x cp = {1.5 * theirs:.2f} s: {ours:.2f} s  {verdict}")


if __name__ == "__main__":
    main()
