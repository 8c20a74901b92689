"""Encoder-decoder models are refused at their cross-attention class: the class, the input
its keys and values are projected from and the two layer stacks are named. A module that
could attend to another input but sits in a single-stack model (BERT's optional
cross-attention) is routed as before."""

from __future__ import annotations

import textwrap

from tests.transforms.helpers import transformed
from transforms.attention_interface import RouteAttention

ENCODER_DECODER = textwrap.dedent("""\
    import torch
    from torch import nn
    from transformers import PreTrainedModel


    class Seq2SeqAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.num_heads = config.num_attention_heads
            self.head_dim = config.hidden_size // self.num_heads
            self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
            self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
            self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)

        def forward(self, hidden_states, key_value_states=None, attention_mask=None):
            bsz, tgt_len, _ = hidden_states.size()
            source = hidden_states if key_value_states is None else key_value_states
            q = self.q_proj(hidden_states).view(bsz, -1, self.num_heads, self.head_dim).transpose(1, 2)
            k = self.k_proj(key_value_states if key_value_states is not None else hidden_states)
            k = k.view(bsz, -1, self.num_heads, self.head_dim).transpose(1, 2)
            v = self.v_proj(source).view(bsz, -1, self.num_heads, self.head_dim).transpose(1, 2)
            scores = torch.matmul(q, k.transpose(-1, -2)) * self.head_dim**-0.5
            if attention_mask is not None:
                scores = scores + attention_mask
            probs = scores.softmax(-1)
            out = torch.matmul(probs, v)
            out = out.transpose(1, 2).reshape(bsz, tgt_len, -1)
            return out


    class EncoderLayer(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.self_attn = Seq2SeqAttention(config)

        def forward(self, hidden_states, attention_mask=None):
            return hidden_states + self.self_attn(hidden_states, attention_mask=attention_mask)


    class DecoderLayer(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.self_attn = Seq2SeqAttention(config)
            self.encoder_attn = Seq2SeqAttention(config)

        def forward(self, hidden_states, encoder_hidden_states, attention_mask=None):
            hidden_states = hidden_states + self.self_attn(hidden_states, attention_mask=attention_mask)
            return hidden_states + self.encoder_attn(hidden_states, key_value_states=encoder_hidden_states)


    class Seq2SeqPreTrainedModel(PreTrainedModel):
        base_model_prefix = "model"


    class Encoder(Seq2SeqPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.layers = nn.ModuleList([EncoderLayer(config) for _ in range(2)])


    class Decoder(Seq2SeqPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.layers = nn.ModuleList([DecoderLayer(config) for _ in range(2)])


    class Seq2SeqModel(Seq2SeqPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.encoder = Encoder(config)
            self.decoder = Decoder(config)
""")


def test_the_cross_attention_class_of_an_encoder_decoder_model_is_refused_exactly():
    output, state = transformed(ENCODER_DECODER, RouteAttention)
    assert output == ENCODER_DECODER
    assert [(d.line, d.symbol) for d in state.diagnostics] == [(20, "Seq2SeqAttention")]
    assert state.diagnostics[0].render() == (
        "modeling_test.py:20: Seq2SeqAttention: [attention-interface] Seq2SeqAttention is a cross-attention: it "
        "projects keys and values from `key_value_states`, and Seq2SeqModel holds two layer stacks (encoder: "
        "Encoder, decoder: Decoder), an encoder-decoder model; port-model does not port encoder-decoder models "
        "(their cross-attention needs an encoder-decoder cache)"
    )


def test_a_single_stack_model_whose_attention_could_attend_elsewhere_is_routed():
    """BERT's attention takes `encoder_hidden_states` too; with one stack it is an encoder."""
    single = ENCODER_DECODER.replace("        self.decoder = Decoder(config)\n", "")
    assert single != ENCODER_DECODER
    output, state = transformed(single, RouteAttention)
    assert not state.diagnostics, [d.render() for d in state.diagnostics]
    assert "ALL_ATTENTION_FUNCTIONS.get_interface(" in output


def test_a_projection_handed_to_a_helper_is_followed():
    """T5 style: `project(hidden_states, self.k, key_value_states)`."""
    legacy = ENCODER_DECODER.replace(
        "        k = self.k_proj(key_value_states if key_value_states is not None else hidden_states)\n",
        "        k = project(hidden_states, self.k_proj, key_value_states)\n",
    ) + "\n\ndef project(hidden_states, layer, key_value_states):\n    return layer(hidden_states if key_value_states is None else key_value_states)\n"
    _, state = transformed(legacy, RouteAttention)
    assert [(d.line, d.symbol) for d in state.diagnostics] == [(20, "Seq2SeqAttention")]
    assert "projects keys and values from `key_value_states`" in state.diagnostics[0].message
