"""masks: a base model that builds its causal mask with a method of its own (calling
`_make_causal_mask`, or a `tril`) instead of a transformers helper; a boolean one ("True
where masked", read by `masked_fill` in attention) is cast so for the eager kernel."""

from __future__ import annotations

from tests.transforms.helpers import check_noop, transformed
from tests.transforms.test_masks import module
from transforms.masks import UseMaskingUtils

OWN_BUILDER = '''

    def _prepare_attn_mask(self, attention_mask, input_shape, past_key_values_length) -> torch.BoolTensor:
        causal = _make_causal_mask(input_shape, attention_mask.device, past_key_values_length)
        return ~(attention_mask[:, None, None, :].bool()) | causal
'''

CALL = """\
causal_mask = self._prepare_attn_mask(attention_mask, input_shape=(batch_size, seq_length), past_key_values_length=past_key_values_length)
"""

MASKED_FILL = "attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)).masked_fill(attention_mask, -1e9)"


def _legacy(builder: str = OWN_BUILDER, attention_line: str = MASKED_FILL) -> str:
    source = module(CALL, mask_var="causal_mask")
    source = source.replace(
        "attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) + attention_mask", attention_line
    )
    return source.replace("        return hidden_states\n", "        return hidden_states\n" + builder, 1)


def test_an_own_boolean_causal_builder_becomes_the_causal_mask_cast_for_masked_fill():
    output, state = transformed(_legacy(), UseMaskingUtils)
    assert not state.diagnostics, [d.render() for d in state.diagnostics]
    forward = output.split("def forward(self, input_ids")[1].split("def _prepare_attn_mask")[0]
    assert "causal_mask = create_causal_mask(config=self.config, inputs_embeds=inputs_embeds" in forward
    assert "self._prepare_attn_mask(" not in forward
    assert (
        "causal_mask = causal_mask.bool() if isinstance(causal_mask, torch.Tensor) and causal_mask.is_floating_point() "
        'and self.config._attn_implementation == "eager" else causal_mask\n'
    ) in forward
    compile(output, "modeling_test.py", "exec")


def test_a_boolean_builder_whose_mask_no_attention_fills_is_refused():
    additive = "attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) + attention_mask"
    _, state = transformed(_legacy(attention_line=additive), UseMaskingUtils)
    [diagnostic] = state.diagnostics
    assert "`self._prepare_attn_mask` builds a boolean mask, and no attention module reads it with `masked_fill" in diagnostic.message


def test_an_additive_own_builder_needs_no_cast():
    additive = OWN_BUILDER.replace(" -> torch.BoolTensor", "")
    output, state = transformed(_legacy(builder=additive), UseMaskingUtils)
    forward = output.split("def forward(self, input_ids")[1].split("def _prepare_attn_mask")[0]
    assert "causal_mask = create_causal_mask(" in forward and ".bool()" not in forward
    assert not state.diagnostics


def test_a_method_that_builds_no_causal_mask_is_left_alone():
    padding_only = OWN_BUILDER.replace(
        "        causal = _make_causal_mask(input_shape, attention_mask.device, past_key_values_length)\n", ""
    ).replace(" | causal", "")
    check_noop(_legacy(builder=padding_only), UseMaskingUtils)
