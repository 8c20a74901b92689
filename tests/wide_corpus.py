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


TINY_GPTJ = {"vocab_size": 128, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128, "rotary_dim": 8,
             "initializer_range": 0.2, **TOKENS}
TINY_CODEGEN = {**TINY_GPTJ, "n_ctx": 128}
TINY_GPT_NEO = {"vocab_size": 128, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "max_position_embeddings": 128,
                "attention_types": [[["global", "local"], 1]], "window_size": 4, "initializer_range": 0.2, **TOKENS}
TINY_OPT = {"vocab_size": 128, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 128,
            "max_position_embeddings": 128, "init_std": 0.2, "dropout": 0.0, **TOKENS}
TINY_OPT_POST_NORM = {**TINY_OPT, "do_layer_norm_before": False, "word_embed_proj_dim": 32}
TINY_XGLM = {"vocab_size": 128, "d_model": 64, "num_layers": 2, "attention_heads": 4, "ffn_dim": 128,
             "max_position_embeddings": 128, "init_std": 0.2, "dropout": 0.0, "attention_dropout": 0.0, **TOKENS}
TINY_BIOGPT = {**DECODER, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
TINY_CTRL = {"vocab_size": 128, "n_embd": 64, "n_layer": 2, "n_head": 4, "dff": 128, "n_positions": 128,
             "initializer_range": 0.2, **TOKENS}

# Older releases' styles (tuple caches, `_attn` helpers) of architectures beyond the corpus.
OLDER_RELEASES: list[LegacyModel] = [
    # interleaved (every-other-pair) partial rotary, `_attn` helper, causal buffer
    LegacyModel("4.44.2", "gptj", "GPTJConfig", "GPTJModel", "GPTJForCausalLM", TINY_GPTJ),
    LegacyModel("4.30.2", "gptj", "GPTJConfig", "GPTJModel", "GPTJForCausalLM", TINY_GPTJ),
    # fused qkv split in mp_num blocks, interleaved partial rotary
    LegacyModel("4.44.2", "codegen", "CodeGenConfig", "CodeGenModel", "CodeGenForCausalLM", TINY_CODEGEN),
    LegacyModel("4.30.2", "codegen", "CodeGenConfig", "CodeGenModel", "CodeGenForCausalLM", TINY_CODEGEN),
    # alternating global / local (windowed) layers, no score scaling
    LegacyModel("4.44.2", "gpt_neo", "GPTNeoConfig", "GPTNeoModel", "GPTNeoForCausalLM", TINY_GPT_NEO),
    LegacyModel("4.30.2", "gpt_neo", "GPTNeoConfig", "GPTNeoModel", "GPTNeoForCausalLM", TINY_GPT_NEO),
    # learned positions offset by 2; 4.30.2 post-layer-norm with projected embeddings
    LegacyModel("4.44.2", "opt", "OPTConfig", "OPTModel", "OPTForCausalLM", TINY_OPT),
    LegacyModel("4.30.2", "opt", "OPTConfig", "OPTModel", "OPTForCausalLM", TINY_OPT_POST_NORM),
    # bart-style attention (scaled query, bmm on [batch*heads, seq, dim]), sinusoidal positions
    LegacyModel("4.44.2", "xglm", "XGLMConfig", "XGLMModel", "XGLMForCausalLM", TINY_XGLM),
    LegacyModel("4.44.2", "biogpt", "BioGptConfig", "BioGptModel", "BioGptForCausalLM", TINY_BIOGPT),
    # sinusoidal positions, tuple cache of stacked (k, v)
    LegacyModel("4.44.2", "ctrl", "CTRLConfig", "CTRLModel", "CTRLLMHeadModel", TINY_CTRL),
]


# Bidirectional encoders and encoder-decoder models (ported, or refused with a diagnostic).
ENCODERS: list[LegacyModel] = [
]


# Mixture-of-experts models.
MIXTURE_OF_EXPERTS: list[LegacyModel] = [
]


WIDE_CORPUS: list[LegacyModel] = DECODERS_A + DECODERS_B + OLDER_RELEASES + ENCODERS + MIXTURE_OF_EXPERTS
