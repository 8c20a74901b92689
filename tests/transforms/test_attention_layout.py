"""UnflattenHeads: attention that folds heads into the batch gets [batch, heads, seq, dim]."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import pytest
import torch

from tests.transforms.helpers import FILENAME, check_noop, check_transformed, transformed
from transforms.attention_interface import RouteAttention
from transforms.attention_layout import UnflattenHeads

# The CLIP/BART family of transformers 4.x: pre-scaled query, bmm over (batch * heads),
# two additive masks viewed back to four dimensions, dropout to a new name.
FOLDED = textwrap.dedent('''\
    import torch
    from torch import nn


    class FoldedAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.embed_dim = config.hidden_size
            self.num_heads = config.num_attention_heads
            self.head_dim = self.embed_dim // self.num_heads
            self.scale = self.head_dim**-0.5
            self.dropout = 0.0
            self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
            self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
            self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
            self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

        def _shape(self, tensor, seq_len, bsz):
            return tensor.view(bsz, seq_len, self.num_heads, self.head_dim).transpose(1, 2).contiguous()

        def forward(self, hidden_states, attention_mask=None, causal_attention_mask=None, output_attentions=False):
            bsz, tgt_len, embed_dim = hidden_states.size()
            query_states = self.q_proj(hidden_states) * self.scale
            key_states = self._shape(self.k_proj(hidden_states), -1, bsz)
            value_states = self._shape(self.v_proj(hidden_states), -1, bsz)

            proj_shape = (bsz * self.num_heads, -1, self.head_dim)
            query_states = self._shape(query_states, tgt_len, bsz).view(*proj_shape)
            key_states = key_states.view(*proj_shape)
            value_states = value_states.view(*proj_shape)

            src_len = key_states.size(1)
            attn_weights = torch.bmm(query_states, key_states.transpose(1, 2))

            if causal_attention_mask is not None:
                attn_weights = attn_weights.view(bsz, self.num_heads, tgt_len, src_len) + causal_attention_mask
                attn_weights = attn_weights.view(bsz * self.num_heads, tgt_len, src_len)

            if attention_mask is not None:
                attn_weights = attn_weights.view(bsz, self.num_heads, tgt_len, src_len) + attention_mask
                attn_weights = attn_weights.view(bsz * self.num_heads, tgt_len, src_len)

            attn_weights = nn.functional.softmax(attn_weights, dim=-1)

            if output_attentions:
                attn_weights_reshaped = attn_weights.view(bsz, self.num_heads, tgt_len, src_len)
                attn_weights = attn_weights_reshaped.view(bsz * self.num_heads, tgt_len, src_len)
            else:
                attn_weights_reshaped = None

            attn_probs = nn.functional.dropout(attn_weights, p=self.dropout, training=self.training)
            attn_output = torch.bmm(attn_probs, value_states)
            attn_output = attn_output.view(bsz, self.num_heads, tgt_len, self.head_dim)
            attn_output = attn_output.transpose(1, 2)
            attn_output = attn_output.reshape(bsz, tgt_len, embed_dim)
            attn_output = self.out_proj(attn_output)
            return attn_output, attn_weights_reshaped
''')

FORWARD_AFTER = '''\
        def forward(self, hidden_states, attention_mask=None, causal_attention_mask=None, output_attentions=False):
            bsz, tgt_len, embed_dim = hidden_states.size()
            query_states = self.q_proj(hidden_states) * self.scale
            key_states = self._shape(self.k_proj(hidden_states), -1, bsz)
            value_states = self._shape(self.v_proj(hidden_states), -1, bsz)
            query_states = self._shape(query_states, tgt_len, bsz)

            src_len = key_states.size(2)
            if causal_attention_mask is not None:
                attention_mask = causal_attention_mask if attention_mask is None else attention_mask + causal_attention_mask
            attn_weights = torch.matmul(query_states, key_states.transpose(2, 3))

            if attention_mask is not None:
                attn_weights = attn_weights + attention_mask

            attn_weights = nn.functional.softmax(attn_weights, dim=-1)

            attn_weights = nn.functional.dropout(attn_weights, p=self.dropout, training=self.training)
            attn_output = torch.matmul(attn_weights, value_states)
            attn_output = attn_output.transpose(1, 2)

            if output_attentions:
                attn_weights_reshaped = attn_weights
                attn_weights = attn_weights_reshaped
            else:
                attn_weights_reshaped = None
            attn_output = attn_output.reshape(bsz, tgt_len, embed_dim)
            attn_output = self.out_proj(attn_output)
            return attn_output, attn_weights_reshaped
'''


def test_folded_heads_become_four_dimensional():
    start = FOLDED.index("    def forward(")
    init_end = FOLDED.index("        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)\n") + len(
        "        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)\n"
    )
    expected = (
        FOLDED[:init_end]
        + "        self.is_causal = False\n"
        + FOLDED[init_end:start]
        + textwrap.indent(textwrap.dedent(FORWARD_AFTER), "    ")
    )
    state = check_transformed(FOLDED, expected, UnflattenHeads)
    assert any("is_causal = False" in c.message for c in state.changes)


def test_noop_on_four_dimensional_attention():
    four_dim = textwrap.dedent(FORWARD_AFTER)
    check_noop(FOLDED[: FOLDED.index("    def forward(")] + textwrap.indent(four_dim, "    "), UnflattenHeads)


def test_noop_without_a_folded_shape_tuple():
    check_noop(FOLDED.replace("(bsz * self.num_heads, -1, self.head_dim)", "(bsz, -1, self.head_dim)"), UnflattenHeads)


def _module(code: str, implementation: str):
    namespace: dict = {}
    exec(compile(code, FILENAME, "exec"), namespace)
    config = SimpleNamespace(hidden_size=32, num_attention_heads=4, _attn_implementation=implementation)
    return namespace["FoldedAttention"](config).eval()


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("causal", [False, True])
def test_routed_module_computes_the_legacy_attention(implementation, causal):
    """Unfolded then routed: the eager function and sdpa give the legacy module's output."""
    ported_code, state = transformed(FOLDED, [UnflattenHeads, RouteAttention])
    assert not state.diagnostics, [d.render() for d in state.diagnostics]
    assert ported_code.count("ALL_ATTENTION_FUNCTIONS.get_interface(") == 1 and "bmm" not in ported_code
    torch.manual_seed(0)
    legacy = _module(FOLDED, "eager")
    ported = _module(ported_code, implementation)
    ported.load_state_dict(legacy.state_dict())
    hidden = torch.randn(2, 6, 32)
    mask = torch.zeros(2, 1, 6, 6)
    mask[1, :, :, :2] = torch.finfo(torch.float32).min
    causal_mask = torch.full((6, 6), torch.finfo(torch.float32).min).triu(1)[None, None].expand(2, 1, 6, 6)
    extra = {"causal_attention_mask": causal_mask} if causal else {}
    with torch.no_grad():
        expected = legacy(hidden, mask, **extra)[0]
        actual = ported(hidden, mask, **extra)[0]
        unmasked_expected, unmasked_actual = legacy(hidden)[0], ported(hidden)[0]
    tolerance = 0.0 if implementation == "eager" else 1e-5  # eager runs the legacy math itself
    assert torch.allclose(actual, expected, atol=tolerance, rtol=0)
    assert torch.allclose(unmasked_actual, unmasked_expected, atol=tolerance, rtol=0), "no mask must mean no causality"
