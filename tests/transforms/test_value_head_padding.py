"""value-head-padding: value heads narrower than key heads are padded for caches that hold
one head size, and the output cut back; the config states the key head size."""

from __future__ import annotations

import textwrap

import torch

from tests.transforms.helpers import check_noop, run_transforms
from transforms.value_head_padding import PadValueHeads

CONFIG = '''\
from transformers import PretrainedConfig


class LatentConfig(PretrainedConfig):
    model_type = "latent_test"

    def __init__(self, hidden_size=32, num_attention_heads=4, qk_nope_head_dim=4, qk_rope_head_dim=2, v_head_dim=4, **kwargs):
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.qk_nope_head_dim = qk_nope_head_dim
        self.qk_rope_head_dim = qk_rope_head_dim
        self.v_head_dim = v_head_dim
        super().__init__(**kwargs)
'''

# Already routed through the interface, as attention-interface leaves latent attention.
MODELING = '''\
import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    attn_weights = torch.softmax(torch.matmul(query, key.transpose(2, 3)) * scaling, dim=-1)
    return torch.matmul(attn_weights, value).transpose(1, 2).contiguous(), attn_weights


class LatentAttention(nn.Module):
    def __init__(self, config, layer_idx=None):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.v_head_dim = config.v_head_dim
        self.q_head_dim = config.qk_nope_head_dim + config.qk_rope_head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.q_head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_heads * self.q_head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_heads * self.v_head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.v_head_dim, config.hidden_size, bias=False)
        self.scaling = self.q_head_dim ** -0.5
        self.head_dim = self.q_head_dim

    def forward(self, hidden_states, attention_mask=None, past_key_value=None, **kwargs):
        bsz, q_len, _ = hidden_states.size()
        query_states = self.q_proj(hidden_states).view(bsz, q_len, self.num_heads, -1).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(bsz, q_len, self.num_heads, -1).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(bsz, q_len, self.num_heads, -1).transpose(1, 2)
        if past_key_value is not None:
            key_states, value_states = past_key_value.update(key_states, value_states, self.layer_idx)

        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self, query_states, key_states, value_states, attention_mask, scaling=self.scaling, **kwargs
        )

        attn_output = attn_output.reshape(bsz, q_len, self.num_heads * self.v_head_dim)
        return self.o_proj(attn_output), attn_weights
'''


def _ported(modeling: str = MODELING):
    files, state = run_transforms({"configuration_latent.py": CONFIG, "modeling_latent.py": modeling}, PadValueHeads)
    return files, state


def test_values_padded_before_the_cache_and_cut_after_the_kernel():
    files, state = _ported()
    modeling = files["modeling_latent.py"]
    assert textwrap.dedent('''\
        value_head_size = value_states.shape[-1]
        value_states = torch.nn.functional.pad(value_states, [0, key_states.shape[-1] - value_head_size])
        if past_key_value is not None:
    ''') in textwrap.dedent(modeling[modeling.index("        value_head_size ="):])[: 200]
    assert "        attn_output = attn_output[..., :value_head_size]\n\n        attn_output = attn_output.reshape(" in modeling
    assert "self.head_dim = self.qk_nope_head_dim + self.qk_rope_head_dim" in files["configuration_latent.py"]
    assert state.facts["value_heads_padded"] == {"LatentAttention": "config.qk_nope_head_dim + config.qk_rope_head_dim"}
    # the ported module computes what the legacy one did, on eager and sdpa
    legacy, ported = {}, {}
    exec(compile(MODELING, "legacy.py", "exec"), legacy)
    exec(compile(modeling, "ported.py", "exec"), ported)
    exec(compile(files["configuration_latent.py"], "config.py", "exec"), ported)
    config = ported["LatentConfig"]()
    assert config.head_dim == 6
    hidden = torch.randn(2, 5, 32)
    for implementation in ("eager", "sdpa"):
        config._attn_implementation = implementation
        torch.manual_seed(0)
        before = legacy["LatentAttention"](config)
        after = ported["LatentAttention"](config)
        after.load_state_dict(before.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(after(hidden)[0], before(hidden)[0], rtol=0, atol=1e-6)


def test_noop_when_values_have_the_key_head_size():
    same = MODELING.replace("self.num_heads * self.v_head_dim)\n        return", "self.num_heads * self.head_dim)\n        return")
    check_noop(same, PadValueHeads)
    # a head size the config cannot give (read from a tensor) is not declared: the class is left alone
    check_noop(MODELING.replace("self.head_dim = self.q_head_dim", "self.head_dim = self.q_proj.weight.shape[0] // 4"), PadValueHeads)


def test_idempotent():
    files, _ = _ported()
    again, state = run_transforms(files, PadValueHeads)
    assert again == files and not state.changes

