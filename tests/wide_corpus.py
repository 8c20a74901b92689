"""More legacy architectures, beyond the corpus that every CI run ports (tests/corpus.py).

Each entry is an in-library model of an old transformers release made into a remote-code
repo by `tests.corpus.legacy_model_repo`, with a tiny config. `benchmarks/sweep_architectures.py`
ports and verifies any subset and prints the outcome of each; `tests/test_wide_corpus.py`
does the same under pytest when `PORT_MODEL_WIDE_CORPUS=1`. The lists are grouped by family
so that each can grow on its own.
"""

from __future__ import annotations

from pathlib import Path

from tests.corpus import DECODER, TOKENS, LegacyModel, legacy_model_repo  # noqa: F401  (tiny configs to build on)

# Causal language models, first family (fused projections, ALiBi, parallel blocks, ...).
DECODERS_A: list[LegacyModel] = [
]


class ConfigVariant(LegacyModel):
    """One architecture built a second time with other config switches: its own id and
    its own repo folder, so the two checkpoints never share a cache entry."""

    def __init__(self, variant: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.variant = variant

    @property
    def id(self) -> str:
        return f"{self.arch}-{self.variant}-{self.version}"

    def build(self, cache_dir: Path) -> Path:
        folder = cache_dir / "repos" / f"{self.arch}_{self.variant}_{self.version.replace('.', '_')}"
        return legacy_model_repo(
            self.version, self.arch, self.config_class, self.head_class, self.base_class,
            self.config, folder, cache_dir, head_auto=self.head_auto,
        )


_PHI = {**DECODER, "partial_rotary_factor": 0.5, "hidden_act": "gelu_new"}
_STABLELM = {**DECODER, "num_key_value_heads": 2, "partial_rotary_factor": 0.25}
_GEMMA = {**DECODER, "num_key_value_heads": 2, "head_dim": 16, "hidden_activation": "gelu_pytorch_tanh"}

# Causal language models, second family (rotary variants, qk-norm, softcapping, ...).
DECODERS_B: list[LegacyModel] = [
    LegacyModel("4.44.2", "phi", "PhiConfig", "PhiModel", "PhiForCausalLM", _PHI),
    # 4.44.2's qk-layernorm normalises over head_dim before the heads are split: it runs with one head only.
    ConfigVariant("qkln", "4.44.2", "phi", "PhiConfig", "PhiModel", "PhiForCausalLM",
                  {**_PHI, "qk_layernorm": True, "num_attention_heads": 1, "num_key_value_heads": 1}),
    LegacyModel("4.36.2", "phi", "PhiConfig", "PhiModel", "PhiForCausalLM", {**_PHI, "qk_layernorm": True}),
    LegacyModel("4.44.2", "phi3", "Phi3Config", "Phi3Model", "Phi3ForCausalLM",
                {**DECODER, "num_key_value_heads": 2, "sliding_window": 8}),
    LegacyModel("4.44.2", "qwen2", "Qwen2Config", "Qwen2Model", "Qwen2ForCausalLM",
                {**DECODER, "num_key_value_heads": 2, "use_sliding_window": True, "sliding_window": 8,
                 "max_window_layers": 1}),
    LegacyModel("4.44.2", "stablelm", "StableLmConfig", "StableLmModel", "StableLmForCausalLM",
                {**_STABLELM, "qk_layernorm": True, "use_parallel_residual": True, "use_qkv_bias": True}),
    ConfigVariant("sequential", "4.44.2", "stablelm", "StableLmConfig", "StableLmModel", "StableLmForCausalLM",
                  _STABLELM),
    LegacyModel("4.44.2", "persimmon", "PersimmonConfig", "PersimmonModel", "PersimmonForCausalLM",
                {**DECODER, "partial_rotary_factor": 0.5, "qk_layernorm": True}),
    LegacyModel("4.36.2", "persimmon", "PersimmonConfig", "PersimmonModel", "PersimmonForCausalLM",
                {**DECODER, "partial_rotary_factor": 0.5, "qk_layernorm": True}),
    LegacyModel("4.44.2", "starcoder2", "Starcoder2Config", "Starcoder2Model", "Starcoder2ForCausalLM",
                {**DECODER, "num_key_value_heads": 2, "sliding_window": 8, "use_bias": True}),
    LegacyModel("4.44.2", "gemma", "GemmaConfig", "GemmaModel", "GemmaForCausalLM", _GEMMA),
    LegacyModel("4.44.2", "gemma2", "Gemma2Config", "Gemma2Model", "Gemma2ForCausalLM",
                {**_GEMMA, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                 "query_pre_attn_scalar": 16, "sliding_window": 8}),
    LegacyModel("4.44.2", "olmo", "OlmoConfig", "OlmoModel", "OlmoForCausalLM", {**DECODER, "clip_qkv": 0.5}),
    LegacyModel("4.44.2", "cohere", "CohereConfig", "CohereModel", "CohereForCausalLM",
                {**DECODER, "num_key_value_heads": 2, "use_qk_norm": True, "logit_scale": 0.5}),
    LegacyModel("4.44.2", "nemotron", "NemotronConfig", "NemotronModel", "NemotronForCausalLM",
                {**DECODER, "num_key_value_heads": 2, "partial_rotary_factor": 0.5}),
]


# Older releases' styles (tuple caches, `_attn` helpers) of architectures beyond the corpus.
OLDER_RELEASES: list[LegacyModel] = [
]


# Bidirectional encoders and encoder-decoder models (ported, or refused with a diagnostic).
ENCODERS: list[LegacyModel] = [
]


# Mixture-of-experts models.
MIXTURE_OF_EXPERTS: list[LegacyModel] = [
]


WIDE_CORPUS: list[LegacyModel] = DECODERS_A + DECODERS_B + OLDER_RELEASES + ENCODERS + MIXTURE_OF_EXPERTS
