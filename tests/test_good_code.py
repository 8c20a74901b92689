"""Good code stays good (CONTRACT G3): transformers' own modeling files, already on the
attention interface, come out of the rewrite unchanged and unrefused.

The whole set (about 350 files on the interface, 180 legacy ones) runs in
`benchmarks/fuzz_good_code.py`; here a fixed sample, each file chosen for a shape a
transform once mistook for legacy code.
"""

from __future__ import annotations

import pytest

from tests.fuzz.good_code import installed_modeling_files, rewrite_installed_file

GOOD_SAMPLE = {
    # RMSNorm's `nn.Parameter(torch.ones(...))`; a `ROPE_INIT_FUNCTIONS[...]` lookup guarded
    # by `rope_type != "default"`.
    "llama": "modeling_llama.py",
    # `nn.Parameter(...) if use_mask_token else None`; buffers declared with `nn.Buffer`.
    "ijepa": "modeling_ijepa.py",
    # A prepare_inputs_for_generation override that wraps GenerationMixin's.
    "phi3": "modeling_phi3.py",
    # Unannotated **kwargs, a cross-attention call that does not pass them, and backend
    # flags the authors chose.
    "gpt2": "modeling_gpt2.py",
    # A non-persistent buffer registered on a submodule and filled by `_init_weights`.
    "falcon_h1": "modeling_falcon_h1.py",
}
LEGACY_SAMPLE = {
    # Not on the interface: may be rewritten or refused, never a crash.
    "fnet": "modeling_fnet.py",
}


def _installed(folder: str, name: str):
    for path in installed_modeling_files():
        if path.parent.name == folder and path.name == name:
            return path
    pytest.skip(f"the installed transformers has no models/{folder}/{name}")


@pytest.mark.parametrize("folder", sorted(GOOD_SAMPLE))
def test_interface_code_is_left_unchanged(folder: str) -> None:
    outcome = rewrite_installed_file(_installed(folder, GOOD_SAMPLE[folder]))
    assert outcome.on_interface
    assert outcome.kind == "unchanged", f"{outcome.transforms}\n{outcome.detail}"


@pytest.mark.parametrize("folder", sorted(LEGACY_SAMPLE))
def test_legacy_code_is_rewritten_or_refused_never_crashes(folder: str) -> None:
    outcome = rewrite_installed_file(_installed(folder, LEGACY_SAMPLE[folder]))
    assert not outcome.on_interface
    assert outcome.kind != "crashed", outcome.detail


# -- the shapes behind those files, inline: interface code untouched, legacy code still ported
INTERFACE_MODEL = '''
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    weights = torch.softmax(torch.matmul(query, key.transpose(2, 3)) * scaling, dim=-1)
    return torch.matmul(weights, value), weights


class Rotary(nn.Module):
    def __init__(self, config):
        super().__init__()
        kind = config.rope_parameters["rope_type"]
        init_fn = self.compute_default_rope_parameters if kind == "default" else ROPE_INIT_FUNCTIONS[kind]
        inv_freq, self.attention_scaling = init_fn(config)
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)


class Embeddings(nn.Module):
    def __init__(self, config, use_mask_token=False):
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if use_mask_token else None
        self.position_ids = nn.Buffer(torch.arange(config.max_position_embeddings), persistent=False)
        self.state = None

    def forward(self, x):
        self.state = torch.zeros(x.shape[0])  # kept between calls, not built at construction
        return x


class Attention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.scaling = 0.125
        self.q_proj = nn.Linear(8, 8)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        q = self.q_proj(hidden_states)
        out, weights = attention_interface(self, q, q, q, attention_mask, scaling=self.scaling, **kwargs)
        return out, weights


class AudioAttention(nn.Module):
    """Hand-written attention beside the routed one (no config, einsum scores): the author
    left it off the interface, and the port leaves it so."""

    def __init__(self, hidden_size):
        super().__init__()
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        weights = torch.softmax(torch.einsum("bqd,bkd->bqk", q, k), dim=-1)
        return torch.einsum("bqk,bkd->bqd", weights, v)


class Layer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.self_attn = Attention(config, layer_idx)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        return self.self_attn(hidden_states, attention_mask)[0]


class ToyPreTrainedModel(PreTrainedModel):
    _supports_sdpa = True


class ToyModel(ToyPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embeddings = Embeddings(config)
        self.audio = AudioAttention(8)
        self.layers = nn.ModuleList([Layer(config, i) for i in range(2)])
        self.post_init()

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask)
        return hidden_states


class ToyForCTC(ToyPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.model = ToyModel(config)
        self.post_init()

    def forward(self, hidden_states, **kwargs):
        return CausalLMOutput(logits=self.model(hidden_states))

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, **kwargs):
        if past_key_values is not None and input_ids.shape[1] > 4:
            past_key_values = None  # a cache this model must rebuild
        return super().prepare_inputs_for_generation(input_ids, past_key_values=past_key_values, **kwargs)
'''


def test_interface_shapes_are_left_unchanged() -> None:
    from tests.transforms.helpers import check_noop

    check_noop(INTERFACE_MODEL)


def test_the_same_shapes_in_legacy_code_are_still_ported() -> None:
    """Without the interface call, the attention is legacy: kwargs are threaded, the head
    generates, and an unguarded table lookup gains the removed "default" entry."""
    from tests.transforms.helpers import transformed

    legacy = INTERFACE_MODEL.replace(
        "init_fn = self.compute_default_rope_parameters if kind == \"default\" else ROPE_INIT_FUNCTIONS[kind]",
        "init_fn = ROPE_INIT_FUNCTIONS[kind]",
    ).replace(
        """        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        q = self.q_proj(hidden_states)
        out, weights = attention_interface(self, q, q, q, attention_mask, scaling=self.scaling, **kwargs)
""",
        """        q = self.q_proj(hidden_states)
        weights = torch.softmax(torch.matmul(q, q.transpose(2, 3)) * self.scaling, dim=-1)
        out = torch.matmul(weights, q)
""",
    )
    assert "get_interface" not in legacy
    _, state = transformed(legacy)
    done = {(c.transform, c.message.split(" ")[0]) for c in state.changes}
    assert ("rope-config", "ROPE_INIT_FUNCTIONS[...]") in done
    assert any(t == "kwargs-threading" for t, _ in done)
    assert ("generation", "ToyForCTC") in done
