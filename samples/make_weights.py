#!/usr/bin/env python
"""Write deterministic random weights for the tiny legacy sample repo.

Usage:
    python samples/make_weights.py samples/tiny_legacy_lm

Reads ``config.json`` in the given folder and writes ``pytorch_model.bin`` next to it, with exactly the
state-dict names and shapes of ``TinyLegacyLMForCausalLM``. Only torch is used (no transformers import), so
the sample can be materialised in any environment. The output is byte-for-byte reproducible: every tensor is
drawn, in a fixed order, from ``torch.Generator().manual_seed(0)``.
"""
import argparse
import collections
import json
import os
import sys

import torch


SEED = 0


def state_dict_shapes(config):
    """Ordered (name, shape, kind) triples matching modeling_tiny_legacy_lm.TinyLegacyLMForCausalLM."""
    vocab = config["vocab_size"]
    hidden = config["hidden_size"]
    inter = config["intermediate_size"]
    n_heads = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_heads
    head_dim = hidden // n_heads
    if head_dim * n_heads != hidden:
        raise ValueError(f"hidden_size {hidden} is not divisible by num_attention_heads {n_heads}")

    entries = [("model.embed_tokens.weight", (vocab, hidden), "dense")]
    for i in range(config["num_hidden_layers"]):
        p = f"model.blocks.{i}."
        entries += [
            (p + "attn_norm.weight", (hidden,), "norm"),
            (p + "attn.wq.weight", (n_heads * head_dim, hidden), "dense"),
            (p + "attn.wk.weight", (n_kv * head_dim, hidden), "dense"),
            (p + "attn.wv.weight", (n_kv * head_dim, hidden), "dense"),
            (p + "attn.wo.weight", (hidden, n_heads * head_dim), "dense"),
            (p + "mlp_norm.weight", (hidden,), "norm"),
            (p + "mlp.w_gate.weight", (inter, hidden), "dense"),
            (p + "mlp.w_up.weight", (inter, hidden), "dense"),
            (p + "mlp.w_down.weight", (hidden, inter), "dense"),
        ]
    entries.append(("model.norm.weight", (hidden,), "norm"))
    if not config.get("tie_word_embeddings", False):
        entries.append(("lm_head.weight", (vocab, hidden), "dense"))
    return entries


def build_state_dict(config):
    std = float(config.get("initializer_range", 0.02))
    gen = torch.Generator().manual_seed(SEED)
    state_dict = collections.OrderedDict()
    for name, shape, kind in state_dict_shapes(config):
        noise = torch.randn(shape, generator=gen, dtype=torch.float32)
        if kind == "norm":
            tensor = 1.0 + 0.1 * noise
        else:
            tensor = noise * std
        state_dict[name] = tensor.contiguous()
    return state_dict


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="sample repo folder containing config.json")
    parser.add_argument("--quiet", action="store_true", help="do not print the summary")
    args = parser.parse_args(argv)

    with open(os.path.join(args.folder, "config.json"), encoding="utf-8") as f:
        config = json.load(f)

    state_dict = build_state_dict(config)
    out_path = os.path.join(args.folder, "pytorch_model.bin")
    torch.save(state_dict, out_path)

    # check mode: reload what was written and summarise it
    reloaded = torch.load(out_path, map_location="cpu", weights_only=True)
    if list(reloaded) != list(state_dict) or not all(torch.equal(reloaded[k], v) for k, v in state_dict.items()):
        print(f"error: {out_path} does not round-trip", file=sys.stderr)
        return 1
    if not args.quiet:
        total = sum(t.numel() for t in reloaded.values())
        print(f"wrote {out_path}: {len(reloaded)} tensors, {total} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
