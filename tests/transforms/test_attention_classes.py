"""CollapseBackendClasses: per-backend attention subclasses and their dispatch dict go away."""

from __future__ import annotations

from tests.transforms.helpers import check_noop, check_transformed, run_transforms
from transforms.attention_classes import CollapseBackendClasses

EAGER_ATTENTION = '''\
    import torch
    from torch import nn


    class FooAttention(nn.Module):
        def __init__(self, config, layer_idx=None):
            super().__init__()
            self.config = config
            self.layer_idx = layer_idx

        def forward(self, query_states, key_states, value_states):
            attn_weights = torch.matmul(query_states, key_states.transpose(2, 3))
            attn_weights = nn.functional.softmax(attn_weights, dim=-1)
            return torch.matmul(attn_weights, value_states)
'''


def test_variants_and_dict_removed_lookup_becomes_eager_class():
    state = check_transformed(
        EAGER_ATTENTION
        + '''\


    class FooFlashAttention2(FooAttention):
        def forward(self, query_states, key_states, value_states):
            return flash_attn_func(query_states, key_states, value_states, causal=True)


    class FooSdpaAttention(FooAttention):
        def forward(self, query_states, key_states, value_states):
            return torch.nn.functional.scaled_dot_product_attention(query_states, key_states, value_states)


    FOO_ATTENTION_CLASSES = {
        "eager": FooAttention,
        "flash_attention_2": FooFlashAttention2,
        "sdpa": FooSdpaAttention,
    }


    class FooDecoderLayer(nn.Module):
        def __init__(self, config, layer_idx):
            super().__init__()
            self.self_attn = FOO_ATTENTION_CLASSES[config._attn_implementation](config=config, layer_idx=layer_idx)

        def forward(self, hidden_states):
            return self.self_attn(hidden_states, hidden_states, hidden_states)
''',
        EAGER_ATTENTION
        + '''\


    class FooDecoderLayer(nn.Module):
        def __init__(self, config, layer_idx):
            super().__init__()
            self.self_attn = FooAttention(config=config, layer_idx=layer_idx)

        def forward(self, hidden_states):
            return self.self_attn(hidden_states, hidden_states, hidden_states)
''',
        CollapseBackendClasses,
    )
    messages = [c.message for c in state.changes]
    assert any("FooFlashAttention2" in m for m in messages)
    assert any("FooSdpaAttention" in m for m in messages)
    assert any("FOO_ATTENTION_CLASSES[...] -> FooAttention" in m for m in messages)


def test_variant_listed_in_dict_without_inheriting_is_removed():
    """A class next to "eager" in a backend dict is a variant even if it shares no base."""
    check_transformed(
        EAGER_ATTENTION
        + '''\


    class FooSdpaAttention(nn.Module):
        def forward(self, query_states, key_states, value_states):
            return torch.nn.functional.scaled_dot_product_attention(query_states, key_states, value_states)


    FOO_ATTENTION_CLASSES = {"eager": FooAttention, "sdpa": FooSdpaAttention}
''',
        EAGER_ATTENTION,
        CollapseBackendClasses,
    )


def test_noop_single_attention_class_without_dict():
    check_noop(
        EAGER_ATTENTION
        + '''\


    class FooDecoderLayer(nn.Module):
        def __init__(self, config, layer_idx):
            super().__init__()
            self.self_attn = FooAttention(config, layer_idx)
''',
        CollapseBackendClasses,
    )


def test_noop_dict_that_is_not_a_backend_dict():
    check_noop(
        '''\
    ACT_CLASSES = {"gelu": "GELUActivation", "relu": "ReLU"}
    ''',
        CollapseBackendClasses,
    )


def test_lookup_in_another_file_is_replaced():
    attention = EAGER_ATTENTION + '''\


    class FooSdpaAttention(FooAttention):
        def forward(self, query_states, key_states, value_states):
            return torch.nn.functional.scaled_dot_product_attention(query_states, key_states, value_states)


    FOO_ATTENTION_CLASSES = {"eager": FooAttention, "sdpa": FooSdpaAttention}
'''
    layer = '''\
    from torch import nn

    from .modeling_foo_attention import FOO_ATTENTION_CLASSES


    class FooDecoderLayer(nn.Module):
        def __init__(self, config, layer_idx):
            super().__init__()
            self.self_attn = FOO_ATTENTION_CLASSES[config._attn_implementation](config, layer_idx)
    '''
    files, _ = run_transforms(
        {"modeling_foo_attention.py": attention, "modeling_foo.py": layer}, CollapseBackendClasses
    )
    assert "FOO_ATTENTION_CLASSES = " not in files["modeling_foo_attention.py"]
    assert "FOO_ATTENTION_CLASSES" not in files["modeling_foo.py"]
