"""More legacy architectures, beyond the corpus that every CI run ports (tests/corpus.py).

Each entry is an in-library model of an old transformers release made into a remote-code
repo by `tests.corpus.legacy_model_repo`, with a tiny config. `benchmarks/sweep_architectures.py`
ports and verifies any subset and prints the outcome of each; `tests/test_wide_corpus.py`
does the same under pytest when `PORT_MODEL_WIDE_CORPUS=1`. The lists are grouped by family
so that each can grow on its own.
"""

from __future__ import annotations

from tests.corpus import DECODER, TOKENS, LegacyModel  # noqa: F401  (tiny configs to build on)

# Causal language models, first family (fused projections, ALiBi, parallel blocks, ...).
DECODERS_A: list[LegacyModel] = [
]


# Causal language models, second family (rotary variants, qk-norm, softcapping, ...).
DECODERS_B: list[LegacyModel] = [
]


# Older releases' styles (tuple caches, `_attn` helpers) of architectures beyond the corpus.
OLDER_RELEASES: list[LegacyModel] = [
]


# Bidirectional encoders and encoder-decoder models (ported, or refused with a diagnostic).
ENCODERS: list[LegacyModel] = [
]


# Mixture-of-experts models: 4 experts, top-2 (dbrx: top-1 by default, set to 2), sliding windows
# and a shared expert where the architecture has them.
TINY_MIXTRAL = {**DECODER, "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2}
TINY_QWEN2_MOE = {
    **DECODER, "num_key_value_heads": 2, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 96, "decoder_sparse_step": 1, "norm_topk_prob": False,
}
TINY_DBRX = {
    "vocab_size": 128, "d_model": 64, "n_heads": 4, "n_layers": 2, "max_seq_len": 128, "initializer_range": 0.2,
    "attn_config": {"kv_n_heads": 2, "clip_qkv": 8.0},
    "ffn_config": {"ffn_hidden_size": 32, "moe_num_experts": 4, "moe_top_k": 2},
    **TOKENS,
}
TINY_JETMOE = {
    "vocab_size": 128, "hidden_size": 64, "num_hidden_layers": 2, "num_key_value_heads": 2, "kv_channels": 16,
    "intermediate_size": 32, "max_position_embeddings": 128, "num_local_experts": 4, "num_experts_per_tok": 2,
    "initializer_range": 0.2, **TOKENS,
}
MIXTURE_OF_EXPERTS: list[LegacyModel] = [
    LegacyModel("4.44.2", "mixtral", "MixtralConfig", "MixtralModel", "MixtralForCausalLM",
                {**TINY_MIXTRAL, "sliding_window": 8}),
    LegacyModel("4.36.2", "mixtral", "MixtralConfig", "MixtralModel", "MixtralForCausalLM", TINY_MIXTRAL),
    LegacyModel("4.44.2", "qwen2_moe", "Qwen2MoeConfig", "Qwen2MoeModel", "Qwen2MoeForCausalLM", TINY_QWEN2_MOE),
    LegacyModel("4.44.2", "dbrx", "DbrxConfig", "DbrxModel", "DbrxForCausalLM", TINY_DBRX),
    LegacyModel("4.44.2", "jetmoe", "JetMoeConfig", "JetMoeModel", "JetMoeForCausalLM", TINY_JETMOE),
]


WIDE_CORPUS: list[LegacyModel] = DECODERS_A + DECODERS_B + OLDER_RELEASES + ENCODERS + MIXTURE_OF_EXPERTS
