"""DeclareBackends: backend flags on the PreTrainedModel root, once every attention is routed."""

from __future__ import annotations

import textwrap

from tests.transforms.helpers import check_noop, check_transformed, transformed
from transforms.attention_interface import RouteAttention
from transforms.backend_flags import DeclareBackends

ROUTE_THEN_FLAGS = (RouteAttention, DeclareBackends)

ATTENTION = '''\
    import torch
    from torch import nn
    from transformers.modeling_utils import PreTrainedModel


    class FooAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.scaling = config.head_dim**-0.5
            self.is_causal = True
            self.num_key_value_groups = 1

        def forward(self, query_states, key_states, value_states, attention_mask=None):
            attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) * self.scaling
            {bias}attn_weights = attn_weights + attention_mask
            attn_weights = nn.functional.softmax(attn_weights, dim=-1)
            attn_output = torch.matmul(attn_weights, value_states)
            attn_output = attn_output.transpose(1, 2).contiguous()
            return attn_output
'''


def attention(bias: str = "") -> str:
    return textwrap.dedent(ATTENTION).replace("{bias}", bias)


def root(*flags: str) -> str:
    body = "".join(f"    {flag}\n" for flag in flags)
    return f"\n\nclass FooPreTrainedModel(PreTrainedModel):\n    base_model_prefix = \"model\"\n{body}"


def routed(source: str) -> str:
    output, state = transformed(source, RouteAttention)
    assert state.changes and not state.diagnostics
    return output


def test_flags_set_on_the_root_and_legacy_flags_removed():
    state = check_transformed(
        attention()
        + root(
            "_supports_flash_attn_2 = True",
            "_supports_sdpa = False",
            "_supports_cache_class = True",
            "_supports_static_cache = True",
        ),
        routed(attention())
        + root(
            "_supports_sdpa = True",
            "_supports_attention_backend = True",
            "_supports_flash_attn = True",
            "_supports_flex_attn = True",
        ),
        ROUTE_THEN_FLAGS,
    )
    flag_messages = [c.message for c in state.changes if c.transform == DeclareBackends.name]
    assert "FooPreTrainedModel: removed legacy flag _supports_flash_attn_2" in flag_messages
    assert "FooPreTrainedModel._supports_sdpa = True" in flag_messages


def test_flags_already_correct_are_left_alone():
    correct = root(
        "_supports_attention_backend = True",
        "_supports_sdpa = True",
        "_supports_flash_attn = True",
        "_supports_flex_attn = True",
    )
    output, state = transformed(attention() + correct, ROUTE_THEN_FLAGS)
    assert output == routed(attention()) + correct
    assert not [c for c in state.changes if c.transform == DeclareBackends.name]


def test_noop_when_attention_could_not_be_routed():
    """A refused attention keeps its legacy path, so no backend may be claimed."""
    legacy = attention(bias="attn_weights = attn_weights + position_bias\n        ") + root(
        "_supports_flash_attn_2 = True"
    )
    state = check_noop(legacy, ROUTE_THEN_FLAGS, diagnostics=True)
    assert "position_bias" in state.diagnostics[0].message


def test_noop_on_ported_code():
    check_noop(routed(attention()) + root("_supports_attention_backend = True"), ROUTE_THEN_FLAGS)


def test_softcapped_attention_does_not_claim_flash():
    legacy = attention(bias="attn_weights = torch.tanh(attn_weights / 50.0) * 50.0\n        ") + root()
    output, state = transformed(legacy, ROUTE_THEN_FLAGS)
    assert state.diagnostics or "_supports_flash_attn = False" in output
