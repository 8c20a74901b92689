"""TiedWeightsDict: the legacy _tied_weights_keys list becomes {target: source}."""

from __future__ import annotations

import textwrap

from tests.transforms.helpers import check_noop, check_transformed, transformed
from transforms.tied_weights import TiedWeightsDict

MODEL = '''\
    import torch
    from torch import nn
    from transformers.modeling_utils import PreTrainedModel


    class FooAttention(nn.Module):
        def forward(self, hidden_states):
            scores = torch.matmul(hidden_states, hidden_states.transpose(1, 2))
            return torch.matmul(nn.functional.softmax(scores, dim=-1), hidden_states)


    class FooPreTrainedModel(PreTrainedModel):
        pass


    class FooModel(FooPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
            self.h = nn.ModuleList([FooAttention() for _ in range(config.num_hidden_layers)])

        def get_input_embeddings(self):
            return self.wte


    class FooForCausalLM(FooPreTrainedModel):
        _tied_weights_keys = {keys}

        def __init__(self, config):
            super().__init__(config)
            self.transformer = FooModel(config)
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
'''


def model(keys: str) -> str:
    return textwrap.dedent(MODEL).replace("{keys}", keys)


def test_list_becomes_dict_following_the_base_models_get_input_embeddings():
    state = check_transformed(
        model('["lm_head.weight"]'),
        model('{"lm_head.weight": "transformer.wte.weight"}'),
        TiedWeightsDict,
    )
    assert state.facts["tied"] == {"lm_head.weight": "transformer.wte.weight"}


def test_head_getter_wins_over_the_base_model():
    legacy = model('["lm_head.weight"]').replace(
        "    def get_input_embeddings(self):\n        return self.wte\n", "    pass\n"
    ) + textwrap.indent("\ndef get_input_embeddings(self):\n    return self.transformer.wte\n", "    ")
    output, state = transformed(legacy, TiedWeightsDict)
    assert '_tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}' in output
    assert not state.diagnostics


def test_diagnostic_when_no_getter_names_the_embedding():
    legacy = model('["lm_head.weight"]').replace(
        "    def get_input_embeddings(self):\n        return self.wte\n", "    pass\n"
    )
    state = check_noop(legacy, TiedWeightsDict, diagnostics=True)
    assert "cannot tell which embedding" in state.diagnostics[0].message


def test_noop_when_already_a_dict():
    check_noop(model('{"lm_head.weight": "transformer.wte.weight"}'), TiedWeightsDict)


IMPLICIT = model("[]").replace("    _tied_weights_keys = []\n\n", "") + textwrap.indent(
    "\ndef get_output_embeddings(self):\n    return self.{output}\n", "    "
)


def test_implicit_tie_of_an_output_layer_is_declared():
    output, state = transformed(IMPLICIT.replace("{output}", "lm_head"), TiedWeightsDict)
    assert '_tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}' in output
    assert state.facts["tied"] == {"lm_head.weight": "transformer.wte.weight"}


def test_noop_when_the_output_layer_is_the_input_embedding_itself():
    # an embedding that also unembeds (`F.linear(h, self.weight)`): one weight, nothing to tie
    state = check_noop(IMPLICIT.replace("{output}", "transformer.wte"), TiedWeightsDict)
    assert "tied" not in state.facts
