"""Position biases built inside the attention forward (T5-style relative buckets): computed
before the interface call, from the query's device and dtype, and passed as `position_bias`,
which sdpa adds too; no flash kernel is claimed for a model that needs one (CONTRACT B2, B4)."""

from __future__ import annotations

import functools
import textwrap
from types import SimpleNamespace

import pytest
import torch

from tests.transforms.helpers import FILENAME, check_noop, check_transformed, transformed
from transforms.attention_interface import RouteAttention
from transforms.backend_flags import DeclareBackends

LEGACY = textwrap.dedent("""\
    import torch
    from torch import nn


    class RelAttention(nn.Module):
        def __init__(self, config, has_relative_attention_bias=False):
            super().__init__()
            self.config = config
            self.n_heads = config.num_attention_heads
            self.d_kv = config.hidden_size // self.n_heads
            self.has_relative_attention_bias = has_relative_attention_bias
            self.q = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
            self.k = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
            self.v = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
            self.o = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
            if self.has_relative_attention_bias:
                self.relative_attention_bias = nn.Embedding(8, self.n_heads)

        def compute_bias(self, query_length, key_length, device=None):
            context_position = torch.arange(query_length, dtype=torch.long, device=device)[:, None]
            memory_position = torch.arange(key_length, dtype=torch.long, device=device)[None, :]
            buckets = (memory_position - context_position).abs().clamp(max=7)
            return self.relative_attention_bias(buckets).permute([2, 0, 1]).unsqueeze(0)

        def forward(self, hidden_states, mask=None, position_bias=None):
            batch_size, seq_length = hidden_states.shape[:2]

            def shape(states):
                return states.view(batch_size, -1, self.n_heads, self.d_kv).transpose(1, 2)

            query_states = shape(self.q(hidden_states))
            key_states = shape(self.k(hidden_states))
            value_states = shape(self.v(hidden_states))

            scores = torch.matmul(query_states, key_states.transpose(3, 2))
            if position_bias is None:
                if not self.has_relative_attention_bias:
                    position_bias = torch.zeros((1, self.n_heads, seq_length, seq_length), device=scores.device, dtype=scores.dtype)
                else:
                    position_bias = self.compute_bias(seq_length, seq_length, device=scores.device)
            scores += position_bias
            if mask is not None:
                scores = scores + mask
            attn_weights = nn.functional.softmax(scores.float(), dim=-1).type_as(scores)
            attn_output = torch.matmul(attn_weights, value_states)
            attn_output = attn_output.transpose(1, 2).contiguous().view(batch_size, -1, self.n_heads * self.d_kv)
            return self.o(attn_output), position_bias
""")

PORTED = textwrap.dedent("""\
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
        scores = torch.matmul(query, key.transpose(3, 2)) * scaling
        scores += position_bias
        if attention_mask is not None:
            scores = scores + attention_mask
        attn_weights = nn.functional.softmax(scores.float(), dim=-1).type_as(scores)
        attn_output = torch.matmul(attn_weights, value)
        attn_output = attn_output.transpose(1, 2).contiguous()
        return attn_output, attn_weights


    class RelAttention(nn.Module):
        def __init__(self, config, has_relative_attention_bias=False):
            super().__init__()
            self.config = config
            self.n_heads = config.num_attention_heads
            self.d_kv = config.hidden_size // self.n_heads
            self.has_relative_attention_bias = has_relative_attention_bias
            self.q = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
            self.k = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
            self.v = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
            self.o = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
            if self.has_relative_attention_bias:
                self.relative_attention_bias = nn.Embedding(8, self.n_heads)
            self.scaling = 1.0
            self.is_causal = True
            self.num_key_value_groups = 1

        def compute_bias(self, query_length, key_length, device=None):
            context_position = torch.arange(query_length, dtype=torch.long, device=device)[:, None]
            memory_position = torch.arange(key_length, dtype=torch.long, device=device)[None, :]
            buckets = (memory_position - context_position).abs().clamp(max=7)
            return self.relative_attention_bias(buckets).permute([2, 0, 1]).unsqueeze(0)

        def forward(self, hidden_states, mask=None, position_bias=None, **kwargs):
            batch_size, seq_length = hidden_states.shape[:2]

            def shape(states):
                return states.view(batch_size, -1, self.n_heads, self.d_kv).transpose(1, 2)

            query_states = shape(self.q(hidden_states))
            key_states = shape(self.k(hidden_states))
            value_states = shape(self.v(hidden_states))

            if position_bias is None:
                if not self.has_relative_attention_bias:
                    position_bias = torch.zeros((1, self.n_heads, seq_length, seq_length), device=query_states.device, dtype=query_states.dtype)
                else:
                    position_bias = self.compute_bias(seq_length, seq_length, device=query_states.device)

            if self.config._attn_implementation == "paged|eager" and mask is not None:
                mask = mask + position_bias  # that kernel adds the mask but never a position bias

            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
            attn_output, attn_weights = attention_interface(
                self,
                query_states,
                key_states,
                value_states,
                mask,
                dropout=0.0,
                scaling=self.scaling,
                position_bias=position_bias,
                **kwargs,
            )
            attn_output = attn_output.contiguous().view(batch_size, -1, self.n_heads * self.d_kv)
            return self.o(attn_output), position_bias
""")

ROOT = textwrap.dedent("""\


    class RelPreTrainedModel(PreTrainedModel):
        base_model_prefix = "model"
""")


def test_a_bias_built_between_scores_and_softmax_moves_before_the_call():
    state = check_transformed(LEGACY, PORTED, RouteAttention)
    assert state.facts["additive_bias"] is True


def test_ported_code_is_unchanged_by_a_second_run():
    check_noop(PORTED, RouteAttention)


def _exec(code: str) -> dict:
    namespace: dict = {}
    exec(compile(code, FILENAME, "exec"), namespace)
    return namespace


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("own_table", [True, False])
def test_ported_module_adds_the_same_bias(implementation, own_table):
    config = SimpleNamespace(hidden_size=32, num_attention_heads=4, _attn_implementation=implementation)
    torch.manual_seed(0)
    legacy = _exec(LEGACY)["RelAttention"](config, has_relative_attention_bias=own_table).eval()
    ported = _exec(PORTED)["RelAttention"](config, has_relative_attention_bias=own_table).eval()
    ported.load_state_dict(legacy.state_dict())
    blocked = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)
    mask = torch.zeros(6, 6).masked_fill(blocked, torch.finfo(torch.float32).min)[None, None].expand(2, 1, 6, 6)
    hidden = torch.randn(2, 6, 32)
    with torch.no_grad():
        (expected, expected_bias), (actual, bias) = legacy(hidden, mask), ported(hidden, mask)
    assert torch.equal(bias, expected_bias)  # handed on to the next layer as before
    assert torch.allclose(actual, expected, atol=1e-5 if implementation == "sdpa" else 1e-6)


def test_a_model_with_a_built_bias_claims_no_flash_kernel():
    output, state = transformed("from transformers import PreTrainedModel\n" + LEGACY + ROOT, (RouteAttention, DeclareBackends))
    assert not state.diagnostics
    assert "    _supports_sdpa = True\n" in output and "    _supports_flash_attn = False\n" in output


def test_a_bias_built_from_the_scores_values_is_not_moved():
    """Only the scores' device and dtype may be read from them before the product exists."""
    legacy = LEGACY.replace(
        "position_bias = self.compute_bias(seq_length, seq_length, device=scores.device)",
        "position_bias = self.compute_bias(seq_length, seq_length, device=scores.device) * scores.std()",
    )
    output, state = transformed(legacy, RouteAttention)
    assert output == legacy
    assert [d.line for d in state.diagnostics] == [36]
    assert "which the interface cannot pass" in state.diagnostics[0].render()


def test_a_rescale_after_the_bias_claims_no_kernel():
    """sdpa and flex add `position_bias` after `scaling`; a legacy rescale after the bias
    scales the bias as well, so only eager reproduces it."""
    legacy = LEGACY.replace("        scores += position_bias\n", "        scores += position_bias\n        scores = scores * 0.5\n")
    output, state = transformed("from transformers import PreTrainedModel\n" + legacy + ROOT, (RouteAttention, DeclareBackends))
    assert not state.diagnostics
    assert state.facts["bias_rescaled"] is True
    assert "    scores = scores * 0.5\n" in output  # kept in the eager math, after the bias
    assert "    _supports_sdpa = False\n" in output and "    _supports_flash_attn = False\n" in output
    assert "bias_rescaled" not in transformed(LEGACY, RouteAttention)[1].facts


def test_a_per_head_bias_table_keeps_its_attention_projections_whole():
    """Split by heads, a rank would hold half the heads and the whole `[1, heads, q, k]` bias."""
    import libcst as cst

    from porter.analysis import analyse
    from porter.parallel import infer_plans
    from tests.patterns.builder import CONFIGURATION, modeling_code
    from tests.patterns.builder import SHAPES as PATTERN_SHAPES

    def plan(shape):
        files = {"modeling_pattern_lm.py": modeling_code(shape), "configuration_pattern_lm.py": CONFIGURATION}
        return infer_plans(analyse({n: cst.parse_module(t) for n, t in files.items()})).tp_plan

    with_table, without = plan(PATTERN_SHAPES["relative_bias"]), plan(PATTERN_SHAPES["einsum"])
    assert {with_table[f"layers.*.self_attn.{p}_proj"] for p in "qkvo"} == {"replicate"}
    assert with_table["layers.*.mlp.down_proj"] == "rowwise"
    assert without["layers.*.self_attn.q_proj"] == "colwise" and without["layers.*.self_attn.o_proj"] == "rowwise"


# A bias input sliced to the key length inside `if bias is not None:`, between the score
# product and the softmax, from lengths the forward computes there (ALiBi tables of MPT's shape).
SLICED = textwrap.dedent("""\
    import torch
    from torch import nn


    class SlicedBiasAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.n_heads = config.num_attention_heads
            self.head_dim = config.hidden_size // self.n_heads
            self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
            self.softmax_scale = self.head_dim ** -0.5

        def forward(self, hidden_states, position_bias, attention_mask=None):
            batch_size, seq_length = hidden_states.shape[:2]
            query_states, key_states, value_states = self.Wqkv(hidden_states).chunk(3, dim=2)
            query_states = query_states.reshape(batch_size, seq_length, self.n_heads, self.head_dim).transpose(1, 2)
            key_states = key_states.reshape(batch_size, seq_length, self.n_heads, self.head_dim).transpose(1, 2)
            value_states = value_states.reshape(batch_size, seq_length, self.n_heads, self.head_dim).transpose(1, 2)

            attention_scores = torch.matmul(query_states, key_states.transpose(-1, -2)) * self.softmax_scale

            query_length = seq_length

            if position_bias is not None:
                key_length = key_states.shape[-2]
                position_bias_query_index = max(0, position_bias.size(1) - query_length)
                position_bias_key_index = max(0, position_bias.size(2) - key_length)
                position_bias = position_bias[:, position_bias_query_index:, position_bias_key_index:]

                attention_scores = attention_scores + position_bias

            if attention_mask is not None:
                attention_scores = attention_scores + attention_mask

            attn_weights = nn.functional.softmax(attention_scores.float(), dim=-1).to(value_states.dtype)
            context_states = torch.matmul(attn_weights, value_states)
            context_states = context_states.permute(0, 2, 1, 3).contiguous().view(batch_size, seq_length, -1)
            return context_states, attn_weights
""")

SLICED_FORWARD = """\
        attention_scores = torch.matmul(query_states, key_states.transpose(-1, -2)) * self.softmax_scale
"""

SLICED_PORTED_FORWARD = """\
        query_length = seq_length

        if position_bias is not None:
            key_length = key_states.shape[-2]
            position_bias_query_index = max(0, position_bias.size(1) - query_length)
            position_bias_key_index = max(0, position_bias.size(2) - key_length)
            position_bias = position_bias[:, position_bias_query_index:, position_bias_key_index:]

        if self.config._attn_implementation == "paged|eager" and attention_mask is not None:
            attention_mask = attention_mask + position_bias  # that kernel adds the mask but never a position bias

        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
"""

SLICED_PORTED_MATH = """\
    attention_scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if position_bias is not None:
        attention_scores = attention_scores + position_bias

    if attention_mask is not None:
        attention_scores = attention_scores + attention_mask
"""


@functools.cache
def _sliced_port():
    return transformed(SLICED, (RouteAttention,))


def test_a_bias_sliced_inside_its_none_test_moves_before_the_call_without_the_addition():
    output, state = _sliced_port()
    assert not state.diagnostics
    assert state.facts["additive_bias"] is True
    assert SLICED_FORWARD not in output  # the product went into the eager function
    assert SLICED_PORTED_FORWARD in output
    assert SLICED_PORTED_MATH in output
    assert "            position_bias=position_bias,\n" in output


def test_a_sliced_bias_port_is_unchanged_by_a_second_run():
    output, _ = _sliced_port()
    check_noop(output, RouteAttention)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_ported_module_adds_the_same_sliced_bias(implementation):
    config = SimpleNamespace(hidden_size=32, num_attention_heads=4, _attn_implementation=implementation)
    output, _ = _sliced_port()
    torch.manual_seed(0)
    legacy = _exec(SLICED)["SlicedBiasAttention"](config).eval()
    ported = _exec(output)["SlicedBiasAttention"](config).eval()
    ported.load_state_dict(legacy.state_dict())
    bias = torch.randn(4, 1, 10)  # longer than the sequence: sliced to the last 6 keys
    blocked = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)
    mask = torch.zeros(6, 6).masked_fill(blocked, torch.finfo(torch.float32).min)[None, None].expand(2, 1, 6, 6)
    hidden = torch.randn(2, 6, 32)
    with torch.no_grad():
        expected, actual = legacy(hidden, bias, mask)[0], ported(hidden, bias, mask)[0]
    assert torch.allclose(actual, expected, atol=1e-5 if implementation == "sdpa" else 1e-6)


def test_a_bias_block_whose_test_may_turn_false_stays_whole_and_is_refused():
    # `bias = self.rescale(bias)` may be None: splitting the block would change which branch runs.
    legacy = SLICED.replace(
        "position_bias = position_bias[:, position_bias_query_index:, position_bias_key_index:]",
        "position_bias = self.rescale(position_bias[:, position_bias_query_index:, position_bias_key_index:])",
    )
    state = check_noop(legacy, RouteAttention, diagnostics=True)
    [diagnostic] = state.diagnostics
    assert "which the interface cannot pass" in diagnostic.message


def test_the_attention_mask_sliced_in_its_none_test_stays_whole_in_the_math():
    # `if attention_mask is not None: causal_mask = attention_mask[..., :k]; scores = scores + causal_mask`
    # (llama-style eager math): the interface passes the mask itself, so nothing is split off.
    legacy = SLICED.replace(
        "        if attention_mask is not None:\n"
        "            attention_scores = attention_scores + attention_mask\n",
        "        if attention_mask is not None:\n"
        "            causal_mask = attention_mask[:, :, :, : key_states.shape[-2]]\n"
        "            attention_scores = attention_scores + causal_mask\n",
    )
    assert legacy != SLICED
    output, state = transformed(legacy, (RouteAttention,))
    assert not state.diagnostics
    math = output[output.index("def eager_attention_forward") : output.index("class SlicedBiasAttention")]
    assert "causal_mask = attention_mask[:, :, :, : key.shape[-2]]" in math
    forward = output[output.index("    def forward") :]
    assert "causal_mask" not in forward
