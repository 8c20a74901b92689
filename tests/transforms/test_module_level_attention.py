"""Attention math in a module-level function that the attention class calls, by name or
through an attribute chosen in `__init__` (`self.attn_fn = fn`): the class is recognised as
attention and refused with the function named, instead of being left unrouted."""

from __future__ import annotations

import textwrap

import libcst as cst

from porter.analysis import analyse
from tests.transforms.helpers import check_noop, transformed
from transforms.attention_interface import RouteAttention

FUNCTION = '''\
import torch
from torch import nn


def multihead_attention(query, key, value, n_heads, softmax_scale=None):
    q = query.view(query.size(0), query.size(1), n_heads, -1).transpose(1, 2)
    k = key.view(key.size(0), key.size(1), n_heads, -1).permute(0, 2, 3, 1)
    v = value.view(value.size(0), value.size(1), n_heads, -1).transpose(1, 2)
    weights = torch.softmax(q.matmul(k) * softmax_scale, dim=-1)
    return weights.matmul(v).transpose(1, 2).flatten(2)


class FooAttention(nn.Module):
    def __init__(self, d_model, n_heads, attn_impl="torch"):
        super().__init__()
        self.n_heads = n_heads
        self.Wqkv = nn.Linear(d_model, 3 * d_model)
        if attn_impl == "torch":
            self.attn_fn = multihead_attention
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        query, key, value = self.Wqkv(x).chunk(3, dim=2)
        return self.out_proj({call}(query, key, value, self.n_heads, softmax_scale=0.125))
'''


def _source(call: str) -> str:
    return textwrap.dedent(FUNCTION).replace("{call}", call)


def test_function_called_through_an_attribute_is_attention_and_refused():
    source = _source("self.attn_fn")
    analysis = analyse({"attention.py": cst.parse_module(source)})
    assert "FooAttention" in analysis.attention
    assert analysis.calls_attention_function == {"FooAttention": "multihead_attention"}
    _, state = transformed(source, RouteAttention)
    [diagnostic] = state.diagnostics
    assert diagnostic.symbol == "FooAttention"
    assert "module-level function `multihead_attention`" in diagnostic.message


def test_function_called_by_name_is_attention_and_refused():
    _, state = transformed(_source("multihead_attention"), RouteAttention)
    [diagnostic] = state.diagnostics
    assert "module-level function `multihead_attention`" in diagnostic.message


def test_noop_when_the_function_is_only_passed_as_the_interface_fallback():
    # code written for the interface names its eager function without calling it
    source = textwrap.dedent('''\
        import torch
        from torch import nn
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


        def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
            weights = torch.softmax(torch.matmul(query, key.transpose(2, 3)) * scaling, dim=-1)
            return torch.matmul(weights, value).transpose(1, 2), weights


        class FooAttention(nn.Module):
            def forward(self, query, key, value, **kwargs):
                attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
                return attention_interface(self, query, key, value, None, scaling=self.scaling, **kwargs)
    ''')
    analysis = analyse({"modeling_test.py": cst.parse_module(source)})
    assert analysis.attention_functions == {"eager_attention_forward": "modeling_test.py"}
    assert analysis.calls_attention_function == {}
    check_noop(source, RouteAttention)
