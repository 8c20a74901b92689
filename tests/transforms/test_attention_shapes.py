"""Attention shapes beyond the plain one: an additive position bias (ALiBi), a concatenated
`[q|k|v]` projection, heads restored and merged in one statement, softcapped logits and
multi-query attention by broadcasting. Each ported module is run against its legacy form."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import pytest
import torch

from tests.transforms.helpers import FILENAME, check_noop, check_transformed, transformed
from transforms.attention_interface import RouteAttention
from transforms.backend_flags import DeclareBackends

# A fused [q|k|v] projection, ALiBi added to the scores, transpose and merge in one statement.
ALIBI_LEGACY = textwrap.dedent("""\
    import math

    import torch
    from torch import nn


    class BarAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.num_heads = config.num_attention_heads
            self.head_dim = config.hidden_size // self.num_heads
            self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
            self.out = nn.Linear(config.hidden_size, config.hidden_size)

        def forward(self, hidden_states, alibi, attention_mask=None):
            bsz, q_len, _ = hidden_states.size()
            query, key, value = self.qkv(hidden_states).split(self.num_heads * self.head_dim, dim=-1)
            query = query.view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
            key = key.view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
            value = value.view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)

            scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.head_dim)
            scores = scores + alibi
            if attention_mask is not None:
                scores = scores + attention_mask
            probs = nn.functional.softmax(scores, dim=-1)
            context = torch.matmul(probs, value)
            context = context.transpose(1, 2).reshape(bsz, q_len, -1)
            return self.out(context), probs
""")

ALIBI_PORTED = textwrap.dedent("""\
    import math

    import torch
    from torch import nn
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


    def eager_attention_forward(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float,
        dropout: float = 0.0,
        position_bias: torch.Tensor | None = None,
        **kwargs,
    ):
        scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
        scores = scores + position_bias
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = nn.functional.softmax(scores, dim=-1)
        attn_output = torch.matmul(probs, value)
        attn_output = attn_output.transpose(1, 2).contiguous()
        return attn_output, probs


    class BarAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.num_heads = config.num_attention_heads
            self.head_dim = config.hidden_size // self.num_heads
            self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
            self.out = nn.Linear(config.hidden_size, config.hidden_size)
            self.scaling = 1 / math.sqrt(self.head_dim)
            self.is_causal = True
            self.num_key_value_groups = 1

        def forward(self, hidden_states, alibi, attention_mask=None, **kwargs):
            bsz, q_len, _ = hidden_states.size()
            query, key, value = self.qkv(hidden_states).split(self.num_heads * self.head_dim, dim=-1)
            query = query.view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
            key = key.view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
            value = value.view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)

            if self.config._attn_implementation == "paged|eager" and attention_mask is not None:
                attention_mask = attention_mask + alibi  # that kernel adds the mask but never a position bias

            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
            context, probs = attention_interface(
                self,
                query,
                key,
                value,
                attention_mask,
                dropout=0.0,
                scaling=self.scaling,
                position_bias=alibi,
                **kwargs,
            )
            context = context.reshape(bsz, q_len, -1)
            return self.out(context), probs
""")

ROOT = textwrap.dedent("""\


    class BarPreTrainedModel(PreTrainedModel):
        base_model_prefix = "model"
""")


def _exec(code: str) -> dict:
    namespace: dict = {}
    exec(compile(code, FILENAME, "exec"), namespace)
    return namespace


def _config(implementation: str, **extra) -> SimpleNamespace:
    return SimpleNamespace(hidden_size=32, num_attention_heads=4, _attn_implementation=implementation, **extra)


def _causal_mask(batch: int, length: int) -> torch.Tensor:
    blocked = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
    mask = torch.zeros(length, length).masked_fill(blocked, torch.finfo(torch.float32).min)
    return mask[None, None].expand(batch, 1, length, length)


def _alibi(batch: int, heads: int, length: int) -> torch.Tensor:
    """`[batch, heads, 1, kv]`, broadcast over the queries as legacy ALiBi code builds it."""
    slopes = torch.tensor([2.0 ** -(8 * (h + 1) / heads) for h in range(heads)])
    return (slopes[None, :, None, None] * torch.arange(length)[None, None, None, :]).expand(batch, -1, -1, -1)


def test_alibi_reaches_the_interface_as_position_bias():
    state = check_transformed(ALIBI_LEGACY, ALIBI_PORTED, RouteAttention)
    assert state.facts["additive_bias"] is True


def test_alibi_ported_code_is_unchanged_by_a_second_run():
    check_noop(ALIBI_PORTED, RouteAttention)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_alibi_module_computes_the_legacy_math(implementation):
    torch.manual_seed(0)
    legacy = _exec(ALIBI_LEGACY)["BarAttention"](_config("eager")).eval()
    ported = _exec(ALIBI_PORTED)["BarAttention"](_config(implementation)).eval()
    ported.load_state_dict(legacy.state_dict())
    hidden, alibi, mask = torch.randn(2, 6, 32), _alibi(2, 4, 6), _causal_mask(2, 6)
    with torch.no_grad():
        expected, actual = legacy(hidden, alibi, mask)[0], ported(hidden, alibi, mask)[0]
    assert torch.allclose(actual, expected, atol=1e-5 if implementation == "sdpa" else 1e-6)


def test_alibi_model_claims_no_kernel_that_drops_the_bias():
    legacy = "from transformers import PreTrainedModel\n" + ALIBI_LEGACY + ROOT
    output, state = transformed(legacy, (RouteAttention, DeclareBackends))
    assert not state.diagnostics
    assert "    _supports_sdpa = True\n" in output
    assert "    _supports_flash_attn = False\n" in output and "    _supports_flex_attn = False\n" in output


def test_a_bias_built_from_the_scores_inside_the_math_is_refused():
    """A bias built before the math, or from the scores' device and dtype only, is passed as
    `position_bias` (test_attention_bias.py); one built from the scores tensor itself stays in
    the math, where it reads forward's locals."""
    legacy = ALIBI_LEGACY.replace(
        "        scores = scores + alibi\n",
        "        bias = scores.new_zeros(q_len, q_len)\n        scores = scores + bias\n",
    )
    output, state = transformed(legacy, RouteAttention)
    assert output == legacy
    assert [d.line for d in state.diagnostics] == [24]  # the line that builds the bias
    assert "which the interface cannot pass" in state.diagnostics[0].render()


def test_a_plain_mask_addition_is_no_position_bias():
    legacy = ALIBI_LEGACY.replace("        scores = scores + alibi\n", "")
    output, state = transformed(legacy, RouteAttention)
    assert "position_bias" not in output and "additive_bias" not in state.facts


# -- softcapping --------------------------------------------------------------------------
SOFTCAP_LEGACY = ALIBI_LEGACY.replace(
    "    def forward(self, hidden_states, alibi, attention_mask=None):\n",
    "    def forward(self, hidden_states, attention_mask=None):\n",
).replace(
    "        scores = scores + alibi\n",
    "        if self.config.attn_logit_softcapping is not None:\n"
    "            scores = scores / self.config.attn_logit_softcapping\n"
    "            scores = torch.tanh(scores)\n"
    "            scores = scores * self.config.attn_logit_softcapping\n",
)


def test_softcap_stays_in_the_eager_math_and_reaches_kernels_that_apply_it():
    output, state = transformed(
        "from transformers import PreTrainedModel\n" + SOFTCAP_LEGACY + ROOT, (RouteAttention, DeclareBackends)
    )
    assert not state.diagnostics
    assert "            softcap=self.config.attn_logit_softcapping,\n" in output
    assert "        scores = scores * module.config.attn_logit_softcapping\n" in output  # not folded into scaling
    assert "    _supports_sdpa = False\n" in output and "    _supports_flash_attn = False\n" in output
    torch.manual_seed(0)
    config = _config("eager", attn_logit_softcapping=2.0)
    legacy = _exec(SOFTCAP_LEGACY)["BarAttention"](config).eval()
    ported = _exec(output.split("\n\nclass BarPreTrainedModel")[0])["BarAttention"](config).eval()
    ported.load_state_dict(legacy.state_dict())
    hidden, mask = torch.randn(2, 6, 32) * 4, _causal_mask(2, 6)
    with torch.no_grad():
        assert torch.allclose(ported(hidden, mask)[0], legacy(hidden, mask)[0], atol=1e-6)


# -- multi-query by broadcasting ----------------------------------------------------------
MQA_LEGACY = (
    ALIBI_LEGACY.replace(
        "    def forward(self, hidden_states, alibi, attention_mask=None):\n",
        "    def forward(self, hidden_states, attention_mask=None):\n",
    )
    .replace("        scores = scores + alibi\n", "")
    .replace(
        "self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)",
        "self.qkv = nn.Linear(config.hidden_size, config.hidden_size + 2 * self.head_dim)",
    )
    .replace(
        "self.qkv(hidden_states).split(self.num_heads * self.head_dim, dim=-1)",
        "self.qkv(hidden_states).split([self.num_heads * self.head_dim, self.head_dim, self.head_dim], dim=-1)",
    )
    .replace(
        "key = key.view(bsz, q_len, self.num_heads, self.head_dim)", "key = key.view(bsz, q_len, 1, self.head_dim)"
    )
    .replace(
        "value = value.view(bsz, q_len, self.num_heads, self.head_dim)",
        "value = value.view(bsz, q_len, 1, self.head_dim)",
    )
)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_multi_query_broadcast_declares_its_groups(implementation):
    output, state = transformed(MQA_LEGACY, RouteAttention)
    assert not state.diagnostics
    assert "        self.num_key_value_groups = self.num_heads // 1\n" in output
    torch.manual_seed(0)
    legacy = _exec(MQA_LEGACY)["BarAttention"](_config("eager")).eval()
    ported = _exec(output)["BarAttention"](_config(implementation)).eval()
    ported.load_state_dict(legacy.state_dict())
    hidden, mask = torch.randn(2, 6, 32), _causal_mask(2, 6)
    with torch.no_grad():
        assert torch.allclose(ported(hidden, mask)[0], legacy(hidden, mask)[0], atol=1e-5)


def test_heads_repeated_before_the_math_are_not_repeated_again():
    legacy = MQA_LEGACY.replace(
        "        scores = torch.matmul",
        "        key = key.expand(-1, self.num_heads, -1, -1)\n"
        "        value = value.expand(-1, self.num_heads, -1, -1)\n"
        "        scores = torch.matmul",
    )
    output, state = transformed(legacy, RouteAttention)
    assert not state.diagnostics
    assert "        self.num_key_value_groups = 1\n" in output


def test_a_rescale_after_the_cap_stays_in_the_eager_math():
    """`s / cap` folds into `scaling`; `s * cap` after the tanh does not commute with it."""
    legacy = SOFTCAP_LEGACY.replace(
        "        if self.config.attn_logit_softcapping is not None:\n"
        "            scores = scores / self.config.attn_logit_softcapping\n"
        "            scores = torch.tanh(scores)\n"
        "            scores = scores * self.config.attn_logit_softcapping\n",
        "        scores = scores / self.config.attn_logit_softcapping\n"
        "        scores = torch.tanh(scores)\n"
        "        scores = scores * self.config.attn_logit_softcapping\n",
    )
    output, state = transformed(legacy, RouteAttention)
    assert not state.diagnostics
    assert "self.scaling = (1 / math.sqrt(self.head_dim)) * (1 / self.config.attn_logit_softcapping)" in output
    assert "    scores = scores * module.config.attn_logit_softcapping\n" in output
    assert "softcap=" not in output and state.facts["softcap_not_passed"]  # flex would divide twice
    torch.manual_seed(0)
    config = _config("eager", attn_logit_softcapping=2.0)
    legacy_module, ported = _exec(legacy)["BarAttention"](config).eval(), _exec(output)["BarAttention"](config).eval()
    ported.load_state_dict(legacy_module.state_dict())
    hidden, mask = torch.randn(2, 6, 32) * 4, _causal_mask(2, 6)
    with torch.no_grad():
        assert torch.allclose(ported(hidden, mask)[0], legacy_module(hidden, mask)[0], atol=1e-6)
