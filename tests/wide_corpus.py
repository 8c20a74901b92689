"""More legacy architectures, beyond the corpus that every CI run ports (tests/corpus.py).

Each entry is an in-library model of an old transformers release made into a remote-code
repo by `tests.corpus.legacy_model_repo`, with a tiny config. `benchmarks/sweep_architectures.py`
ports and verifies any subset and prints the outcome of each; `tests/test_wide_corpus.py`
does the same under pytest when `PORT_MODEL_WIDE_CORPUS=1`. The lists are grouped by family
so that each can grow on its own.
"""

from __future__ import annotations

from tests.corpus import DECODER, TOKENS, LegacyModel, legacy_model_repo  # noqa: F401  (tiny configs to build on)


class LegacyVariant(LegacyModel):
    """A second entry of one architecture and release with other config switches: its own id
    and its own repo folder, so that both are built and cached side by side."""

    def __init__(self, variant: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.variant = variant

    @property
    def id(self) -> str:
        return f"{self.arch}-{self.variant}-{self.version}"

    def build(self, cache_dir):
        folder = cache_dir / "repos" / f"{self.arch}_{self.variant}_{self.version.replace('.', '_')}"
        return legacy_model_repo(
            self.version, self.arch, self.config_class, self.head_class, self.base_class,
            self.config, folder, cache_dir, head_auto=self.head_auto,
        )


# Causal language models, first family (fused projections, ALiBi, parallel blocks, ...).
_FALCON = {
    "vocab_size": 128, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "initializer_range": 0.2, "bos_token_id": 1, "eos_token_id": 2,
}
# Falcon-7b's shape: rotary, one key/value head, attention and MLP in parallel.
_FALCON_7B = {**_FALCON, "multi_query": True, "parallel_attn": True, "alibi": False}
# Falcon-40b's shape: grouped key/value heads interleaved in one fused projection, two norms.
_FALCON_40B = {**_FALCON, "new_decoder_architecture": True, "num_kv_heads": 2, "alibi": False}
# Falcon-rw's shape: ALiBi, full multi-head attention, sequential blocks, biases.
_FALCON_RW = {**_FALCON, "multi_query": False, "parallel_attn": False, "alibi": True, "bias": True}
_BLOOM = {"vocab_size": 128, "hidden_size": 64, "n_layer": 2, "n_head": 4, "initializer_range": 0.2, **TOKENS}
_MPT = {
    "vocab_size": 128, "d_model": 64, "n_layers": 2, "n_heads": 4, "max_seq_len": 128, "expansion_ratio": 2,
    "initializer_range": 0.2, "attn_config": {"alibi": True}, **TOKENS,
}
_BIGCODE = {"vocab_size": 128, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128, "initializer_range": 0.2, **TOKENS}

DECODERS_A: list[LegacyModel] = [
    LegacyModel("4.44.2", "falcon", "FalconConfig", "FalconModel", "FalconForCausalLM", _FALCON_7B),
    LegacyVariant("new-arch", "4.44.2", "falcon", "FalconConfig", "FalconModel", "FalconForCausalLM", _FALCON_40B),
    LegacyVariant("alibi", "4.44.2", "falcon", "FalconConfig", "FalconModel", "FalconForCausalLM", _FALCON_RW),
    LegacyModel("4.36.2", "falcon", "FalconConfig", "FalconModel", "FalconForCausalLM", _FALCON_7B),
    LegacyVariant("new-arch", "4.36.2", "falcon", "FalconConfig", "FalconModel", "FalconForCausalLM", _FALCON_40B),
    LegacyVariant("alibi", "4.36.2", "falcon", "FalconConfig", "FalconModel", "FalconForCausalLM", _FALCON_RW),
    LegacyModel("4.44.2", "bloom", "BloomConfig", "BloomModel", "BloomForCausalLM", _BLOOM),
    LegacyModel("4.36.2", "bloom", "BloomConfig", "BloomModel", "BloomForCausalLM", _BLOOM),
    LegacyModel("4.30.2", "bloom", "BloomConfig", "BloomModel", "BloomForCausalLM", _BLOOM),
    LegacyModel("4.44.2", "mpt", "MptConfig", "MptModel", "MptForCausalLM", _MPT),
    LegacyModel("4.36.2", "mpt", "MptConfig", "MptModel", "MptForCausalLM", _MPT),
    LegacyModel("4.44.2", "gpt_bigcode", "GPTBigCodeConfig", "GPTBigCodeModel", "GPTBigCodeForCausalLM", _BIGCODE),
    LegacyVariant(
        "mha", "4.44.2", "gpt_bigcode", "GPTBigCodeConfig", "GPTBigCodeModel", "GPTBigCodeForCausalLM",
        {**_BIGCODE, "multi_query": False},
    ),
    LegacyModel("4.36.2", "gpt_bigcode", "GPTBigCodeConfig", "GPTBigCodeModel", "GPTBigCodeForCausalLM", _BIGCODE),
    LegacyModel("4.30.2", "gpt_bigcode", "GPTBigCodeConfig", "GPTBigCodeModel", "GPTBigCodeForCausalLM", _BIGCODE),
]


_PHI = {**DECODER, "partial_rotary_factor": 0.5, "hidden_act": "gelu_new"}
_STABLELM = {**DECODER, "num_key_value_heads": 2, "partial_rotary_factor": 0.25}
_GEMMA = {**DECODER, "num_key_value_heads": 2, "head_dim": 16, "hidden_activation": "gelu_pytorch_tanh"}

# Causal language models, second family (rotary variants, qk-norm, softcapping, ...).
DECODERS_B: list[LegacyModel] = [
    LegacyModel("4.44.2", "phi", "PhiConfig", "PhiModel", "PhiForCausalLM", _PHI),
    # 4.44.2's qk-layernorm normalises over head_dim before the heads are split: it runs with one head only.
    LegacyVariant("qkln", "4.44.2", "phi", "PhiConfig", "PhiModel", "PhiForCausalLM",
                  {**_PHI, "qk_layernorm": True, "num_attention_heads": 1, "num_key_value_heads": 1}),
    LegacyModel("4.36.2", "phi", "PhiConfig", "PhiModel", "PhiForCausalLM", {**_PHI, "qk_layernorm": True}),
    LegacyModel("4.44.2", "phi3", "Phi3Config", "Phi3Model", "Phi3ForCausalLM",
                {**DECODER, "num_key_value_heads": 2, "sliding_window": 8}),
    LegacyModel("4.44.2", "qwen2", "Qwen2Config", "Qwen2Model", "Qwen2ForCausalLM",
                {**DECODER, "num_key_value_heads": 2, "use_sliding_window": True, "sliding_window": 8,
                 "max_window_layers": 1}),
    LegacyModel("4.44.2", "stablelm", "StableLmConfig", "StableLmModel", "StableLmForCausalLM",
                {**_STABLELM, "qk_layernorm": True, "use_parallel_residual": True, "use_qkv_bias": True}),
    LegacyVariant("sequential", "4.44.2", "stablelm", "StableLmConfig", "StableLmModel", "StableLmForCausalLM",
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
TINY_ENCODER = {**DECODER, "type_vocab_size": 2}
TINY_SEQ2SEQ = {
    "vocab_size": 128, "d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
    "decoder_attention_heads": 4, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "max_position_embeddings": 128,
    "init_std": 0.2, "decoder_start_token_id": 2, **TOKENS,
}
ENCODERS: list[LegacyModel] = [
    LegacyModel("4.44.2", "roberta", "RobertaConfig", "RobertaModel", "RobertaModel", TINY_ENCODER, head_auto="AutoModel"),
    LegacyModel("4.30.2", "roberta", "RobertaConfig", "RobertaModel", "RobertaModel", TINY_ENCODER, head_auto="AutoModel"),
    # a masked-LM head over the encoder (tied decoder, a bias of its own)
    LegacyModel("4.36.2", "roberta", "RobertaConfig", "RobertaModel", "RobertaForMaskedLM", TINY_ENCODER,
                head_auto="AutoModelForMaskedLM"),
    LegacyModel("4.44.2", "xlm_roberta", "XLMRobertaConfig", "XLMRobertaModel", "XLMRobertaModel", TINY_ENCODER,
                head_auto="AutoModel"),
    # embeddings narrower than the hidden size, projected up
    LegacyModel("4.44.2", "electra", "ElectraConfig", "ElectraModel", "ElectraModel", {**TINY_ENCODER, "embedding_size": 32},
                head_auto="AutoModel"),
    LegacyModel("4.36.2", "electra", "ElectraConfig", "ElectraModel", "ElectraForMaskedLM",
                {**TINY_ENCODER, "embedding_size": 32}, head_auto="AutoModelForMaskedLM"),
    # q_lin/k_lin/v_lin/out_lin, a Flash subclass, a mask of ones and zeros turned into -inf
    LegacyModel("4.44.2", "distilbert", "DistilBertConfig", "DistilBertModel", "DistilBertModel",
                {"vocab_size": 128, "dim": 64, "hidden_dim": 128, "n_layers": 2, "n_heads": 4,
                 "max_position_embeddings": 128, "initializer_range": 0.2, "pad_token_id": 0},
                head_auto="AutoModel"),
    # one layer group shared by every layer
    LegacyModel("4.44.2", "albert", "AlbertConfig", "AlbertModel", "AlbertModel",
                {**TINY_ENCODER, "embedding_size": 32, "num_hidden_groups": 1, "inner_group_num": 1},
                head_auto="AutoModel"),
    LegacyModel("4.44.2", "camembert", "CamembertConfig", "CamembertModel", "CamembertModel", TINY_ENCODER,
                head_auto="AutoModel"),
    # rotary positions in a bidirectional encoder, applied to the values too
    LegacyModel("4.44.2", "roformer", "RoFormerConfig", "RoFormerModel", "RoFormerModel",
                {**TINY_ENCODER, "embedding_size": 64, "rotary_value": True}, head_auto="AutoModel"),
    LegacyModel("4.44.2", "megatron_bert", "MegatronBertConfig", "MegatronBertModel", "MegatronBertModel", TINY_ENCODER,
                head_auto="AutoModel"),
    # a relative position bias computed once in the encoder and added to every layer's scores
    LegacyModel("4.44.2", "mpnet", "MPNetConfig", "MPNetModel", "MPNetModel",
                {**DECODER, "relative_attention_num_buckets": 32}, head_auto="AutoModel"),
    LegacyModel("4.44.2", "ernie", "ErnieConfig", "ErnieModel", "ErnieModel",
                {**TINY_ENCODER, "task_type_vocab_size": 3, "use_task_id": True}, head_auto="AutoModel"),
    # disentangled (content-to-position, position-to-content) attention
    LegacyModel("4.44.2", "deberta_v2", "DebertaV2Config", "DebertaV2Model", "DebertaV2Model",
                {**TINY_ENCODER, "relative_attention": True, "pos_att_type": ["p2c", "c2p"], "position_buckets": 16,
                 "max_relative_positions": -1}, head_auto="AutoModel"),
    # encoder-decoder models: cross-attention
    LegacyModel("4.44.2", "t5", "T5Config", "T5Model", "T5ForConditionalGeneration",
                {"vocab_size": 128, "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 4,
                 "relative_attention_num_buckets": 8, "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1},
                head_auto="AutoModelForSeq2SeqLM"),
    LegacyModel("4.44.2", "bart", "BartConfig", "BartModel", "BartForConditionalGeneration", TINY_SEQ2SEQ,
                head_auto="AutoModelForSeq2SeqLM"),
    LegacyModel("4.44.2", "marian", "MarianConfig", "MarianModel", "MarianMTModel", TINY_SEQ2SEQ,
                head_auto="AutoModelForSeq2SeqLM"),
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

# Remote code vendored in registry packages (tests/remote_corpus.py).
from tests.remote_corpus import REMOTE_CODE  # noqa: E402

WIDE_CORPUS = WIDE_CORPUS + REMOTE_CODE
