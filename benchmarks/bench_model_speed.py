"""Speed of a ported llama-style legacy model against transformers' own implementation.

Builds a legacy remote-code repo from the corpus's llama (transformers 4.36.2's
``modeling_llama.py`` made a remote-code repo, tests/corpus.py) with a bigger config
(``--hidden``, ``--layers``...) and random weights, ports it with port-model
(``--no-verify``: equivalence is the test suite's subject; here the logits of the two
models are compared once as a sanity check), then measures in one run, in this process
(transformers 5), for each attention backend (eager, sdpa):

  ported   AutoModelForCausalLM.from_pretrained(ported, trust_remote_code=True)
  native   transformers' LlamaForCausalLM with the same config and the ported weights
           (loaded strictly: no missing or unexpected keys)

- forward: one forward of a ``--batch`` x ``--seq`` prompt, no cache (prefill);
- generate: greedy generation of ``--new-tokens`` tokens after a 16-token prompt,
  tokens per second.

The two models run alternately, ``--rounds`` times, and the minimum of each is kept,
which is the least disturbed by other load on the machine. Then the legacy code itself
runs eagerly in its own transformers 4.36.2 environment (a child process) on the same
weights and inputs. Every process uses ``--threads`` torch threads.

    python benchmarks/bench_model_speed.py [--rounds 5] [--threads 1]

Target (performance issue): ported speed >= 0.97 x native (native time / ported time).
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET = 0.97
LEGACY_VERSION = "4.36.2"
PROMPT = 16

# Runs in the legacy environment: the legacy code, eagerly, as its users ran it.
LEGACY_CHILD = r"""
import json, sys, time
import torch
from transformers import AutoModelForCausalLM
repo, batch, seq, new, rounds, threads = sys.argv[1], *map(int, sys.argv[2:7])
torch.set_num_threads(threads)
model = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True, torch_dtype=torch.float32).eval()
ids = torch.randint(3, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
prompt = ids[:1, :16]
forward, generate = [], []
with torch.inference_mode():
    model(ids, use_cache=False)
    model.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    for _ in range(rounds):
        t = time.perf_counter(); model(ids, use_cache=False); forward.append(time.perf_counter() - t)
        t = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        generate.append(time.perf_counter() - t)
print(json.dumps({"forward": forward, "generate": generate, "tokens": out.shape[1] - prompt.shape[1]}))
"""


def build_legacy_repo(work: Path, args: argparse.Namespace) -> Path:
    """The corpus llama repo's code with a bigger config and random weights."""
    import torch

    from porter.environments import default_cache_dir
    from tests.corpus import llama_436

    source = llama_436(default_cache_dir())
    legacy = work / "legacy_llama"
    legacy.mkdir()
    for name in ("configuration_llama.py", "modeling_llama.py"):
        shutil.copy(source / name, legacy / name)
    config = json.loads((source / "config.json").read_text())
    config.update(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                  num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
                  max_position_embeddings=max(2048, args.seq + args.new_tokens + PROMPT), initializer_range=0.02)
    (legacy / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generator = torch.Generator().manual_seed(0)
    head, kv = args.hidden // args.heads, args.kv_heads * (args.hidden // args.heads)
    shapes = {"model.embed_tokens.weight": (args.vocab, args.hidden), "model.norm.weight": (args.hidden,),
              "lm_head.weight": (args.vocab, args.hidden)}
    for i in range(args.layers):
        prefix = f"model.layers.{i}."
        shapes.update({
            prefix + "self_attn.q_proj.weight": (args.hidden, args.hidden),
            prefix + "self_attn.k_proj.weight": (kv, args.hidden),
            prefix + "self_attn.v_proj.weight": (kv, args.hidden),
            prefix + "self_attn.o_proj.weight": (args.hidden, args.hidden),
            prefix + "mlp.gate_proj.weight": (args.intermediate, args.hidden),
            prefix + "mlp.up_proj.weight": (args.intermediate, args.hidden),
            prefix + "mlp.down_proj.weight": (args.hidden, args.intermediate),
            prefix + "input_layernorm.weight": (args.hidden,),
            prefix + "post_attention_layernorm.weight": (args.hidden,),
        })
    assert head * args.heads == args.hidden
    state = {name: (torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=generator) * 0.02)
             for name, shape in shapes.items()}
    torch.save(state, legacy / "pytorch_model.bin")
    return legacy


def load_models(ported: Path, attention: str):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    ported_model = AutoModelForCausalLM.from_pretrained(ported, trust_remote_code=True, dtype=torch.float32,
                                                        attn_implementation=attention).eval()
    config = json.loads((ported / "config.json").read_text())
    for key in ("auto_map", "model_type", "architectures", "_name_or_path", "transformers_version"):
        config.pop(key, None)
    native_config = LlamaConfig(**config)
    native_config._attn_implementation = attention
    native = LlamaForCausalLM(native_config).to(torch.float32).eval()
    state = {}
    for file in sorted(ported.glob("*.safetensors")):
        state.update(load_file(file))
    missing, unexpected = native.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("inv_freq")]
    if missing or unexpected:
        raise SystemExit(f"native model does not take the ported weights: missing {missing}, unexpected {unexpected}")
    return ported_model, native


def measure(models: dict, ids, prompt, new_tokens: int, rounds: int) -> dict:
    """Alternate the models round by round; per model, per measurement, every time."""
    import torch

    times = {name: {"forward": [], "generate": []} for name in models}
    with torch.inference_mode():
        for model in models.values():  # warm-up
            model(ids, use_cache=False)
            model.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        for _ in range(rounds):
            for name, model in models.items():
                t = time.perf_counter()
                model(ids, use_cache=False)
                times[name]["forward"].append(time.perf_counter() - t)
                t = time.perf_counter()
                model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
                times[name]["generate"].append(time.perf_counter() - t)
    return times


def run_legacy(legacy: Path, args: argparse.Namespace, work: Path) -> dict:
    from porter.environments import ensure_reference_env
    from porter.verify.child import child_environment

    env = ensure_reference_env(LEGACY_VERSION)
    script = work / "legacy_child.py"
    script.write_text(LEGACY_CHILD)
    result = subprocess.run(
        [str(env.python), str(script), str(legacy), str(args.batch), str(args.seq), str(args.new_tokens),
         str(args.rounds), str(args.threads)],
        env=child_environment(work / "hf_home"), capture_output=True, text=True, timeout=1800, check=False)
    if result.returncode != 0:
        raise SystemExit(f"legacy run failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1408)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-legacy", action="store_true", help="skip the legacy run in its own environment")
    args = parser.parse_args()

    import torch

    import porter

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-model-speed-"))
    try:
        legacy = build_legacy_repo(work, args)
        t = time.perf_counter()
        porter.port(legacy, work / "ported", verify=False)
        params = sum(p.numel() for p in torch.load(legacy / "pytorch_model.bin", weights_only=True).values())
        print(f"model: llama (transformers {LEGACY_VERSION} code), {params / 1e6:.1f}M parameters, fp32; "
              f"ported in {time.perf_counter() - t:.1f} s")
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; torch threads {args.threads}; "
              f"min of {args.rounds} alternating round(s)")
        print(f"forward: batch {args.batch} x {args.seq} tokens, no cache; generate: {args.new_tokens} greedy tokens "
              f"after a {PROMPT}-token prompt\n")
        ids = torch.randint(3, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
        prompt = ids[:1, :PROMPT]
        results = {}
        for attention in ("eager", "sdpa"):
            ported, native = load_models(work / "ported", attention)
            with torch.inference_mode():
                diff = (ported(ids).logits - native(ids).logits).abs().max().item()
                same_tokens = torch.equal(
                    ported.generate(prompt, max_new_tokens=8, do_sample=False),
                    native.generate(prompt, max_new_tokens=8, do_sample=False))
            times = measure({"ported": ported, "native": native}, ids, prompt, args.new_tokens, args.rounds)
            results[attention] = times
            print(f"[{attention}] max |logits ported - native| = {diff:.2e}, same greedy tokens: {same_tokens}")
            report(times, args.new_tokens)
            del ported, native
        if not args.no_legacy:
            legacy_times = run_legacy(legacy, args, work)
            print("[legacy eager, transformers 4.36.2, own environment]")
            line("legacy", legacy_times, args.new_tokens)
            for attention in ("eager", "sdpa"):
                ported = results[attention]["ported"]
                print(f"  ported {attention} vs legacy eager: forward {min(legacy_times['forward']) / min(ported['forward']):.2f}x "
                      f"faster, generate {min(legacy_times['generate']) / min(ported['generate']):.2f}x faster")
        print("\ntargets (ported speed >= 0.97 x native)")
        for attention, times in results.items():
            for what in ("forward", "generate"):
                ratio = min(times["native"][what]) / min(times["ported"][what])
                print(f"  {attention:5s} {what:8s}: {ratio:.3f}x  {'PASS' if ratio >= TARGET else 'MISS'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def line(name: str, times: dict, new_tokens: int) -> None:
    forward, generate = min(times["forward"]), min(times["generate"])
    print(f"  {name:7s} forward {forward * 1000:8.1f} ms (median {statistics.median(times['forward']) * 1000:7.1f})"
          f"   generate {new_tokens / generate:7.1f} tok/s (median {new_tokens / statistics.median(times['generate']):6.1f})")


def report(times: dict, new_tokens: int) -> None:
    for name in ("ported", "native"):
        line(name, times[name], new_tokens)
    forward = min(times["native"]["forward"]) / min(times["ported"]["forward"])
    generate = min(times["native"]["generate"]) / min(times["ported"]["generate"])
    print(f"  ported speed / native: forward {forward:.3f}x, generate {generate:.3f}x")


if __name__ == "__main__":
    main()
