"""ThreadAttentionConfig: attention modules built from plain numbers get the model's config,
which the attention interface reads the selected kernel from."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import pytest
import torch

from tests.transforms.helpers import FILENAME, check_noop, check_transformed, transformed
from tests.transforms.test_attention_shapes import ALIBI_LEGACY
from transforms.attention_config import ThreadAttentionConfig
from transforms.attention_interface import RouteAttention

HEADER = "from transformers import PreTrainedModel\n"

LEGACY = textwrap.dedent("""\
    import math

    import torch
    from torch import nn


    class PlainAttention(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.heads = heads
            self.head_dim = dim // heads
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x, attention_mask=None):
            b, n, c = x.shape
            q, k, v = self.qkv(x).split(c, dim=-1)
            q = q.view(b, n, self.heads, self.head_dim).transpose(1, 2)
            k = k.view(b, n, self.heads, self.head_dim).transpose(1, 2)
            v = v.view(b, n, self.heads, self.head_dim).transpose(1, 2)
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            if attention_mask is not None:
                scores = scores + attention_mask
            probs = scores.softmax(dim=-1)
            out = torch.matmul(probs, v).transpose(1, 2).reshape(b, n, c)
            return self.proj(out)


    class Block(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.norm = nn.LayerNorm(dim)
            self.attn = PlainAttention(dim, heads)

        def forward(self, x, attention_mask=None):
            return x + self.attn(self.norm(x), attention_mask)


    class PlainModel(PreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.layers = nn.ModuleList([Block(config.hidden_size, config.num_attention_heads) for _ in range(2)])
""")

THREADED = textwrap.dedent("""\
    import math

    import torch
    from torch import nn


    class PlainAttention(nn.Module):
        def __init__(self, dim, heads, config=None):
            super().__init__()
            self.heads = heads
            self.head_dim = dim // heads
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)
            self.config = config

        def forward(self, x, attention_mask=None):
            b, n, c = x.shape
            q, k, v = self.qkv(x).split(c, dim=-1)
            q = q.view(b, n, self.heads, self.head_dim).transpose(1, 2)
            k = k.view(b, n, self.heads, self.head_dim).transpose(1, 2)
            v = v.view(b, n, self.heads, self.head_dim).transpose(1, 2)
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            if attention_mask is not None:
                scores = scores + attention_mask
            probs = scores.softmax(dim=-1)
            out = torch.matmul(probs, v).transpose(1, 2).reshape(b, n, c)
            return self.proj(out)


    class Block(nn.Module):
        def __init__(self, dim, heads, config=None):
            super().__init__()
            self.norm = nn.LayerNorm(dim)
            self.attn = PlainAttention(dim, heads, config=config)

        def forward(self, x, attention_mask=None):
            return x + self.attn(self.norm(x), attention_mask)


    class PlainModel(PreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.layers = nn.ModuleList([Block(config.hidden_size, config.num_attention_heads, config=config) for _ in range(2)])
""")


def test_config_is_threaded_from_the_base_model_to_the_attention_module():
    state = check_transformed(LEGACY, THREADED, ThreadAttentionConfig)
    assert [c.line for c in state.changes] == [8, 30, 33, 42]


def test_threaded_code_is_unchanged_by_a_second_run():
    check_noop(THREADED, ThreadAttentionConfig)


def test_an_attention_module_with_a_config_is_left_alone():
    check_noop(ALIBI_LEGACY, ThreadAttentionConfig)


def test_a_builder_with_no_config_in_scope_is_refused_with_its_line():
    legacy = LEGACY.replace("self.attn = PlainAttention(dim, heads)", "self.attn = make_attention(dim, heads)")
    legacy += "\n\ndef make_attention(dim, heads):\n    return PlainAttention(dim, heads)\n"
    _, state = transformed(legacy, ThreadAttentionConfig)
    assert [(d.line, d.symbol) for d in state.diagnostics] == [(46, "make_attention")]
    assert "PlainAttention is built without a config and `make_attention` has no `config`" in state.diagnostics[0].render()


def _exec(code: str) -> dict:
    namespace: dict = {"PreTrainedModel": torch.nn.Module}
    exec(compile(code, FILENAME, "exec"), namespace)
    return namespace


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_routed_block_selects_the_kernel_from_the_config_and_keeps_the_math(implementation):
    output, state = transformed(HEADER + LEGACY, (ThreadAttentionConfig, RouteAttention))
    assert not state.diagnostics, [d.render() for d in state.diagnostics]
    assert "self.config._attn_implementation" in output
    config = SimpleNamespace(hidden_size=32, num_attention_heads=4, _attn_implementation=implementation)
    torch.manual_seed(0)
    legacy = _exec(HEADER + LEGACY)["Block"](32, 4).eval()
    ported = _exec(output)["Block"](32, 4, config=config).eval()
    ported.load_state_dict(legacy.state_dict())
    hidden = torch.randn(2, 6, 32)
    blocked = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)
    mask = torch.zeros(6, 6).masked_fill(blocked, torch.finfo(torch.float32).min)[None, None].expand(2, 1, 6, 6)
    with torch.no_grad():
        assert torch.allclose(ported(hidden, mask), legacy(hidden, mask), atol=1e-5)
