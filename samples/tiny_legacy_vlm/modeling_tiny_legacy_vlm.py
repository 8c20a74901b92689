# coding=utf-8
""" TinyLegacyVLM: image tiles through a small ViT, projected into the TinyLegacyLM text tower.

Each tile of `tile_size` pixels becomes `(tile_size // patch_size) ** 2` patch embeddings;
the processor writes one `<image>` placeholder per patch embedding, and the model puts the
projected embeddings in their place.
"""
from typing import List, Optional, Tuple, Union

import torch
import torch.utils.checkpoint
from torch import nn
from torch.nn import CrossEntropyLoss

from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import logging

from .configuration_tiny_legacy_vlm import TinyLegacyVisionConfig, TinyLegacyVLMConfig
from .modeling_tiny_legacy_lm import TinyLegacyLMForCausalLM


logger = logging.get_logger(__name__)


class TinyLegacyVisionAttention(nn.Module):
    """Bidirectional multi-head attention over the patches of one tile."""

    def __init__(self, config: TinyLegacyVisionConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        bsz, seq_len, _ = hidden_states.size()
        query_states, key_states, value_states = self.qkv(hidden_states).chunk(3, dim=-1)
        query_states = query_states.view(bsz, seq_len, self.num_heads, self.head_dim).transpose(1, 2)
        key_states = key_states.view(bsz, seq_len, self.num_heads, self.head_dim).transpose(1, 2)
        value_states = value_states.view(bsz, seq_len, self.num_heads, self.head_dim).transpose(1, 2)

        attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) * self.scale
        attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype)
        attn_output = torch.matmul(attn_weights, value_states)

        attn_output = attn_output.transpose(1, 2).contiguous()
        attn_output = attn_output.reshape(bsz, seq_len, -1)
        return self.proj(attn_output)


class TinyLegacyVisionBlock(nn.Module):
    def __init__(self, config: TinyLegacyVisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = TinyLegacyVisionAttention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states))
        hidden_states = hidden_states + self.fc2(nn.functional.gelu(self.fc1(self.norm2(hidden_states))))
        return hidden_states


class TinyLegacyVisionModel(nn.Module):
    def __init__(self, config: TinyLegacyVisionConfig):
        super().__init__()
        self.config = config
        num_patches = (config.tile_size // config.patch_size) ** 2
        self.patch_embed = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size, config.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, config.hidden_size))
        self.blocks = nn.ModuleList([TinyLegacyVisionBlock(config) for _ in range(config.num_hidden_layers)])
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden_states = self.patch_embed(pixel_values).flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            hidden_states = block(hidden_states)
        return self.norm(hidden_states)


class TinyLegacyVLMPreTrainedModel(PreTrainedModel):
    config_class = TinyLegacyVLMConfig
    base_model_prefix = "model"
    _no_split_modules = ["TinyLegacyVisionBlock", "TinyLegacyLMBlock"]
    _supports_sdpa = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.normal_(mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
        elif isinstance(module, TinyLegacyVisionModel):
            module.pos_embed.data.normal_(mean=0.0, std=std)


class TinyLegacyVLMForConditionalGeneration(TinyLegacyVLMPreTrainedModel):
    def __init__(self, config: TinyLegacyVLMConfig):
        super().__init__(config)
        self.vision_model = TinyLegacyVisionModel(config.vision_config)
        self.projector = nn.Linear(config.vision_config.hidden_size, config.text_config.hidden_size)
        self.language_model = TinyLegacyLMForCausalLM._from_config(
            config.text_config, attn_implementation=config._attn_implementation
        )
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def get_decoder(self):
        return self.language_model.get_decoder()

    def tie_weights(self):
        return self.language_model.tie_weights()

    def forward(
        self,
        input_ids: torch.LongTensor = None,
        pixel_values: Optional[torch.FloatTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[List[torch.FloatTensor]] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> Union[Tuple, CausalLMOutputWithPast]:
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
            if pixel_values is not None:
                patch_embeds = self.vision_model(pixel_values)
                image_features = self.projector(patch_embeds)
                image_mask = (input_ids == self.config.image_token_index).unsqueeze(-1).expand_as(inputs_embeds)
                if image_mask.sum() != image_features.numel():
                    raise ValueError(
                        f"{int(image_mask.sum()) // inputs_embeds.shape[-1]} image tokens for "
                        f"{image_features.shape[0] * image_features.shape[1]} image features"
                    )
                inputs_embeds = inputs_embeds.masked_scatter(image_mask, image_features.to(inputs_embeds.dtype))

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = outputs.logits
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(logits[..., :-1, :].flatten(0, 1), labels[..., 1:].flatten())
        if not return_dict:
            output = (logits,) + (outputs.past_key_values, outputs.hidden_states, outputs.attentions)
            return (loss,) + output if loss is not None else output
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
