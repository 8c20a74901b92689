# coding=utf-8
""" TinyLegacyVLM model configuration: a tiling vision tower and the TinyLegacyLM text tower."""

from transformers.configuration_utils import PretrainedConfig
from transformers.utils import logging

from .configuration_tiny_legacy_lm import TinyLegacyLMConfig


logger = logging.get_logger(__name__)


class TinyLegacyVisionConfig(PretrainedConfig):
    model_type = "tiny_legacy_vision"

    def __init__(
        self,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        tile_size=16,
        patch_size=8,
        num_channels=3,
        layer_norm_eps=1e-5,
        initializer_range=0.2,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.tile_size = tile_size
        self.image_size = tile_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        super().__init__(**kwargs)


class TinyLegacyVLMConfig(PretrainedConfig):
    model_type = "tiny_legacy_vlm"
    is_composition = True

    def __init__(self, vision_config=None, text_config=None, image_token_index=4, initializer_range=0.2, **kwargs):
        if isinstance(vision_config, dict):
            vision_config = TinyLegacyVisionConfig(**vision_config)
        self.vision_config = vision_config if vision_config is not None else TinyLegacyVisionConfig()
        if isinstance(text_config, dict):
            text_config = TinyLegacyLMConfig(**text_config)
        self.text_config = text_config if text_config is not None else TinyLegacyLMConfig()
        self.image_token_index = image_token_index
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
