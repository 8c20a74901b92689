"""GenerationSupport: explicit GenerationMixin; standard prepare_inputs_for_generation removed."""

from __future__ import annotations

import textwrap

from tests.transforms.helpers import check_noop, check_transformed, transformed
from transforms.generation import GenerationSupport

MODEL = '''\
    import torch
    from torch import nn
    from transformers.modeling_outputs import CausalLMOutputWithPast
    from transformers.modeling_utils import PreTrainedModel
    {imports}

    class FooAttention(nn.Module):
        def forward(self, hidden_states):
            scores = torch.matmul(hidden_states, hidden_states.transpose(1, 2))
            return torch.matmul(nn.functional.softmax(scores, dim=-1), hidden_states)


    class FooPreTrainedModel(PreTrainedModel):
        pass


    class FooModel(FooPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.layers = nn.ModuleList([FooAttention() for _ in range(config.num_hidden_layers)])


    class FooForCausalLM({bases}):
        def __init__(self, config):
            super().__init__(config)
            self.model = FooModel(config)
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

        def forward(self, input_ids, past_key_values=None):
            logits = self.lm_head(self.model(input_ids))
            return CausalLMOutputWithPast(logits=logits, past_key_values=past_key_values)
    {extra}'''

STANDARD_PREPARE = '''\

        def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, **kwargs):
            if past_key_values is not None:
                past_length = past_key_values.seen_tokens
                input_ids = input_ids[:, past_length:]
            position_ids = kwargs.get("position_ids", None)
            if attention_mask is not None and position_ids is None:
                position_ids = attention_mask.long().cumsum(-1) - 1
            model_inputs = {"input_ids": input_ids}
            model_inputs.update(
                {
                    "position_ids": position_ids,
                    "past_key_values": past_key_values,
                    "use_cache": kwargs.get("use_cache"),
                    "attention_mask": attention_mask,
                }
            )
            return model_inputs

        @staticmethod
        def _reorder_cache(past_key_values, beam_idx):
            return tuple(tuple(s.index_select(0, beam_idx) for s in layer) for layer in past_key_values)
'''

PIXEL_PREPARE = '''\

        def prepare_inputs_for_generation(self, input_ids, past_key_values=None, pixel_values=None, **kwargs):
            model_inputs = {"input_ids": input_ids, "past_key_values": past_key_values}
            if past_key_values is None:
                model_inputs["pixel_values"] = pixel_values
            return model_inputs
'''


def method(code: str) -> str:
    """Inline method source, at the indentation of a class body."""
    return textwrap.indent(textwrap.dedent(code), "    ")


def model(bases: str = "FooPreTrainedModel", extra: str = "", imports: str = "") -> str:
    text = textwrap.dedent(MODEL)
    return text.replace("{imports}\n", imports).replace("{bases}", bases).replace("{extra}", method(extra))


def test_head_inherits_generation_mixin_and_drops_standard_overrides():
    state = check_transformed(
        model(extra=STANDARD_PREPARE),
        model(
            bases="FooPreTrainedModel, GenerationMixin",
            imports="from transformers.generation import GenerationMixin\n",
        ),
        GenerationSupport,
    )
    messages = [c.message for c in state.changes]
    assert "FooForCausalLM.prepare_inputs_for_generation removed: GenerationMixin's does the same" in messages
    assert any("_reorder_cache removed" in m for m in messages)
    assert "FooForCausalLM inherits GenerationMixin" in messages


def test_override_that_adds_pixel_values_is_kept():
    output, state = transformed(model(extra=PIXEL_PREPARE), GenerationSupport)
    assert output == model(
        bases="FooPreTrainedModel, GenerationMixin",
        imports="from transformers.generation import GenerationMixin\n",
        extra=PIXEL_PREPARE,
    )
    assert [c.message for c in state.changes] == ["FooForCausalLM inherits GenerationMixin"]


def test_noop_when_generation_mixin_already_present():
    check_noop(
        model(
            bases="FooPreTrainedModel, GenerationMixin",
            imports="from transformers.generation import GenerationMixin\n",
        ),
        GenerationSupport,
    )


def test_noop_for_a_head_that_does_not_generate():
    check_noop(
        model().replace("CausalLMOutputWithPast", "SequenceClassifierOutput"),
        GenerationSupport,
    )


ROUTER_PREPARE = '''\

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, output_router_logits=False, **kwargs):
        model_inputs = {"input_ids": input_ids}
        model_inputs.update({"past_key_values": past_key_values, "output_router_logits": output_router_logits})
        return model_inputs
'''


def test_override_passing_its_own_keyword_through_is_removed():
    """A keyword parameter passed on under its own name is what GenerationMixin does with
    every keyword of `generate`."""
    state = check_transformed(
        model(extra=ROUTER_PREPARE),
        model(bases="FooPreTrainedModel, GenerationMixin", imports="from transformers.generation import GenerationMixin\n"),
        GenerationSupport,
    )
    assert "FooForCausalLM.prepare_inputs_for_generation removed: GenerationMixin's does the same" in [
        c.message for c in state.changes
    ]


def test_override_that_also_reads_its_keyword_is_kept():
    reading = ROUTER_PREPARE.replace(
        "        model_inputs = {", "        input_ids = input_ids[:, -1:] if output_router_logits else input_ids\n        model_inputs = {"
    )
    output, _ = transformed(model(extra=reading), GenerationSupport)
    assert "def prepare_inputs_for_generation" in output
