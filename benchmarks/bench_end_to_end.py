"""A whole port of a ~1B-parameter legacy repo on the CPU, against the floor of its work.

Builds a synthetic legacy repo from the team sample's code (``samples/tiny_legacy_lm``)
with a bigger config (default: 18 layers, hidden 2048, vocab 32000: 0.98B parameters,
3.7 GiB of fp32 ``pytorch_model.bin``, weights from ``samples/make_weights.py``), then
measures in the same run:

  port     ``port-model SRC -o OUT`` as a user runs it (a fresh process: rewrite,
           weights converted and checked bit for bit, the legacy code run in its own
           transformers 4.36.2 environment and the ported code under transformers 5,
           compared)
  floor    the least any port has to do: one read and one write of the weights (``cp``
           of the checkpoint), plus one forward of each model (the legacy model in its
           environment, the ported one under transformers 5) on the verification's
           input, each timed inside a process that has already loaded its model

The page cache holds the checkpoint for every step (it was just written). Needs about
4 GiB of memory per model process (one at a time) and 8 GiB of free disk.

    python benchmarks/bench_end_to_end.py [--layers 18] [--hidden 2048] [--dir DIR] [--no-sharded-proof]

Target (performance issue): port <= 3 x floor.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAMPLE = ROOT / "samples" / "tiny_legacy_lm"
TARGET = 3.0
LEGACY_VERSION = "4.36.2"

# One forward of a model in an already-started process: load (not timed), then forward.
FORWARD_CHILD = r"""
import json, sys, time
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
repo, inputs = sys.argv[1], sys.argv[2]
dtype = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
t = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True, **{dtype: torch.float32}).eval()
load = time.perf_counter() - t
ids = load_file(inputs)["single.input_ids"]
with torch.inference_mode():
    t = time.perf_counter()
    model(ids, use_cache=False)
    forward = time.perf_counter() - t
print(json.dumps({"load": load, "forward": forward}))
"""


def build_repo(work: Path, args: argparse.Namespace) -> Path:
    legacy = work / "legacy_lm"
    legacy.mkdir()
    for file in SAMPLE.glob("*.py"):
        shutil.copy(file, legacy / file.name)
    config = json.loads((SAMPLE / "config.json").read_text())
    config.update(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                  num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
                  max_position_embeddings=2048, initializer_range=0.02)
    (legacy / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    subprocess.run([sys.executable, str(ROOT / "samples" / "make_weights.py"), str(legacy), "--quiet"], check=True)
    return legacy


def forward_in(python: str, repo: Path, inputs: Path, env: dict) -> dict:
    result = subprocess.run([python, "-c", FORWARD_CHILD, str(repo), str(inputs)], env=env,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"forward of {repo} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--layers", type=int, default=18)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: the system's temporary one)")
    parser.add_argument("--no-sharded-proof", action="store_true", help="port without the sharded proof (D2)")
    args = parser.parse_args()

    from safetensors.torch import save_file

    from porter.environments import ensure_reference_env
    from porter.verify import make_inputs
    from porter.verify.child import child_environment, current_python

    work = Path(tempfile.mkdtemp(prefix="bench-end-to-end-", dir=args.dir))
    try:
        t = time.perf_counter()
        legacy = build_repo(work, args)
        weights = legacy / "pytorch_model.bin"
        size = weights.stat().st_size
        reference = ensure_reference_env(LEGACY_VERSION)
        print(f"repo: {legacy}, {size / 2**30:.2f} GiB of weights (built in {time.perf_counter() - t:.0f} s)")
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before the port\n")

        out = work / "ported"
        t = time.perf_counter()
        flags = ["--no-sharded-proof"] if args.no_sharded_proof else []
        port = subprocess.run(["port-model", str(legacy), "-o", str(out), "--json", *flags], capture_output=True,
                              text=True, check=False)
        port_wall = time.perf_counter() - t
        if port.returncode != 0:
            raise SystemExit(f"port-model failed ({port.returncode}):\n{port.stdout[-2000:]}\n{port.stderr[-3000:]}")
        report = json.loads((out / "porting_report.json").read_text())
        weights_check = next((c for c in report.get("checks", []) if c.get("item") == "F3"), {})

        inputs = work / "inputs.safetensors"
        save_file(make_inputs(json.loads((legacy / "config.json").read_text())), str(inputs))
        env = child_environment(work / "hf_home")
        legacy_forward = forward_in(str(reference.python), legacy, inputs, env)
        ported_forward = forward_in(current_python(), out, inputs, env)
        copy = work / "copy.bin"
        t = time.perf_counter()
        subprocess.run(["cp", str(weights), str(copy)], check=True)
        cp_wall = time.perf_counter() - t
        copy.unlink()

        floor = cp_wall + legacy_forward["forward"] + ported_forward["forward"]
        print(f"port-model (process wall)        {port_wall:8.2f} s   status {report.get('status')}, "
              f"F3 {weights_check.get('status')}, timings {report.get('timings')}")
        print(f"floor                            {floor:8.2f} s")
        print(f"  cp of the weights              {cp_wall:8.2f} s")
        print(f"  legacy forward (4.36.2)        {legacy_forward['forward']:8.2f} s   (its load: {legacy_forward['load']:.2f} s)")
        print(f"  ported forward (transformers 5){ported_forward['forward']:8.2f} s   (its load: {ported_forward['load']:.2f} s)")
        ratio = port_wall / floor
        print(f"\nload average after: {os.getloadavg()[0]:.1f}")
        print(f"target port <= {TARGET:.0f} x floor: {ratio:.2f}x  {'PASS' if ratio <= TARGET else 'MISS'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
