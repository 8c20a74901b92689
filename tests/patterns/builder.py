"""Small legacy remote-code repos, one per attention shape, written the way a 2023 author would.

Each shape is a set of features of one tiny decoder-only LM in transformers 4.36 style:
tuple caches (`past_key_value[0]`, `present`), a 4-D mask from
`_prepare_4d_causal_attention_mask`, inline eager math in the attention forward and
decoder layers that return tuples. The features are the shapes that the in-library corpus
does not cover: ALiBi, a concatenated `[q|k|v]` projection, multi-query attention by
broadcasting, parallel attention + MLP blocks, qk-norm, attention-logit softcapping,
sliding windows, a mixture-of-experts MLP, einsum products with a softmax of an expression,
an attention module built from plain numbers (no config) and a T5-style relative position
bias built inside the attention forward. Weights are deterministic random tensors
(torch only), so a repo builds anywhere; the legacy code itself runs in transformers 4.36.2.

    python -m tests.patterns.builder alibi /tmp/alibi_lm     # one shape
    python -m tests.patterns.builder --list
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

LEGACY_RELEASE = "4.36.2"


@dataclass(frozen=True)
class Shape:
    """The features of one legacy repo."""

    name: str
    alibi: bool = False  # ALiBi bias added to the scores instead of rotary embeddings
    fused_qkv: bool = False  # one Linear producing [q | k | v], then .split
    num_key_value_heads: int = 4  # 4: multi-head; 2: grouped (repeat_kv); 1: multi-query (broadcast)
    parallel: bool = False  # attention and MLP read the same normed input and are summed
    qk_norm: bool = False  # RMSNorm over the head dim of q and k
    softcap: float | None = None  # tanh soft-capping of the attention logits
    sliding_window: int | None = None  # mask from _prepare_4d_causal_attention_mask(..., sliding_window)
    moe: bool = False  # router + ModuleList of experts, top-2, renormalised
    einsum: bool = False  # einsum products; softmax of `scores * self.scale + attention_mask`
    plain_init: bool = False  # the attention module is built from plain numbers, no config
    relative_bias: bool = False  # T5-style relative position buckets, computed inside forward

    @property
    def model_type(self) -> str:
        return f"pattern_{self.name}"


SHAPES = {
    s.name: s
    for s in (
        Shape("alibi", alibi=True),
        Shape("fused_qkv", fused_qkv=True, num_key_value_heads=2),
        Shape("mqa", num_key_value_heads=1),
        Shape("parallel", parallel=True),
        Shape("qk_norm", qk_norm=True),
        Shape("softcap", softcap=5.0),
        Shape("sliding_window", sliding_window=5, num_key_value_heads=2),
        Shape("moe", moe=True, num_key_value_heads=2),
        Shape("einsum", einsum=True),
        Shape("plain_init", plain_init=True, num_key_value_heads=2),
        Shape("relative_bias", relative_bias=True),
    )
}

# Real models combine the shapes (Falcon: multi-query + fused qkv + parallel blocks; MPT:
# ALiBi + fused qkv + qk-norm; Mixtral: experts + sliding windows). `combined` holds six of
# them in one repo, the one the default test run verifies end to end. Left out: softcapping
# (it turns sdpa off, and with it the proof that the bias and the head groups reach sdpa
# correctly) and the sliding window (transformers 5's cache keeps only the window, while a
# legacy ALiBi bias spans every cached position: that pairing fails verification).
COMBINED = {
    "combined": replace(
        SHAPES["alibi"], name="combined", fused_qkv=True, num_key_value_heads=1, parallel=True, qk_norm=True, moe=True
    ),
    "alibi_fused_qknorm_parallel": replace(
        SHAPES["alibi"], name="alibi_fused_qknorm_parallel", fused_qkv=True, qk_norm=True, parallel=True
    ),
    "mqa_moe_window": replace(SHAPES["mqa"], name="mqa_moe_window", moe=True, sliding_window=5),
}
# The shapes refused until recently, together: einsum products, a softmax of an
# expression, an attention module built without a config and a relative bias built inside
# forward.
COMBINED["einsum_plain_relative"] = replace(
    SHAPES["einsum"], name="einsum_plain_relative", plain_init=True, relative_bias=True
)
DEFAULT_RUN = ("combined",)
NUM_BUCKETS, MAX_DISTANCE = 8, 16

HIDDEN, HEADS, LAYERS, VOCAB, INTERMEDIATE, EXPERTS = 32, 4, 2, 64, 48, 4


def build(shape: Shape | str, dest: Path) -> Path:
    """Write the legacy repo for `shape` into `dest` (created) and return it."""
    if isinstance(shape, str):
        shape = SHAPES.get(shape) or COMBINED[shape]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.json").write_text(json.dumps(_config(shape), indent=2) + "\n")
    (dest / "configuration_pattern_lm.py").write_text(CONFIGURATION.replace('"pattern_lm"', f'"{shape.model_type}"'))
    (dest / "modeling_pattern_lm.py").write_text(modeling_code(shape))
    torch.save(_state_dict(shape), dest / "pytorch_model.bin")
    return dest


def _config(shape: Shape) -> dict:
    return {
        "architectures": ["PatternLMForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_pattern_lm.PatternLMConfig",
            "AutoModel": "modeling_pattern_lm.PatternLMModel",
            "AutoModelForCausalLM": "modeling_pattern_lm.PatternLMForCausalLM",
        },
        "model_type": shape.model_type,
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": shape.num_key_value_heads,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "attn_logit_softcapping": shape.softcap,
        "sliding_window": shape.sliding_window,
        "num_local_experts": EXPERTS if shape.moe else None,
        "num_experts_per_tok": 2,
        **({"relative_attention_num_buckets": NUM_BUCKETS, "relative_attention_max_distance": MAX_DISTANCE}
           if shape.relative_bias else {}),
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": LEGACY_RELEASE,
    }


def _state_dict(shape: Shape) -> dict[str, torch.Tensor]:
    head_dim = HIDDEN // HEADS
    kv = shape.num_key_value_heads * head_dim
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes.append((p + "input_layernorm.weight", (HIDDEN,)))
        if shape.fused_qkv:
            shapes.append((p + "self_attn.qkv_proj.weight", (HIDDEN + 2 * kv, HIDDEN)))
        else:
            shapes += [(p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)), (p + "self_attn.k_proj.weight", (kv, HIDDEN))]
            shapes.append((p + "self_attn.v_proj.weight", (kv, HIDDEN)))
        shapes.append((p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)))
        if shape.qk_norm:
            shapes += [(p + "self_attn.q_norm.weight", (head_dim,)), (p + "self_attn.k_norm.weight", (head_dim,))]
        if shape.relative_bias:
            shapes.append((p + "self_attn.relative_attention_bias.weight", (NUM_BUCKETS, HEADS)))
        if not shape.parallel:
            shapes.append((p + "post_attention_layernorm.weight", (HIDDEN,)))
        experts = [f"mlp.experts.{e}." for e in range(EXPERTS)] if shape.moe else ["mlp."]
        if shape.moe:
            shapes.append((p + "mlp.gate.weight", (EXPERTS, HIDDEN)))
        for e in experts:
            shapes += [
                (p + e + "gate_proj.weight", (INTERMEDIATE, HIDDEN)),
                (p + e + "up_proj.weight", (INTERMEDIATE, HIDDEN)),
            ]
            shapes.append((p + e + "down_proj.weight", (HIDDEN, INTERMEDIATE)))
    shapes += [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name, size in shapes:
        noise = torch.randn(size, generator=generator)
        tensors[name] = 1.0 + 0.1 * noise if len(size) == 1 else 0.2 * noise
    return tensors


CONFIGURATION = '''\
""" PatternLM model configuration"""

from transformers.configuration_utils import PretrainedConfig


class PatternLMConfig(PretrainedConfig):
    model_type = "pattern_lm"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=None,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        attn_logit_softcapping=None,
        sliding_window=None,
        num_local_experts=None,
        num_experts_per_tok=2,
        initializer_range=0.02,
        use_cache=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        if num_key_value_heads is None:
            num_key_value_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.attn_logit_softcapping = attn_logit_softcapping
        self.sliding_window = sliding_window
        self.num_local_experts = num_local_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
'''


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "".join(pad + line if line.strip() else line for line in text.splitlines(keepends=True))


def modeling_code(shape: Shape) -> str:
    """The legacy modeling file for `shape`, assembled from the snippets below."""
    parts = [HEADER, RMS_NORM, ALIBI if shape.alibi else RELATIVE_BUCKETS if shape.relative_bias else ROTARY]
    if 1 < shape.num_key_value_heads < HEADS:
        parts.append(REPEAT_KV)
    parts.append(MLP)
    if shape.moe:
        parts.append(MOE)
    parts += [_attention(shape), _decoder_layer(shape), PRETRAINED, _base_model(shape), CAUSAL_LM]
    return "\n\n".join(p.strip("\n") + "\n" for p in parts)


def _attention(shape: Shape) -> str:
    init = ["self.config = config", "self.layer_idx = layer_idx", "self.hidden_size = config.hidden_size"]
    init += ["self.num_heads = config.num_attention_heads", "self.head_dim = self.hidden_size // self.num_heads"]
    init += ["self.num_key_value_heads = config.num_key_value_heads"]
    if 1 < shape.num_key_value_heads < HEADS:
        init.append("self.num_key_value_groups = self.num_heads // self.num_key_value_heads")
    if shape.fused_qkv:
        init.append(
            "self.qkv_proj = nn.Linear(\n"
            "    self.hidden_size, (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim, bias=False\n)"
        )
    else:
        init.append("self.q_proj = nn.Linear(self.hidden_size, self.num_heads * self.head_dim, bias=False)")
        init.append("self.k_proj = nn.Linear(self.hidden_size, self.num_key_value_heads * self.head_dim, bias=False)")
        init.append("self.v_proj = nn.Linear(self.hidden_size, self.num_key_value_heads * self.head_dim, bias=False)")
    init.append("self.o_proj = nn.Linear(self.num_heads * self.head_dim, self.hidden_size, bias=False)")
    if shape.qk_norm:
        init.append("self.q_norm = PatternLMRMSNorm(self.head_dim, eps=config.rms_norm_eps)")
        init.append("self.k_norm = PatternLMRMSNorm(self.head_dim, eps=config.rms_norm_eps)")
    if shape.softcap:
        init.append("self.attn_logit_softcapping = config.attn_logit_softcapping")
    if shape.einsum:
        init.append("self.scale = self.head_dim**-0.5")
    if shape.relative_bias:
        init += [
            "self.num_buckets = config.relative_attention_num_buckets",
            "self.max_distance = config.relative_attention_max_distance",
            "self.relative_attention_bias = nn.Embedding(self.num_buckets, self.num_heads)",
        ]
    if not shape.alibi and not shape.relative_bias:
        init.append(
            "self.rotary_emb = PatternLMRotaryEmbedding(\n"
            "    self.head_dim, max_position_embeddings=config.max_position_embeddings, base=config.rope_theta\n)"
        )

    body = ["bsz, q_len, _ = hidden_states.size()", ""]
    if shape.fused_qkv:
        body += [
            "qkv = self.qkv_proj(hidden_states)",
            "kv_size = self.num_key_value_heads * self.head_dim",
            "query_states, key_states, value_states = qkv.split([self.hidden_size, kv_size, kv_size], dim=-1)",
        ]
    else:
        body += [f"{n}_states = self.{n[0]}_proj(hidden_states)" for n in ("query", "key", "value")]
    body += [
        "query_states = query_states.view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)",
        "key_states = key_states.view(bsz, q_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)",
        "value_states = value_states.view(bsz, q_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)",
        "",
    ]
    if shape.qk_norm:
        body += ["query_states = self.q_norm(query_states)", "key_states = self.k_norm(key_states)", ""]
    body += ["kv_seq_len = key_states.shape[-2]", "if past_key_value is not None:"]
    body += ["    kv_seq_len += past_key_value[0].shape[-2]"]
    if not shape.alibi and not shape.relative_bias:
        body += [
            "cos, sin = self.rotary_emb(value_states, seq_len=kv_seq_len)",
            "query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin, position_ids)",
        ]
    body += [
        "",
        "if past_key_value is not None:",
        "    key_states = torch.cat([past_key_value[0], key_states], dim=2)",
        "    value_states = torch.cat([past_key_value[1], value_states], dim=2)",
        "past_key_value = (key_states, value_states) if use_cache else None",
        "",
    ]
    if 1 < shape.num_key_value_heads < HEADS:
        body += [
            "key_states = repeat_kv(key_states, self.num_key_value_groups)",
            "value_states = repeat_kv(value_states, self.num_key_value_groups)",
            "",
        ]
    elif shape.num_key_value_heads == 1:
        body.append("# multi-query: the single key/value head broadcasts over the query heads")
    if shape.einsum:
        body.append('attn_weights = torch.einsum("bhqd,bhkd->bhqk", query_states, key_states)')
    else:
        body.append("attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(self.head_dim)")
    if shape.relative_bias:
        body.append("position_bias = self.compute_bias(q_len, key_states.shape[-2], device=attn_weights.device)")
        if not shape.einsum:
            body.append("attn_weights = attn_weights + position_bias")
    if shape.alibi:
        body.append("attn_weights = attn_weights + alibi")
    if shape.softcap:
        body += [
            "if self.attn_logit_softcapping is not None:",
            "    attn_weights = attn_weights / self.attn_logit_softcapping",
            "    attn_weights = torch.tanh(attn_weights)",
            "    attn_weights = attn_weights * self.attn_logit_softcapping",
        ]
    if shape.einsum:
        bias = " + position_bias" if shape.relative_bias else ""
        body += [
            "attn_weights = nn.functional.softmax(",
            f"    attn_weights * self.scale{bias} + attention_mask, dim=-1, dtype=torch.float32",
            ").to(query_states.dtype)",
            'attn_output = torch.einsum("bhqk,bhkd->bhqd", attn_weights, value_states)',
            "",
        ]
    else:
        body += [
            "if attention_mask is not None:",
            "    attn_weights = attn_weights + attention_mask",
            "",
            "# upcast attention to fp32",
            "attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype)",
            "attn_output = torch.matmul(attn_weights, value_states)",
            "",
        ]
    body += [
        "attn_output = attn_output.transpose(1, 2).contiguous()",
        "attn_output = attn_output.reshape(bsz, q_len, self.hidden_size)",
        "attn_output = self.o_proj(attn_output)",
        "",
        "if not output_attentions:",
        "    attn_weights = None",
        "",
        "return attn_output, attn_weights, past_key_value",
    ]
    alibi_param = "        alibi: Optional[torch.Tensor] = None,\n" if shape.alibi else ""
    signature = "self, config: PatternLMConfig, layer_idx: Optional[int] = None"
    if shape.plain_init:
        init, signature = _without_config(init), PLAIN_SIGNATURE
    return (
        "class PatternLMAttention(nn.Module):\n"
        f"    def __init__({signature}):\n"
        "        super().__init__()\n" + _indent("\n".join(init) + "\n", 8) + "\n"
        + (_indent(COMPUTE_BIAS, 4) + "\n" if shape.relative_bias else "")
        + "    def forward(\n"
        "        self,\n"
        "        hidden_states: torch.Tensor,\n"
        "        attention_mask: Optional[torch.Tensor] = None,\n"
        "        position_ids: Optional[torch.LongTensor] = None,\n"
        + alibi_param
        + "        past_key_value: Optional[Tuple[torch.Tensor]] = None,\n"
        "        output_attentions: bool = False,\n"
        "        use_cache: bool = False,\n"
        "    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[Tuple[torch.Tensor]]]:\n"
        + _indent("\n".join(body) + "\n", 8)
    )


# An attention module built from numbers, as code ported from a research repo often is.
PLAIN_SIGNATURE = (
    "\n        self,\n        hidden_size: int,\n        num_heads: int,\n        num_key_value_heads: int,\n"
    "        max_position_embeddings: int = 2048,\n        rope_theta: float = 10000.0,\n"
    "        layer_idx: Optional[int] = None,\n    "
)
PLAIN_ARGUMENTS = {
    "config.hidden_size": "hidden_size",
    "config.num_attention_heads": "num_heads",
    "config.num_key_value_heads": "num_key_value_heads",
    "config.max_position_embeddings": "max_position_embeddings",
    "config.rope_theta": "rope_theta",
    # fixed in the code, as research code often has them
    "config.relative_attention_num_buckets": str(NUM_BUCKETS),
    "config.relative_attention_max_distance": str(MAX_DISTANCE),
}


def _without_config(init: list[str]) -> list[str]:
    lines = [line for line in init if line != "self.config = config"]
    for attribute, argument in PLAIN_ARGUMENTS.items():
        lines = [line.replace(attribute, argument) for line in lines]
    if any("config." in line for line in lines):
        raise ValueError(f"a plain-number attention module cannot read {[x for x in lines if 'config.' in x]}")
    return lines


def _decoder_layer(shape: Shape) -> str:
    mlp = "PatternLMSparseMoeBlock(config)" if shape.moe else "PatternLMMLP(config)"
    attention = "PatternLMAttention(config=config, layer_idx=layer_idx)"
    if shape.plain_init:
        attention = (
            "PatternLMAttention(\n    config.hidden_size,\n    config.num_attention_heads,\n"
            "    config.num_key_value_heads,\n    config.max_position_embeddings,\n    config.rope_theta,\n"
            "    layer_idx=layer_idx,\n)"
        )
    init = [
        "self.hidden_size = config.hidden_size",
        f"self.self_attn = {attention}",
        f"self.mlp = {mlp}",
        "self.input_layernorm = PatternLMRMSNorm(config.hidden_size, eps=config.rms_norm_eps)",
    ]
    if not shape.parallel:
        init.append("self.post_attention_layernorm = PatternLMRMSNorm(config.hidden_size, eps=config.rms_norm_eps)")
    alibi = "    alibi=alibi,\n" if shape.alibi else ""
    body = (
        "residual = hidden_states\n"
        "hidden_states = self.input_layernorm(hidden_states)\n\n"
        "attn_output, self_attn_weights, present_key_value = self.self_attn(\n"
        "    hidden_states=hidden_states,\n"
        "    attention_mask=attention_mask,\n"
        "    position_ids=position_ids,\n" + alibi + "    past_key_value=past_key_value,\n"
        "    output_attentions=output_attentions,\n"
        "    use_cache=use_cache,\n"
        ")\n"
    )
    if shape.parallel:
        body += (
            "# parallel block: attention and MLP both read the normed input\n"
            "mlp_output = self.mlp(hidden_states)\n"
            "hidden_states = residual + attn_output + mlp_output\n"
        )
    else:
        body += (
            "hidden_states = residual + attn_output\n\n"
            "residual = hidden_states\n"
            "hidden_states = self.post_attention_layernorm(hidden_states)\n"
            "hidden_states = self.mlp(hidden_states)\n"
            "hidden_states = residual + hidden_states\n"
        )
    body += (
        "\noutputs = (hidden_states,)\n"
        "if output_attentions:\n"
        "    outputs += (self_attn_weights,)\n"
        "if use_cache:\n"
        "    outputs += (present_key_value,)\n"
        "return outputs\n"
    )
    alibi_param = "        alibi: Optional[torch.Tensor] = None,\n" if shape.alibi else ""
    return (
        "class PatternLMDecoderLayer(nn.Module):\n"
        "    def __init__(self, config: PatternLMConfig, layer_idx: int):\n"
        "        super().__init__()\n" + _indent("\n".join(init) + "\n", 8) + "\n"
        "    def forward(\n"
        "        self,\n"
        "        hidden_states: torch.Tensor,\n"
        "        attention_mask: Optional[torch.Tensor] = None,\n"
        "        position_ids: Optional[torch.LongTensor] = None,\n"
        + alibi_param
        + "        past_key_value: Optional[Tuple[torch.Tensor]] = None,\n"
        "        output_attentions: Optional[bool] = False,\n"
        "        use_cache: Optional[bool] = False,\n"
        "    ) -> Tuple[torch.FloatTensor, Optional[Tuple[torch.FloatTensor, torch.FloatTensor]]]:\n" + _indent(body, 8)
    )


def _base_model(shape: Shape) -> str:
    window = ", sliding_window=self.config.sliding_window" if shape.sliding_window else ""
    if shape.alibi:
        alibi = (
            "if attention_mask is None:\n"
            "    attention_mask = torch.ones(\n"
            "        (batch_size, seq_length + past_key_values_length), dtype=torch.long, device=inputs_embeds.device\n"
            "    )\n"
            "alibi = build_alibi_tensor(attention_mask, self.config.num_attention_heads, inputs_embeds.dtype)\n"
        )
        layer_alibi = "                alibi=alibi,\n"
    else:
        alibi = layer_alibi = ""
    return (
        """\
class PatternLMModel(PatternLMPreTrainedModel):
    def __init__(self, config: PatternLMConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size

        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [PatternLMDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = PatternLMRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[List[torch.FloatTensor]] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> Union[Tuple, BaseModelOutputWithPast]:
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict

        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("You cannot specify both input_ids and inputs_embeds at the same time")
        elif input_ids is not None:
            batch_size, seq_length = input_ids.shape
        elif inputs_embeds is not None:
            batch_size, seq_length, _ = inputs_embeds.shape
        else:
            raise ValueError("You have to specify either input_ids or inputs_embeds")

        past_key_values_length = 0
        if past_key_values is not None:
            past_key_values_length = past_key_values[0][0].shape[2]

        if position_ids is None:
            device = input_ids.device if input_ids is not None else inputs_embeds.device
            position_ids = torch.arange(
                past_key_values_length, seq_length + past_key_values_length, dtype=torch.long, device=device
            )
            position_ids = position_ids.unsqueeze(0)

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)

"""
        + _indent(alibi, 8)
        + f"""\
        attention_mask = _prepare_4d_causal_attention_mask(
            attention_mask, (batch_size, seq_length), inputs_embeds, past_key_values_length{window}
        )

        hidden_states = inputs_embeds

        all_hidden_states = () if output_hidden_states else None
        all_self_attns = () if output_attentions else None
        next_decoder_cache = () if use_cache else None

        for idx, decoder_layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden_states += (hidden_states,)

            past_key_value = past_key_values[idx] if past_key_values is not None else None

            layer_outputs = decoder_layer(
                hidden_states,
                attention_mask=attention_mask,
                position_ids=position_ids,
{layer_alibi}                past_key_value=past_key_value,
                output_attentions=output_attentions,
                use_cache=use_cache,
            )

            hidden_states = layer_outputs[0]

            if use_cache:
                next_decoder_cache += (layer_outputs[2 if output_attentions else 1],)

            if output_attentions:
                all_self_attns += (layer_outputs[1],)

        hidden_states = self.norm(hidden_states)

        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        next_cache = next_decoder_cache if use_cache else None
        if not return_dict:
            return tuple(v for v in [hidden_states, next_cache, all_hidden_states, all_self_attns] if v is not None)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=next_cache,
            hidden_states=all_hidden_states,
            attentions=all_self_attns,
        )
"""
    )


HEADER = '''\
""" PyTorch PatternLM model (written against transformers 4.36)."""
import math
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import CrossEntropyLoss

from transformers.activations import ACT2FN
from transformers.modeling_attn_mask_utils import _prepare_4d_causal_attention_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel

from .configuration_pattern_lm import PatternLMConfig
'''

RMS_NORM = """\
class PatternLMRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)
"""

ROTARY = """\
class PatternLMRotaryEmbedding(nn.Module):
    def __init__(self, dim, max_position_embeddings=2048, base=10000, device=None):
        super().__init__()
        self.dim = dim
        self.max_position_embeddings = max_position_embeddings
        self.base = base
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.dim, 2).float().to(device) / self.dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._set_cos_sin_cache(
            seq_len=max_position_embeddings, device=self.inv_freq.device, dtype=torch.get_default_dtype()
        )

    def _set_cos_sin_cache(self, seq_len, device, dtype):
        self.max_seq_len_cached = seq_len
        t = torch.arange(self.max_seq_len_cached, device=device, dtype=self.inv_freq.dtype)
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos().to(dtype), persistent=False)
        self.register_buffer("sin_cached", emb.sin().to(dtype), persistent=False)

    def forward(self, x, seq_len=None):
        if seq_len > self.max_seq_len_cached:
            self._set_cos_sin_cache(seq_len=seq_len, device=x.device, dtype=x.dtype)
        return (
            self.cos_cached[:seq_len].to(dtype=x.dtype),
            self.sin_cached[:seq_len].to(dtype=x.dtype),
        )


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, position_ids):
    cos = cos[position_ids].unsqueeze(1)
    sin = sin[position_ids].unsqueeze(1)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed
"""

ALIBI = '''\
def build_alibi_tensor(attention_mask: torch.Tensor, num_heads: int, dtype: torch.dtype) -> torch.Tensor:
    """ALiBi bias `[batch, heads, 1, kv_len]`: a per-head slope times the key position, counted
    over attended tokens only so that left padding does not shift it (Press et al., 2021)."""
    closest_power_of_2 = 2 ** math.floor(math.log2(num_heads))
    base = torch.tensor(2 ** (-(2 ** -(math.log2(closest_power_of_2) - 3))), dtype=torch.float32)
    powers = torch.arange(1, 1 + closest_power_of_2, dtype=torch.int32)
    slopes = torch.pow(base, powers)
    if closest_power_of_2 != num_heads:
        extra_base = torch.tensor(2 ** (-(2 ** -(math.log2(2 * closest_power_of_2) - 3))), dtype=torch.float32)
        num_remaining_heads = min(closest_power_of_2, num_heads - closest_power_of_2)
        extra_powers = torch.arange(1, 1 + 2 * num_remaining_heads, 2, dtype=torch.int32)
        slopes = torch.cat([slopes, torch.pow(extra_base, extra_powers)], dim=0)
    slopes = slopes.to(attention_mask.device)
    positions = ((attention_mask.cumsum(dim=-1) - 1) * attention_mask)[:, None, None, :]
    alibi = slopes[None, :, None, None] * positions
    return alibi.to(dtype)
'''

RELATIVE_BUCKETS = '''\
def relative_position_bucket(relative_position, num_buckets=32, max_distance=128):
    """T5's buckets for a causal model: exact for near keys, logarithmic up to max_distance."""
    relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    relative_position_if_large = max_exact + (
        torch.log(relative_position.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    relative_position_if_large = torch.min(
        relative_position_if_large, torch.full_like(relative_position_if_large, num_buckets - 1)
    )
    return torch.where(is_small, relative_position, relative_position_if_large)
'''

COMPUTE_BIAS = """\
def compute_bias(self, query_length, key_length, device=None):
    context_position = torch.arange(key_length - query_length, key_length, dtype=torch.long, device=device)[:, None]
    memory_position = torch.arange(key_length, dtype=torch.long, device=device)[None, :]
    relative_position = memory_position - context_position
    buckets = relative_position_bucket(relative_position, self.num_buckets, self.max_distance)
    values = self.relative_attention_bias(buckets)
    return values.permute([2, 0, 1]).unsqueeze(0)
"""

REPEAT_KV = """\
def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return hidden_states
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)
"""

MLP = """\
class PatternLMMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN["silu"]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
"""

MOE = '''\
class PatternLMSparseMoeBlock(nn.Module):
    """Top-k routed experts; the chosen experts' weights are renormalised to sum to one."""

    def __init__(self, config):
        super().__init__()
        self.num_experts = config.num_local_experts
        self.top_k = config.num_experts_per_tok
        self.gate = nn.Linear(config.hidden_size, self.num_experts, bias=False)
        self.experts = nn.ModuleList([PatternLMMLP(config) for _ in range(self.num_experts)])

    def forward(self, hidden_states):
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        hidden_states = hidden_states.view(-1, hidden_dim)
        router_logits = self.gate(hidden_states)
        routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        routing_weights, selected_experts = torch.topk(routing_weights, self.top_k, dim=-1)
        routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
        routing_weights = routing_weights.to(hidden_states.dtype)

        final_hidden_states = torch.zeros_like(hidden_states)
        expert_mask = F.one_hot(selected_experts, num_classes=self.num_experts).permute(2, 1, 0)
        for expert_idx in range(self.num_experts):
            idx, top_x = torch.where(expert_mask[expert_idx])
            if top_x.shape[0] == 0:
                continue
            current_state = hidden_states[top_x]
            current_hidden_states = self.experts[expert_idx](current_state) * routing_weights[top_x, idx, None]
            final_hidden_states.index_add_(0, top_x, current_hidden_states.to(hidden_states.dtype))
        return final_hidden_states.reshape(batch_size, sequence_length, hidden_dim)
'''

PRETRAINED = """\
class PatternLMPreTrainedModel(PreTrainedModel):
    config_class = PatternLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PatternLMDecoderLayer"]
    _skip_keys_device_placement = "past_key_values"

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
"""

CAUSAL_LM = """\
class PatternLMForCausalLM(PatternLMPreTrainedModel):
    _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config):
        super().__init__(config)
        self.model = PatternLMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[List[torch.FloatTensor]] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> Union[Tuple, CausalLMOutputWithPast]:
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict

        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
        )

        hidden_states = outputs[0]
        logits = self.lm_head(hidden_states)
        logits = logits.float()

        loss = None
        if labels is not None:
            shift_logits = logits[..., :-1, :].contiguous()
            shift_labels = labels[..., 1:].contiguous()
            loss_fct = CrossEntropyLoss()
            loss = loss_fct(shift_logits.view(-1, self.config.vocab_size), shift_labels.view(-1))

        if not return_dict:
            output = (logits,) + outputs[1:]
            return (loss,) + output if loss is not None else output

        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def prepare_inputs_for_generation(
        self, input_ids, past_key_values=None, attention_mask=None, inputs_embeds=None, **kwargs
    ):
        if past_key_values:
            input_ids = input_ids[:, -1:]

        position_ids = kwargs.get("position_ids", None)
        if attention_mask is not None and position_ids is None:
            position_ids = attention_mask.long().cumsum(-1) - 1
            position_ids.masked_fill_(attention_mask == 0, 1)
            if past_key_values:
                position_ids = position_ids[:, -1].unsqueeze(-1)

        if inputs_embeds is not None and past_key_values is None:
            model_inputs = {"inputs_embeds": inputs_embeds}
        else:
            model_inputs = {"input_ids": input_ids}

        model_inputs.update(
            {
                "position_ids": position_ids,
                "past_key_values": past_key_values,
                "use_cache": kwargs.get("use_cache"),
                "attention_mask": attention_mask,
            }
        )
        return model_inputs

    @staticmethod
    def _reorder_cache(past_key_values, beam_idx):
        reordered_past = ()
        for layer_past in past_key_values:
            reordered_past += (
                tuple(past_state.index_select(0, beam_idx.to(past_state.device)) for past_state in layer_past),
            )
        return reordered_past
"""


def main(argv: list[str]) -> int:
    if not argv or argv[0] == "--list":
        print("\n".join([*SHAPES, *COMBINED]))
        return 0
    print(build(argv[0], Path(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
