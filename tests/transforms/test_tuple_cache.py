"""Tuple caches in base models: a test of the first layer's entry against `None`, which
asked whether a past was given, becomes a question to the one shared Cache (CONTRACT C4)."""

from __future__ import annotations

import textwrap

import torch
from transformers import DynamicCache

from tests.transforms.helpers import check_noop, transformed
from transforms.tuple_cache import CacheObjects

LEGACY = textwrap.dedent("""\
    import torch
    from torch import nn
    from transformers import PreTrainedModel


    class FooAttention(nn.Module):
        def forward(self, hidden_states, layer_past=None, attention_mask=None):
            q = k = v = hidden_states
            scores = torch.matmul(q, k.transpose(-1, -2)).softmax(-1)
            return torch.matmul(scores, v)


    class FooLayer(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.attn = FooAttention()

        def forward(self, hidden_states, layer_past=None):
            return self.attn(hidden_states, layer_past)


    class FooPreTrainedModel(PreTrainedModel):
        pass


    class FooModel(FooPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.blocks = nn.ModuleList([FooLayer(config) for _ in range(2)])

        def forward(self, hidden_states, past_key_values=None, use_cache=None):
            if past_key_values is None:
                past_key_values = tuple([None] * len(self.blocks))
            past_length = 0
            if past_key_values[0] is not None:
                past_length = past_key_values[0][0].shape[2]
            for block, layer_past in zip(self.blocks, past_key_values):
                hidden_states = block(hidden_states, layer_past)
            return hidden_states, past_length
""")


def test_first_layer_entry_tested_against_none_asks_the_cache_for_a_past():
    output, state = transformed(LEGACY, (CacheObjects,))
    assert not state.diagnostics
    assert "        if (past_key_values is not None and past_key_values.get_seq_length() > 0):\n" in output
    assert "            past_length = past_key_values.get_seq_length()\n" in output
    assert "past_key_values[0]" not in output
    namespace: dict = {}
    exec(compile(output, "modeling_foo.py", "exec"), namespace)  # the rewrite is valid code
    check_noop(output, (CacheObjects,))


def test_a_test_of_another_name_against_none_is_kept():
    legacy = LEGACY.replace("if past_key_values[0] is not None:", "if hidden_states[0] is not None:")
    output, _ = transformed(legacy, (CacheObjects,))
    assert "        if hidden_states[0] is not None:\n" in output


def test_the_cache_question_holds_on_an_empty_and_a_filled_cache():
    past_key_values = DynamicCache()
    assert not (past_key_values is not None and past_key_values.get_seq_length() > 0)  # legacy: (None, None)[0]
    past_key_values.update(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), 0)
    assert past_key_values is not None and past_key_values.get_seq_length() > 0
