"""ThreadKwargs: **kwargs: Unpack[TransformersKwargs] from the head down to attention."""

from __future__ import annotations

import textwrap

from tests.transforms.helpers import check_idempotent, check_noop, check_transformed, transformed
from transforms.kwargs_threading import ThreadKwargs

LEGACY = '''\
    import torch
    from torch import nn
    from transformers.modeling_utils import PreTrainedModel


    class FooAttention(nn.Module):
        def forward(self, hidden_states, attention_mask=None):
            scores = torch.matmul(hidden_states, hidden_states.transpose(1, 2))
            probs = nn.functional.softmax(scores, dim=-1)
            return torch.matmul(probs, hidden_states)


    class FooMLP(nn.Module):
        def forward(self, hidden_states):
            return hidden_states


    class FooDecoderLayer(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.self_attn = FooAttention()
            self.mlp = FooMLP()

        def forward(self, hidden_states, attention_mask=None):
            hidden_states = hidden_states + self.self_attn(hidden_states, attention_mask=attention_mask)
            return hidden_states + self.mlp(hidden_states)


    class FooPreTrainedModel(PreTrainedModel):
        pass


    class FooModel(FooPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.layers = nn.ModuleList([FooDecoderLayer(config) for _ in range(config.num_hidden_layers)])

        def forward(self, hidden_states, attention_mask=None):
            for decoder_layer in self.layers:
                hidden_states = decoder_layer(hidden_states, attention_mask=attention_mask)
            return hidden_states


    class FooForCausalLM(FooPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.model = FooModel(config)
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

        def forward(self, hidden_states, attention_mask=None):
            hidden_states = self.model(hidden_states, attention_mask=attention_mask)
            return self.lm_head(hidden_states)
'''

THREADED = '''\
    import torch
    from torch import nn
    from transformers.modeling_utils import PreTrainedModel
    from transformers.processing_utils import Unpack
    from transformers.utils import TransformersKwargs


    class FooAttention(nn.Module):
        def forward(self, hidden_states, attention_mask=None, **kwargs: Unpack[TransformersKwargs]):
            scores = torch.matmul(hidden_states, hidden_states.transpose(1, 2))
            probs = nn.functional.softmax(scores, dim=-1)
            return torch.matmul(probs, hidden_states)


    class FooMLP(nn.Module):
        def forward(self, hidden_states):
            return hidden_states


    class FooDecoderLayer(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.self_attn = FooAttention()
            self.mlp = FooMLP()

        def forward(self, hidden_states, attention_mask=None, **kwargs: Unpack[TransformersKwargs]):
            hidden_states = hidden_states + self.self_attn(hidden_states, attention_mask=attention_mask, **kwargs)
            return hidden_states + self.mlp(hidden_states)


    class FooPreTrainedModel(PreTrainedModel):
        pass


    class FooModel(FooPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.layers = nn.ModuleList([FooDecoderLayer(config) for _ in range(config.num_hidden_layers)])

        def forward(self, hidden_states, attention_mask=None, **kwargs: Unpack[TransformersKwargs]):
            for decoder_layer in self.layers:
                hidden_states = decoder_layer(hidden_states, attention_mask=attention_mask, **kwargs)
            return hidden_states


    class FooForCausalLM(FooPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.model = FooModel(config)
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

        def forward(self, hidden_states, attention_mask=None, **kwargs: Unpack[TransformersKwargs]):
            hidden_states = self.model(hidden_states, attention_mask=attention_mask, **kwargs)
            return self.lm_head(hidden_states)
'''


def test_head_base_layer_and_attention_gain_kwargs_and_pass_them_on():
    state = check_transformed(LEGACY, THREADED, ThreadKwargs)
    accepting = {c.message.split(".")[0] for c in state.changes if "accepts" in c.message}
    passing = {c.message.split(".")[0] for c in state.changes if "passes" in c.message}
    assert accepting == {"FooAttention", "FooDecoderLayer", "FooModel", "FooForCausalLM"}
    assert passing == {"FooDecoderLayer", "FooModel", "FooForCausalLM"}


def test_mlp_off_the_attention_path_is_untouched():
    output, _ = transformed(LEGACY, ThreadKwargs)
    assert "    def forward(self, hidden_states):\n        return hidden_states\n" in output
    assert "self.mlp(hidden_states)" in output


def test_existing_kwargs_keep_their_name_and_gain_the_annotation():
    output, state = transformed(
        LEGACY.replace(
            "def forward(self, hidden_states, attention_mask=None):\n            for decoder_layer",
            "def forward(self, hidden_states, attention_mask=None, **flash_kwargs):\n            for decoder_layer",
        ),
        ThreadKwargs,
    )
    assert not state.diagnostics
    assert "def forward(self, hidden_states, attention_mask=None, **flash_kwargs: Unpack[TransformersKwargs]):" in output
    assert "decoder_layer(hidden_states, attention_mask=attention_mask, **flash_kwargs)" in output


def test_indexed_and_enumerated_layer_calls_pass_kwargs():
    legacy = LEGACY.replace(
        "            for decoder_layer in self.layers:\n"
        "                hidden_states = decoder_layer(hidden_states, attention_mask=attention_mask)\n",
        "            for i, decoder_layer in enumerate(self.layers[:-1]):\n"
        "                hidden_states = decoder_layer(hidden_states, attention_mask=attention_mask)\n"
        "            hidden_states = self.layers[-1](hidden_states, attention_mask)\n",
    )
    output, _ = transformed(legacy, ThreadKwargs)
    assert "decoder_layer(hidden_states, attention_mask=attention_mask, **kwargs)" in output
    assert "self.layers[-1](hidden_states, attention_mask, **kwargs)" in output


def test_second_run_changes_nothing():
    assert check_idempotent(LEGACY, ThreadKwargs) == textwrap.dedent(THREADED)


def test_noop_when_already_threaded():
    check_noop(THREADED, ThreadKwargs)
