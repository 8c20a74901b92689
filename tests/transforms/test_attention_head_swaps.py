"""RouteAttention: the legacy swap of heads and sequence back after the math, written in any
of its forms (`transpose(2, 1)`, `transpose(-3, -2)`, `permute(0, 2, 1, 3)`), alone or
chained with the merge of heads (`.flatten(2)`, ALBERT style), is dropped: the interface
already returns `[batch, seq, heads, head_dim]`."""

from __future__ import annotations

import pytest
import torch

from tests.transforms.helpers import check_noop, check_transformed, transformed
from tests.transforms.test_attention_interface import LEGACY, PORTED, _legacy_and_ported_outputs
from transforms.attention_interface import RouteAttention

LEGACY_RESTORE = (
    "        attn_output = attn_output.transpose(1, 2).contiguous()\n"
    "        attn_output = attn_output.reshape(bsz, q_len, self.hidden_size)\n"
)
PORTED_MERGE = "        attn_output = attn_output.reshape(bsz, q_len, self.hidden_size)\n"


@pytest.mark.parametrize("swap", ["transpose(2, 1)", "transpose(-3, -2)", "transpose(-2, -3)", "permute(0, 2, 1, 3)"])
def test_every_form_of_the_swap_is_dropped(swap):
    legacy = LEGACY.replace(LEGACY_RESTORE, LEGACY_RESTORE.replace("transpose(1, 2)", swap))
    assert legacy != LEGACY
    check_transformed(legacy, PORTED, RouteAttention)


def test_swap_chained_with_flatten_keeps_the_flatten_and_computes_the_same():
    legacy = LEGACY.replace(LEGACY_RESTORE, "        attn_output = attn_output.transpose(2, 1).flatten(2)\n")
    ported = PORTED.replace(PORTED_MERGE, "\n        attn_output = attn_output.flatten(2)\n")
    check_transformed(legacy, ported, RouteAttention)
    for implementation in ("eager", "sdpa"):
        expected, actual = _legacy_and_ported_outputs(legacy, ported, implementation)
        assert torch.allclose(actual, expected, atol=1e-5)


def test_a_swap_of_other_axes_is_still_refused():
    legacy = LEGACY.replace(LEGACY_RESTORE, "        attn_output = attn_output.transpose(1, 3).flatten(2)\n")
    output, state = transformed(legacy, RouteAttention)
    assert output == legacy and not state.changes
    assert any("transpose(1, 2)` after the attention math" in d.message for d in state.diagnostics)


def test_noop_on_the_ported_code():
    check_noop(PORTED, RouteAttention)
