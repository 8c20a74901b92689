"""Encoder masks (`get_extended_attention_mask`) rewritten by UseMaskingUtils: placed after
the embeddings but before the layers read them, and the config keeps the `is_decoder`
default the rewritten choice reads."""

from __future__ import annotations

import pytest
import torch

from tests.transforms.helpers import check_noop, check_transformed, run_transforms
from transforms.config_defaults import LegacyConfigDefaults
from transforms.masks import UseMaskingUtils

MODEL = '''\
import torch
from torch import nn
from transformers.modeling_utils import PreTrainedModel


class FooEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)

    def forward(self, input_ids):
        return self.word_embeddings(input_ids)


class FooLayer(nn.Module):
    def forward(self, hidden_states, attention_mask=None):
        return hidden_states + attention_mask[:, 0, 0, :, None]


class FooEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([FooLayer() for _ in range(config.num_hidden_layers)])

    def forward(self, hidden_states, attention_mask=None):
        for layer in self.layer:
            hidden_states = layer(hidden_states, attention_mask)
        return hidden_states


class FooPreTrainedModel(PreTrainedModel):
    pass


class FooModel(FooPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embeddings = FooEmbeddings(config)
        self.encoder = FooEncoder(config)

    def forward(self, input_ids, attention_mask=None):
{forward}
'''

# The embeddings' name is bound again by the encoder's call, which reads the mask.
LEGACY_FORWARD = '''\
        extended_attention_mask = self.get_extended_attention_mask(attention_mask, input_ids.shape)
        hidden_states = self.embeddings(input_ids)
        hidden_states = self.encoder(hidden_states, attention_mask=extended_attention_mask)
        return hidden_states
'''
PORTED_FORWARD = '''\
        hidden_states = self.embeddings(input_ids)
        extended_attention_mask = (
            create_causal_mask(config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask, past_key_values=None, position_ids=None)
            if self.config.is_decoder
            else create_bidirectional_mask(config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask, past_key_values=None)
        )
        hidden_states = self.encoder(hidden_states, attention_mask=extended_attention_mask)
        return hidden_states
'''
# The padding mask made additive one step per statement, under a new name (ALBERT style).
CHAIN_FORWARD = '''\
        extended_attention_mask = attention_mask.unsqueeze(1).unsqueeze(2)
        extended_attention_mask = extended_attention_mask.to(dtype=self.dtype)
        extended_attention_mask = (1.0 - extended_attention_mask) * torch.finfo(self.dtype).min
        embedding_output = self.embeddings(input_ids)
        hidden_states = self.encoder(embedding_output, attention_mask=extended_attention_mask)
        return hidden_states
'''
PORTED_CHAIN_FORWARD = '''\
        embedding_output = self.embeddings(input_ids)
        extended_attention_mask = create_bidirectional_mask(config=self.config, inputs_embeds=embedding_output, attention_mask=attention_mask, past_key_values=None)
        hidden_states = self.encoder(embedding_output, attention_mask=extended_attention_mask)
        return hidden_states
'''
IMPORTS = "from transformers.masking_utils import create_bidirectional_mask, create_causal_mask\n"

CONFIG = '''\
from transformers import PretrainedConfig


class FooConfig(PretrainedConfig):
    model_type = "foo"

    def __init__(self, vocab_size=16, hidden_size=4, num_hidden_layers=2, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        super().__init__(**kwargs)
'''


def model(forward: str) -> str:
    return MODEL.replace("{forward}\n", forward)


def test_the_mask_is_built_before_the_layers_that_rebind_the_embeddings_name():
    before = model(LEGACY_FORWARD)
    after = model(PORTED_FORWARD).replace("PreTrainedModel\n", "PreTrainedModel\n" + IMPORTS, 1)
    check_transformed(before, after, UseMaskingUtils)


def test_a_padding_mask_made_additive_step_by_step_is_built_from_the_2d_mask():
    before = model(CHAIN_FORWARD)
    after = model(PORTED_CHAIN_FORWARD).replace(
        "PreTrainedModel\n", "PreTrainedModel\nfrom transformers.masking_utils import create_bidirectional_mask\n", 1
    )
    check_transformed(before, after, UseMaskingUtils)


@pytest.mark.parametrize("forward", [LEGACY_FORWARD, CHAIN_FORWARD], ids=["helper", "chain"])
def test_the_ported_encoder_runs_with_the_legacy_mask(forward):
    """The model runs, and padded positions get the legacy additive mask value; where the
    rewritten choice reads `is_decoder`, the config gives it its transformers 4 default."""
    files, state = run_transforms(
        {"configuration_foo.py": CONFIG, "modeling_foo.py": model(forward)}, [UseMaskingUtils, LegacyConfigDefaults]
    )
    assert not state.diagnostics
    if "get_extended_attention_mask" in forward:
        assert 'if not hasattr(self, "is_decoder"):\n            self.is_decoder = False' in files["configuration_foo.py"]
    scope: dict = {}
    exec(files["configuration_foo.py"] + files["modeling_foo.py"], scope)
    config = scope["FooConfig"](num_hidden_layers=1)
    config._attn_implementation = "eager"
    foo = scope["FooModel"](config).eval()
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    with torch.no_grad():
        out = foo(torch.tensor([[3, 4, 5], [6, 7, 8]]), attention_mask=mask)
        embedded = foo.embeddings(torch.tensor([[3, 4, 5], [6, 7, 8]]))
    added = (out - embedded)[..., 0]
    assert torch.equal(added, (1.0 - mask.float()) * torch.finfo(torch.float32).min)


def test_noop_when_the_mask_is_built_after_the_embeddings_and_read_by_nothing_else():
    check_noop(model("        hidden_states = self.embeddings(input_ids)\n        return hidden_states\n"), UseMaskingUtils)


def test_no_is_decoder_default_when_no_rewrite_reads_it():
    sources = {"configuration_foo.py": CONFIG, "modeling_foo.py": model(
        "        hidden_states = self.embeddings(input_ids)\n        return hidden_states\n"
    )}
    files, state = run_transforms(sources, [UseMaskingUtils, LegacyConfigDefaults])
    assert files["modeling_foo.py"] == sources["modeling_foo.py"]
    assert "is_decoder" not in files["configuration_foo.py"] and not state.diagnostics
