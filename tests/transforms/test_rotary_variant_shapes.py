"""Attention shapes of the rotary-variant decoder families (phi, gemma, cohere, ...): each
legacy module is routed through the interface and run against its legacy form."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import pytest
import torch

from tests.transforms.helpers import check_noop, transformed
from transforms.attention_interface import RouteAttention

# q and k upcast to float32 inside the score product (phi-2 guards against overflow so).
UPCAST_LEGACY = textwrap.dedent("""\
    import math

    import torch
    from torch import nn


    class BarAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.num_heads = config.num_attention_heads
            self.head_dim = config.hidden_size // self.num_heads
            self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
            self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
            self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
            self.dense = nn.Linear(config.hidden_size, config.hidden_size)

        def forward(self, hidden_states, attention_mask=None):
            bsz, q_len, _ = hidden_states.size()
            query = self.q_proj(hidden_states).view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
            key = self.k_proj(hidden_states).view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
            value = self.v_proj(hidden_states).view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
            scores = torch.matmul(
                query.to(torch.float32), key.to(torch.float32).transpose(2, 3)
            ) / math.sqrt(self.head_dim)
            if attention_mask is not None:
                scores = scores + attention_mask
            probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
            context = torch.matmul(probs, value)
            context = context.transpose(1, 2).reshape(bsz, q_len, -1)
            return self.dense(context), probs
""")


def _exec(code: str) -> dict:
    namespace: dict = {}
    exec(compile(code, "modeling_test.py", "exec"), namespace)
    return namespace


def _config(implementation: str, **extra) -> SimpleNamespace:
    return SimpleNamespace(hidden_size=32, num_attention_heads=4, _attn_implementation=implementation, **extra)


def _causal_mask(batch: int, length: int) -> torch.Tensor:
    blocked = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
    mask = torch.zeros(length, length).masked_fill(blocked, torch.finfo(torch.float32).min)
    return mask[None, None].expand(batch, 1, length, length)


def _same_outputs(legacy_code: str, ported_code: str, implementation: str, atol=1e-6, **extra):
    torch.manual_seed(0)
    legacy = _exec(legacy_code)["BarAttention"](_config("eager", **extra)).eval()
    ported = _exec(ported_code)["BarAttention"](_config(implementation, **extra)).eval()
    ported.load_state_dict(legacy.state_dict())
    hidden, mask = torch.randn(2, 6, 32), _causal_mask(2, 6)
    with torch.no_grad():
        assert torch.allclose(ported(hidden, mask)[0], legacy(hidden, mask)[0], atol=atol)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_query_and_key_upcast_in_the_product_stay_upcast_in_the_eager_math(implementation):
    output, state = transformed(UPCAST_LEGACY, RouteAttention)
    assert not state.diagnostics, [d.render() for d in state.diagnostics]
    assert "        query.to(torch.float32), key.to(torch.float32).transpose(2, 3)\n    ) * scaling\n" in output
    assert "attention_interface(" in output and "self.scaling = 1 / math.sqrt(self.head_dim)" in output
    _same_outputs(UPCAST_LEGACY, output, implementation, atol=1e-5)


def test_a_ported_upcast_product_is_left_alone():
    output, _ = transformed(UPCAST_LEGACY, RouteAttention)
    check_noop(output, RouteAttention)
