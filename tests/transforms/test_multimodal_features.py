"""ImageFeaturesMethod: inline image-feature code of a fusing model becomes get_image_features."""

from __future__ import annotations

import torch

from tests.transforms.helpers import FILENAME, check_noop, check_transformed, transformed
from transforms.multimodal_features import ImageFeaturesMethod

HEADER = '''\
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


class FuseConfig(PretrainedConfig):
    model_type = "fuse"

    def __init__(self, feature_layer=-1, image_token_index=3, **kwargs):
        self.feature_layer = feature_layer
        self.image_token_index = image_token_index
        super().__init__(**kwargs)


class Vision(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])

    def forward(self, pixel_values):
        states = [pixel_values.flatten(2).transpose(1, 2)]
        for layer in self.layers:
            states.append(layer(states[-1]))
        return states


class FusePreTrainedModel(PreTrainedModel):
    config_class = FuseConfig


class FuseModel(FusePreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.vision_tower = Vision()
        self.projector = nn.Linear(4, 6)
        self.embed = nn.Embedding(8, 6)

'''

FORWARD = '''\
    def forward(self, input_ids, pixel_values=None, feature_layer=None):
        feature_layer = feature_layer if feature_layer is not None else self.config.feature_layer
        inputs_embeds = self.embed(input_ids)
        if pixel_values is not None:
            states = self.vision_tower(pixel_values)
            selected = states[feature_layer]
            image_features = self.projector(selected)
            mask = (input_ids == self.config.image_token_index).unsqueeze(-1)
            inputs_embeds = inputs_embeds.masked_scatter(mask, image_features.reshape(-1, 6))
        return inputs_embeds
'''

PORTED_FORWARD = '''\
    def get_image_features(self, pixel_values, feature_layer=None, **kwargs):
        """Image features in the embedding space of the language model, one row per image token."""
        feature_layer = feature_layer if feature_layer is not None else self.config.feature_layer
        states = self.vision_tower(pixel_values)
        selected = states[feature_layer]
        image_features = self.projector(selected)
        return image_features

    def forward(self, input_ids, pixel_values=None, feature_layer=None):
        feature_layer = feature_layer if feature_layer is not None else self.config.feature_layer
        inputs_embeds = self.embed(input_ids)
        if pixel_values is not None:
            image_features = self.get_image_features(pixel_values, feature_layer=feature_layer)
            mask = (input_ids == self.config.image_token_index).unsqueeze(-1)
            inputs_embeds = inputs_embeds.masked_scatter(mask, image_features.reshape(-1, 6))
        return inputs_embeds
'''


def _model(code: str):
    namespace: dict = {}
    exec(compile(code, FILENAME, "exec"), namespace)
    torch.manual_seed(0)
    return namespace["FuseModel"](namespace["FuseConfig"]()).eval()


def test_inline_features_move_to_a_method():
    check_transformed(HEADER + FORWARD, HEADER + PORTED_FORWARD, ImageFeaturesMethod)


def test_ported_model_computes_the_same_and_exposes_the_features():
    legacy, ported = _model(HEADER + FORWARD), _model(HEADER + PORTED_FORWARD)
    ported.load_state_dict(legacy.state_dict())
    pixels = torch.randn(2, 4, 2, 2)  # two images, four patches each
    ids = torch.tensor([[1, 3, 3, 3, 3, 2], [3, 3, 3, 3, 1, 2]])
    with torch.no_grad():
        assert torch.equal(ported(ids, pixels), legacy(ids, pixels))
        features = ported.get_image_features(pixels)
    assert features.shape[:2] == (2, 4), "one feature row per image token"
    assert int((ids == 3).sum(-1)[0]) == features.shape[1]


def test_noop_when_the_method_exists():
    check_noop(HEADER + PORTED_FORWARD, ImageFeaturesMethod)


def test_noop_on_a_model_without_pixels():
    check_noop(HEADER + FORWARD.replace("pixel_values", "extra_states"), ImageFeaturesMethod)


def test_features_reading_a_forward_local_are_refused():
    before = HEADER + FORWARD.replace("selected = states[feature_layer]", "selected = states[feature_layer] * scale").replace(
        "        inputs_embeds = self.embed(input_ids)\n", "        inputs_embeds = self.embed(input_ids)\n        scale = 2\n"
    )
    output, state = transformed(before, ImageFeaturesMethod)
    assert output == before
    assert state.diagnostics and "scale" in state.diagnostics[0].render()


def test_keywords_threaded_to_the_vision_tower_are_passed_on():
    before = HEADER + FORWARD.replace("feature_layer=None):", "feature_layer=None, **kwargs):").replace(
        "self.vision_tower(pixel_values)", "self.vision_tower(pixel_values, **kwargs)"
    )
    output, state = transformed(before, ImageFeaturesMethod)
    assert not state.diagnostics
    assert "    def get_image_features(self, pixel_values, feature_layer=None, **kwargs):" in output
    assert "states = self.vision_tower(pixel_values, **kwargs)" in output
    assert "self.get_image_features(pixel_values, feature_layer=feature_layer, **kwargs)" in output
