"""RopePositions: rotary tables sized to cover position_ids, not only the key length."""

from __future__ import annotations

import textwrap

import torch

from tests.transforms.helpers import check_idempotent, check_noop, check_transformed
from transforms.rope_positions import RopePositions

ATTENTION = '''\
    import torch
    from torch import nn


    class Rotary(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.register_buffer("table", torch.arange(16.0)[:, None].expand(16, dim), persistent=False)

        def forward(self, x, seq_len=None):
            return self.table[:seq_len]


    class FooAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.rotary_emb = Rotary(4)

        def forward(self, hidden_states, position_ids=None):
            kv_seq_len = hidden_states.shape[-2]
            cos = self.rotary_emb(hidden_states, {seq_len})
            scores = torch.matmul(hidden_states, hidden_states.transpose(-1, -2)).softmax(-1)
            return torch.matmul(scores, hidden_states) + cos[position_ids]
'''
COVERED = "seq_len=max(kv_seq_len, int(position_ids.max()) + 1) if position_ids is not None else kv_seq_len"


def test_length_covers_positions():
    before = ATTENTION.format(seq_len="seq_len=kv_seq_len")
    after = ATTENTION.format(seq_len=COVERED)
    state = check_transformed(before, after, RopePositions)
    assert [c.message for c in state.changes] == [
        "FooAttention.forward: self.rotary_emb tables cover position_ids, not only kv_seq_len"
    ]
    # The rewritten module runs where the legacy one failed: positions past the key length.
    before_ns, after_ns = {}, {}
    exec(textwrap.dedent(before), before_ns)
    exec(textwrap.dedent(after), after_ns)
    hidden = torch.randn(1, 3, 4)
    early, late = torch.tensor([[0, 1, 2]]), torch.tensor([[9, 10, 11]])
    assert torch.equal(before_ns["FooAttention"]()(hidden, early), after_ns["FooAttention"]()(hidden, early))
    try:
        before_ns["FooAttention"]()(hidden, late)
        raise AssertionError("the legacy lookup was expected to fail")
    except IndexError:
        pass
    assert after_ns["FooAttention"]()(hidden, late).shape == (1, 3, 4)


def test_idempotent():
    check_idempotent(ATTENTION.format(seq_len="seq_len=kv_seq_len"), RopePositions)


def test_noop_when_tables_come_from_positions():
    check_noop(ATTENTION.format(seq_len="position_ids"), RopePositions)


def test_noop_without_position_ids():
    source = ATTENTION.format(seq_len="seq_len=kv_seq_len").replace("position_ids=None", "offset=0")
    check_noop(source.replace("cos[position_ids]", "cos[offset]"), RopePositions)


HELPER = '''\
    import torch
    from torch import nn


    class Rotary(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.register_buffer("table", torch.arange(16.0)[:, None].expand(16, dim), persistent=False)

        def forward(self, x, seq_len=None):
            return self.table[:seq_len]


    class FooAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.rotary_emb = Rotary(4)

        def forward(self, hidden_states, position_ids=None):
            query = self._project_and_rotate(hidden_states, position_ids)
            scores = torch.matmul(query, hidden_states.transpose(-1, -2)).softmax(-1)
            return torch.matmul(scores, hidden_states)

        def _project_and_rotate(self, hidden_states, position_ids):
            kv_seq_len = hidden_states.shape[-2]
            cos = self.rotary_emb(hidden_states, {seq_len})
            return hidden_states + cos[position_ids]
'''


def test_length_covers_positions_in_the_helper_forward_hands_them_to():
    """transformers 4.44's gpt_neox builds its rotary tables in `_attn_projections_and_rope`."""
    state = check_transformed(
        HELPER.format(seq_len="seq_len=kv_seq_len"), HELPER.format(seq_len=COVERED), RopePositions
    )
    assert [c.message for c in state.changes] == [
        "FooAttention._project_and_rotate: self.rotary_emb tables cover position_ids, not only kv_seq_len"
    ]
    namespace = {}
    exec(textwrap.dedent(HELPER.format(seq_len=COVERED)), namespace)
    assert namespace["FooAttention"]()(torch.randn(1, 3, 4), torch.tensor([[9, 10, 11]])).shape == (1, 3, 4)
