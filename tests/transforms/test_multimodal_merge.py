"""ScatterIntoPlaceholders: a merge that builds longer sequences inside forward becomes
masked_scatter into placeholders the processor expanded; the ported model, given the
expanded prompt, computes what the legacy model computed from one placeholder per image."""

from __future__ import annotations

import textwrap

import torch

from tests.transforms.helpers import check_noop, check_transformed, transformed
from transforms.multimodal_merge import ScatterIntoPlaceholders

HEADER = '''\
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


class FuseConfig(PretrainedConfig):
    model_type = "fuse"

    def __init__(self, image_token_index=3, select="default", **kwargs):
        self.image_token_index = image_token_index
        self.select = select
        super().__init__(**kwargs)


class PatchEmbeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.num_patches = 4
        self.num_positions = self.num_patches + 1


class FusePreTrainedModel(PreTrainedModel):
    config_class = FuseConfig


class FuseModel(FusePreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.vision_tower = nn.Linear(4, 6)
        self.embed = nn.Embedding(8, 6)

    def get_input_embeddings(self):
        return self.embed

    def get_image_features(self, pixel_values, select=None):
        select = select if select is not None else self.config.select
        features = self.vision_tower(pixel_values)
        if select == "default":
            features = features[:, 1:]
        return features

'''

MERGE = '''\
    def _merge_image_features(self, image_features, inputs_embeds, input_ids, attention_mask):
        num_images, rows, dim = image_features.shape
        image_mask = input_ids == self.config.image_token_index
        new_positions = torch.cumsum(image_mask * (rows - 1) + 1, -1) - 1
        length = int(new_positions[:, -1].max()) + 1
        merged = torch.zeros(input_ids.shape[0], length, dim, dtype=inputs_embeds.dtype)
        merged_mask = torch.zeros(input_ids.shape[0], length, dtype=attention_mask.dtype)
        batch, text = torch.where(~image_mask)
        merged[batch, new_positions[batch, text]] = inputs_embeds[batch, text]
        merged_mask[batch, new_positions[batch, text]] = attention_mask[batch, text]
        image_rows = torch.ones(input_ids.shape[0], length, dtype=torch.bool)
        image_rows[batch, new_positions[batch, text]] = False
        merged[image_rows] = image_features.reshape(-1, dim)
        merged_mask |= image_rows
        position_ids = (merged_mask.cumsum(-1) - 1).masked_fill_(merged_mask == 0, 1)
        return merged, merged_mask, position_ids

'''

FORWARD = '''\
    def forward(self, input_ids, pixel_values=None, attention_mask=None, position_ids=None, past_key_values=None):
        inputs_embeds = self.embed(input_ids)
        if pixel_values is not None and input_ids.shape[1] != 1:
            image_features = self.get_image_features(pixel_values)
            inputs_embeds, attention_mask, position_ids = self._merge_image_features(
                image_features, inputs_embeds, input_ids, attention_mask
            )
        elif past_key_values is not None and pixel_values is not None:
            attention_mask = torch.cat([torch.ones_like(past_key_values), attention_mask], dim=1)
        return inputs_embeds, attention_mask, position_ids
'''

PORTED = '''\
    def get_placeholder_mask(self, input_ids, inputs_embeds, image_features):
        """Positions of the image placeholder tokens, one per image feature row."""
        if input_ids is None:
            placeholder = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_index, dtype=torch.long, device=inputs_embeds.device)
            )
            special_image_mask = (inputs_embeds == placeholder).all(-1)
        else:
            special_image_mask = input_ids == self.config.image_token_index
        n_image_tokens = int(special_image_mask.sum())
        n_image_features = image_features.shape[:-1].numel()
        if n_image_tokens != n_image_features:
            raise ValueError(
                f"Image features and image tokens do not match: tokens: {n_image_tokens}, features: {n_image_features}"
            )
        return special_image_mask.unsqueeze(-1).expand_as(inputs_embeds).to(inputs_embeds.device)

    def forward(self, input_ids, pixel_values=None, attention_mask=None, position_ids=None, past_key_values=None):
        inputs_embeds = self.embed(input_ids)
        if pixel_values is not None and input_ids.shape[1] != 1:
            image_features = self.get_image_features(pixel_values)
            special_image_mask = self.get_placeholder_mask(input_ids, inputs_embeds=inputs_embeds, image_features=image_features)
            inputs_embeds = inputs_embeds.masked_scatter(special_image_mask, image_features.to(inputs_embeds.device, inputs_embeds.dtype))
            if position_ids is None and attention_mask is not None:
                position_ids = (attention_mask.cumsum(-1) - 1).masked_fill_(attention_mask == 0, 1)
        return inputs_embeds, attention_mask, position_ids
'''


def test_merge_becomes_scatter_into_placeholders():
    state = check_transformed(HEADER + MERGE + FORWARD, HEADER + PORTED, ScatterIntoPlaceholders)
    assert state.facts["placeholders"] == {
        "image_token_key": "image_token_index", "dropped": 1, "select_key": "select", "select_value": "default",
        "extra_tokens": 1,
    }


def _model(source: str):
    namespace: dict = {}
    exec(compile(source, "modeling_fuse.py", "exec"), namespace)
    torch.manual_seed(0)
    return namespace["FuseModel"](namespace["FuseConfig"]()).eval()


def test_ported_model_on_the_expanded_prompt_equals_the_legacy_merge():
    """Legacy: one placeholder per image, expanded inside. Ported: the prompt holds one
    placeholder per feature row. Same weights: same embeddings, mask and positions."""
    legacy = _model(HEADER + MERGE + FORWARD)
    ported = _model(transformed(HEADER + MERGE + FORWARD, ScatterIntoPlaceholders)[0])
    ported.load_state_dict(legacy.state_dict())
    pixels = torch.randn(2, 5, 4)  # 5 tower rows per image; "default" keeps 4
    legacy_ids = torch.tensor([[5, 3, 6, 7], [3, 4, 5, 6]])
    rows = 4
    ported_ids = torch.tensor([[5, *[3] * rows, 6, 7], [*[3] * rows, 4, 5, 6]])
    mask = torch.ones_like(legacy_ids)
    with torch.no_grad():
        expected = legacy(legacy_ids, pixel_values=pixels, attention_mask=mask)
        actual = ported(ported_ids, pixel_values=pixels, attention_mask=torch.ones_like(ported_ids))
    for want, got in zip(expected, actual, strict=True):
        assert torch.equal(want, got)


def test_a_placeholder_count_that_differs_from_the_features_is_an_error():
    ported = _model(transformed(HEADER + MERGE + FORWARD, ScatterIntoPlaceholders)[0])
    ids = torch.tensor([[5, 3, 6, 7]])  # one placeholder for four feature rows
    try:
        ported(ids, pixel_values=torch.randn(1, 5, 4), attention_mask=torch.ones_like(ids))
    except ValueError as exc:
        assert "tokens: 1, features: 4" in str(exc)
    else:
        raise AssertionError("the mismatch went unnoticed")


def test_models_that_already_scatter_are_left_alone():
    scatter = textwrap.indent(textwrap.dedent('''\
        def forward(self, input_ids, pixel_values=None):
            inputs_embeds = self.embed(input_ids)
            image_features = self.get_image_features(pixel_values)
            mask = (input_ids == self.config.image_token_index).unsqueeze(-1)
            return inputs_embeds.masked_scatter(mask, image_features)
        '''), "    ")
    check_noop(HEADER + scatter, ScatterIntoPlaceholders)


def test_a_helper_that_builds_no_new_sequence_is_left_alone():
    """The helper only masks the embeddings: nothing is allocated, nothing to expand."""
    helper = textwrap.indent(textwrap.dedent('''\
        def _merge_image_features(self, image_features, inputs_embeds, input_ids, attention_mask):
            kept = (input_ids != self.config.image_token_index).unsqueeze(-1)
            return inputs_embeds * kept, attention_mask, None

        '''), "    ")
    check_noop(HEADER + helper + FORWARD, ScatterIntoPlaceholders)


def test_no_get_image_features_no_change():
    header = HEADER.replace("def get_image_features(self, pixel_values, select=None):", "def image_features(self, pixel_values, select=None):")
    check_noop(header + MERGE + FORWARD.replace("self.get_image_features(", "self.image_features("), ScatterIntoPlaceholders)


def test_a_helper_that_does_not_return_new_embeddings_is_refused():
    forward = FORWARD.replace("inputs_embeds, attention_mask, position_ids = self._merge", "merged, attention_mask, position_ids = self._merge")
    state = check_noop(HEADER + MERGE + forward, ScatterIntoPlaceholders, diagnostics=True)
    assert "does not return new `inputs_embeds`" in state.diagnostics[0].render()


GENERATION = '''\
    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, **kwargs):
        if past_key_values is not None and self.config.image_token_index in input_ids:
            input_ids = input_ids[:, -1:]
        return {"input_ids": input_ids, "past_key_values": past_key_values, **kwargs}

'''


def test_generation_inputs_written_for_prompts_the_model_expanded_are_removed():
    output, state = transformed(HEADER + MERGE + GENERATION + FORWARD, ScatterIntoPlaceholders)
    assert output == HEADER + PORTED
    assert "prepare_inputs_for_generation removed" in state.changes[-1].message


def test_generation_inputs_that_ignore_the_image_token_are_kept():
    generation = GENERATION.replace(" and self.config.image_token_index in input_ids", "")
    output, _ = transformed(HEADER + MERGE + generation + FORWARD, ScatterIntoPlaceholders)
    assert output == HEADER + generation + PORTED
