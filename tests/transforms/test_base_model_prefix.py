"""BaseModelPrefix: a base_model_prefix that names no attribute becomes the one every head uses."""

from __future__ import annotations

import textwrap

from tests.transforms.helpers import check_noop, transformed
from transforms.base_model_prefix import BaseModelPrefix

LEGACY = textwrap.dedent('''\
    from torch import nn
    from transformers import PreTrainedModel


    class FooLayer(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.dense = nn.Linear(4, 4)

        def forward(self, hidden):
            return self.dense(hidden)


    class FooPreTrainedModel(PreTrainedModel):
        base_model_prefix = "transformer"


    class FooModel(FooPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.embed = nn.Embedding(8, 4)
            self.layers = nn.ModuleList([FooLayer(config) for _ in range(2)])

        def forward(self, input_ids):
            hidden = self.embed(input_ids)
            for layer in self.layers:
                hidden = layer(hidden)
            return hidden


    class FooForCausalLM(FooPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.model = FooModel(config)
            self.lm_head = nn.Linear(4, 8)

        def forward(self, input_ids):
            return self.lm_head(self.model(input_ids))
''')


def test_prefix_naming_no_attribute_becomes_the_heads_attribute():
    output, state = transformed(LEGACY, BaseModelPrefix)
    assert 'base_model_prefix = "model"' in output and '"transformer"' not in output
    assert any("names no attribute" in c.message for c in state.changes)
    namespace: dict = {}
    exec(compile(output, "modeling_foo.py", "exec"), namespace)  # noqa: S102  (test code)
    assert namespace["FooForCausalLM"].base_model_prefix == "model"


def test_prefix_that_a_head_uses_is_kept():
    check_noop(LEGACY.replace('"transformer"', '"model"'), BaseModelPrefix)


def test_heads_holding_the_base_model_under_different_attributes_keep_the_prefix():
    legacy = LEGACY + textwrap.dedent('''\


        class FooForTokens(FooPreTrainedModel):
            def __init__(self, config):
                super().__init__(config)
                self.backbone = FooModel(config)

            def forward(self, input_ids):
                return self.backbone(input_ids)
    ''')
    check_noop(legacy, BaseModelPrefix)
