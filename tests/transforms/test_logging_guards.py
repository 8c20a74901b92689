"""Shape checks that log instead of raising (`if <size differs>: logger.error(...)`), as
Baichuan-7B's remote code has them around its attention math: they leave the values as they
are, so they are dropped with the math like checks that raise. An `if` that logs and also
computes is not such a check."""

from __future__ import annotations

import re
import textwrap
from types import SimpleNamespace

import libcst as cst
import pytest
import torch

from tests.transforms.helpers import FILENAME, check_noop, transformed
from transforms.attention_interface import RouteAttention
from transforms.attention_math import is_guard

LEGACY = textwrap.dedent("""\
    import math

    import torch
    from torch import nn
    from transformers.utils import logging

    logger = logging.get_logger(__name__)


    class FooAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.num_heads = config.num_attention_heads
            self.head_dim = config.hidden_size // self.num_heads
            self.hidden_size = config.hidden_size
            self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
            self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
            self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
            self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

        def forward(self, hidden_states, attention_mask=None):
            bsz, q_len, _ = hidden_states.size()
            query_states = self.q_proj(hidden_states).view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
            key_states = self.k_proj(hidden_states).view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
            value_states = self.v_proj(hidden_states).view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
            kv_seq_len = key_states.shape[-2]

            attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(self.head_dim)
            # CHECK_WEIGHTS
            if attention_mask is not None:
                # CHECK_MASK
                attn_weights = attn_weights + attention_mask
                attn_weights = torch.max(attn_weights, torch.tensor(torch.finfo(attn_weights.dtype).min))

            attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype)
            attn_output = torch.matmul(attn_weights, value_states)
            # CHECK_OUTPUT
            attn_output = attn_output.transpose(1, 2)
            attn_output = attn_output.reshape(bsz, q_len, self.hidden_size)
            return self.o_proj(attn_output), attn_weights
""")

CHECKS = {
    "CHECK_WEIGHTS": "attn_weights.size() != (bsz, self.num_heads, q_len, kv_seq_len)",
    "CHECK_MASK": "attention_mask.size() != (bsz, 1, q_len, kv_seq_len)",
    "CHECK_OUTPUT": "attn_output.size() != (bsz, self.num_heads, q_len, self.head_dim)",
}


def _with_checks(report: str | None) -> str:
    """The legacy module with each check reporting by `report` (`None`: no checks at all)."""
    code = LEGACY
    for marker, condition in CHECKS.items():
        pad = re.search(rf"^( *)# {marker}\n", code, re.MULTILINE)[1]
        text = "" if report is None else f"{pad}if {condition}:\n{pad}    {report}\n"
        code = code.replace(f"{pad}# {marker}\n", text)
    return code


LOGGING = _with_checks('logger.error(f"unexpected size {attn_weights.size()}")')
RAISING = _with_checks('raise ValueError(f"unexpected size {attn_weights.size()}")')
UNCHECKED = _with_checks(None)


def _exec(code: str) -> dict:
    namespace: dict = {}
    exec(compile(code, FILENAME, "exec"), namespace)
    return namespace


def _config(implementation: str) -> SimpleNamespace:
    return SimpleNamespace(hidden_size=32, num_attention_heads=4, _attn_implementation=implementation)


def test_checks_that_log_are_dropped_like_checks_that_raise():
    logging_out, logging_state = transformed(LOGGING, RouteAttention)
    raising_out, _ = transformed(RAISING, RouteAttention)
    unchecked_out, _ = transformed(UNCHECKED, RouteAttention)
    assert not logging_state.diagnostics
    assert "ALL_ATTENTION_FUNCTIONS.get_interface(" in logging_out
    assert "logger.error" not in logging_out
    assert logging_out == raising_out == unchecked_out


def test_the_port_is_unchanged_by_a_second_run():
    check_noop(transformed(LOGGING, RouteAttention)[0], RouteAttention)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_the_port_computes_the_legacy_math(implementation):
    torch.manual_seed(0)
    legacy = _exec(LOGGING)["FooAttention"](_config("eager")).eval()
    ported = _exec(transformed(LOGGING, RouteAttention)[0])["FooAttention"](_config(implementation)).eval()
    ported.load_state_dict(legacy.state_dict())
    hidden = torch.randn(2, 5, 32)
    blocked = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)
    mask = torch.zeros(5, 5).masked_fill(blocked, torch.finfo(torch.float32).min)[None, None].expand(2, 1, 5, 5)
    with torch.no_grad():
        expected, actual = legacy(hidden, mask)[0], ported(hidden, mask)[0]
    assert torch.allclose(actual, expected, atol=1e-5 if implementation == "sdpa" else 1e-6)


@pytest.mark.parametrize(
    "code, guard",
    [
        ("if x.size() != y:\n    logger.error('size')\n", True),
        ("if x.size() != y:\n    logger.warning_once('size')\n    raise ValueError('size')\n", True),
        ("if x.size() != y:\n    warnings.warn('size')\n", True),
        ("if x.size() != y:\n    logger.error('size')\n    x = x.view(y)\n", False),  # also computes
        ("if x.size() != y:\n    print('size')\n", False),  # not a log call port-model knows
        ("if x.size() != y:\n    logger.error('size')\nelse:\n    x = x + 1\n", False),
    ],
)
def test_what_counts_as_a_check(code, guard):
    assert is_guard(cst.parse_module(code).body[0]) is guard
