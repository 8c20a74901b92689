"""CallPostInit: model classes end __init__ with post_init()."""

from __future__ import annotations

from tests.transforms.helpers import check_noop, check_transformed
from transforms.post_init import CallPostInit

MODEL = '''\
    from torch import nn
    from transformers.modeling_utils import PreTrainedModel


    class FooLayer(nn.Module):
        def forward(self, x):
            return x


    class FooPreTrainedModel(PreTrainedModel):
        pass


    class FooModel(FooPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.layers = nn.ModuleList([FooLayer() for _ in range(2)])
    {model_end}

    class FooForCausalLM(FooPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.model = FooModel(config)
    {head_end}
'''


def test_missing_call_added_and_init_weights_replaced():
    before = MODEL.format(model_end="", head_end="        self.init_weights()\n")
    after = MODEL.format(model_end="        self.post_init()\n", head_end="        self.post_init()\n")
    state = check_transformed(before, after, CallPostInit)
    messages = {c.message for c in state.changes}
    assert messages == {"FooModel.__init__ ends with post_init()", "FooForCausalLM.__init__: init_weights() -> post_init()"}


def test_noop_when_post_init_is_called():
    check_noop(MODEL.format(model_end="        self.post_init()\n", head_end="        self.post_init()\n"), CallPostInit)
