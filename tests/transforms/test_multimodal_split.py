"""SplitBaseAndHead: a composite class holding a text head becomes base model + head (E1)."""

from __future__ import annotations

import re

import torch

from tests.transforms.helpers import FILENAME, check_noop, transformed
from transforms.multimodal_split import SplitBaseAndHead

LEGACY = '''\
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


class FuseConfig(PretrainedConfig):
    model_type = "fuse"

    def __init__(self, hidden_size=6, vocab_size=9, image_token_index=3, **kwargs):
        self.hidden_size = hidden_size
        self.vocab_size = vocab_size
        self.image_token_index = image_token_index
        self.text_config = self
        super().__init__(**kwargs)


class Layer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden):
        return self.proj(hidden)


class FusePreTrainedModel(PreTrainedModel):
    config_class = FuseConfig
    base_model_prefix = "model"


class TextModel(FusePreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([Layer(config) for _ in range(2)])

    def get_input_embeddings(self):
        return self.embed_tokens

    def forward(self, inputs_embeds=None):
        hidden = inputs_embeds
        for layer in self.layers:
            hidden = layer(hidden)
        return (hidden,)


class TextForCausalLM(FusePreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.model = TextModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def forward(self, inputs_embeds=None):
        outputs = self.model(inputs_embeds=inputs_embeds)
        hidden_states = outputs[0]
        logits = self.lm_head(hidden_states)
        logits = logits.float()
        return (logits,)


class FuseForConditionalGeneration(FusePreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.vision_tower = nn.Linear(4, config.hidden_size)
        self.language_model = TextForCausalLM(config.text_config)

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def forward(self, input_ids, pixel_values=None, labels=None):
        inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            image_features = self.vision_tower(pixel_values)
            mask = (input_ids == self.config.image_token_index).unsqueeze(-1)
            inputs_embeds = inputs_embeds.masked_scatter(mask, image_features)
        outputs = self.language_model(inputs_embeds=inputs_embeds)
        logits = outputs[0]
        loss = None if labels is None else logits.sum()
        return logits, loss
'''


def _split():
    output, state = transformed(LEGACY, SplitBaseAndHead)
    assert not state.diagnostics, [d.render() for d in state.diagnostics]
    return output, state


def test_composite_becomes_a_fusing_base_model_and_a_head():
    output, state = _split()
    compile(output, FILENAME, "exec")
    assert "class FuseModel(FusePreTrainedModel):" in output
    assert "        self.language_model = TextModel(config.text_config)\n" in output
    assert "        self.model = FuseModel(config)\n" in output
    assert "        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)\n" in output
    assert "        return self.language_model(inputs_embeds=inputs_embeds)\n" in output
    assert state.facts["auto_map"] == {"AutoModel": "modeling_test.FuseModel"}
    assert {c.transform for c in state.changes} == {"multimodal-split"}


def test_split_model_computes_the_legacy_logits_from_renamed_weights():
    output, state = _split()
    legacy_ns, ported_ns = {}, {}
    exec(compile(LEGACY, FILENAME, "exec"), legacy_ns)
    exec(compile(output, FILENAME, "exec"), ported_ns)
    torch.manual_seed(0)
    legacy = legacy_ns["FuseForConditionalGeneration"](legacy_ns["FuseConfig"]()).eval()
    ported = ported_ns["FuseForConditionalGeneration"](ported_ns["FuseConfig"]()).eval()
    renamed = {}
    for name, tensor in legacy.state_dict().items():
        for op in state.weight_ops:  # the first matching op renames, as the conversion does
            if re.fullmatch(op.source, name):
                name = re.sub(op.source, op.targets[0], name)
                break
        renamed[name] = tensor
    ported.load_state_dict(renamed, strict=True)
    ids = torch.tensor([[1, 3, 3, 2]])
    pixels = torch.randn(1, 2, 4)
    with torch.no_grad():
        expected, actual = legacy(ids, pixels)[0], ported(ids, pixels)[0]
        hidden = ported.model(ids, pixels)[0]
    assert torch.equal(actual, expected)
    assert hidden.shape == (1, 4, 6), "the base model returns hidden states, not logits"
    assert not hasattr(ported.model, "lm_head") and hasattr(ported.model, "language_model")


def test_left_alone_when_the_code_after_the_call_reads_what_the_fusion_recomputed():
    merged = LEGACY.replace(
        "            inputs_embeds = inputs_embeds.masked_scatter(mask, image_features)\n",
        "            inputs_embeds = inputs_embeds.masked_scatter(mask, image_features)\n            labels = None\n",
    )
    check_noop(merged, SplitBaseAndHead)


def test_noop_on_a_model_already_split():
    output, _ = _split()
    check_noop(output, SplitBaseAndHead)


BRANCHED = LEGACY.replace(
    "import torch\nfrom torch import nn\n", "import torch\nimport torch.nn.functional as F\nfrom torch import nn\n"
).replace(
    "        self.image_token_index = image_token_index\n",
    "        self.image_token_index = image_token_index\n        self.pretraining_tp = 3\n",
).replace(
    "        self.model = TextModel(config)\n",
    "        self.model = TextModel(config)\n        self.vocab_size = config.vocab_size\n",
).replace(
    "        logits = self.lm_head(hidden_states)\n",
    "        if self.config.pretraining_tp > 1:\n"
    "            slices = self.lm_head.weight.split(self.vocab_size // self.config.pretraining_tp, dim=0)\n"
    "            logits = torch.cat([F.linear(hidden_states, slices[i]) for i in range(self.config.pretraining_tp)], dim=-1)\n"
    "        else:\n"
    "            logits = self.lm_head(hidden_states)\n",
)


def test_branched_logits_code_reads_the_text_config_in_the_head():
    """Logits computed in an if/else (llama's `pretraining_tp` slices) move to the head with
    `self.config` and the attributes the text head set from its config read from the nested
    text config, and the module-level names they use (`F`) imported."""
    output, state = transformed(BRANCHED, SplitBaseAndHead)
    assert not state.diagnostics
    assert "        if self.config.text_config.pretraining_tp > 1:\n" in output
    assert "self.lm_head.weight.split(self.config.text_config.vocab_size // self.config.text_config.pretraining_tp" in output
    legacy_ns, ported_ns = {}, {}
    exec(compile(BRANCHED, FILENAME, "exec"), legacy_ns)
    exec(compile(output, FILENAME, "exec"), ported_ns)
    torch.manual_seed(0)
    legacy = legacy_ns["FuseForConditionalGeneration"](legacy_ns["FuseConfig"]()).eval()
    ported = ported_ns["FuseForConditionalGeneration"](ported_ns["FuseConfig"]()).eval()
    for op in state.weight_ops[:2]:  # the text model and the projection move; the tower is not used
        for name, tensor in legacy.state_dict().items():
            if re.fullmatch(op.source, name):
                ported.get_parameter(re.sub(op.source, op.targets[0], name)).data.copy_(tensor)
    ids = torch.tensor([[1, 4, 5, 2]])
    with torch.no_grad():
        assert torch.equal(ported(ids)[0], legacy(ids)[0])
