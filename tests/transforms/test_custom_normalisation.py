"""RefuseCustomSoftmax: attention that normalises its scores with a custom autograd function
holding the softmax (DeBERTa's `XSoftmax.apply`) is refused at the call, with the class and
the function named; other autograd functions and plain softmax attention are left alone."""

from __future__ import annotations

import textwrap

from tests.transforms.helpers import check_noop, transformed
from transforms.custom_normalisation import RefuseCustomSoftmax

LEGACY = textwrap.dedent('''\
    import torch
    from torch import nn


    class MaskedSoftmax(torch.autograd.Function):
        @staticmethod
        def forward(ctx, input, mask, dim):
            rmask = ~(mask.to(torch.bool))
            output = input.masked_fill(rmask, torch.finfo(input.dtype).min)
            output = torch.softmax(output, dim)
            output.masked_fill_(rmask, 0)
            ctx.save_for_backward(output)
            return output


    class FooSelfAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.query = nn.Linear(8, 8)
            self.key = nn.Linear(8, 8)
            self.value = nn.Linear(8, 8)

        def forward(self, hidden_states, attention_mask):
            q, k, v = self.query(hidden_states), self.key(hidden_states), self.value(hidden_states)
            scores = torch.bmm(q, k.transpose(-1, -2))
            probs = MaskedSoftmax.apply(scores, attention_mask, -1)
            return torch.bmm(probs, v)
''')


def test_attention_normalised_by_a_custom_softmax_function_is_refused_at_the_call():
    output, state = transformed(LEGACY, RefuseCustomSoftmax)
    assert output == LEGACY and not state.changes
    [diagnostic] = state.diagnostics
    assert diagnostic.line == LEGACY.splitlines().index("        probs = MaskedSoftmax.apply(scores, attention_mask, -1)") + 1
    assert diagnostic.symbol == "FooSelfAttention"
    assert "`MaskedSoftmax.apply`" in diagnostic.message and "custom autograd function" in diagnostic.message


def test_noop_for_an_autograd_function_without_softmax():
    check_noop(LEGACY.replace("torch.softmax(output, dim)", "output * 2"), RefuseCustomSoftmax)


def test_noop_for_a_custom_softmax_applied_outside_attention_math():
    check_noop(LEGACY.replace("torch.bmm(", "torch.add("), RefuseCustomSoftmax)


def test_noop_for_plain_softmax_attention():
    plain = LEGACY.replace("MaskedSoftmax.apply(scores, attention_mask, -1)", "torch.softmax(scores + attention_mask, -1)")
    check_noop(plain, RefuseCustomSoftmax)
