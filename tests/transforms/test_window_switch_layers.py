"""Layers switched to a sliding window by the config (GPT-Neo's `attention_types`): the base
model builds one mask per layer type, and the config declares `sliding_window` and
`layer_types` traced from the switch (`config.attention_layers[layer_id]`)."""

from __future__ import annotations

import textwrap

from tests.transforms.helpers import FILENAME, run_transforms
from tests.transforms.test_masks import LEGACY_CHAIN, module
from transforms.masks import UseMaskingUtils
from transforms.window_switch_layers import WindowSwitchLayerTypes

SWITCHED = textwrap.dedent("""\
    import torch
    from torch import nn
    from transformers import PretrainedConfig


    class FooConfig(PretrainedConfig):
        def __init__(self, attention_types=("global", "local"), window_size=4, **kwargs):
            self.attention_layers = list(attention_types)
            self.window_size = window_size
            super().__init__(**kwargs)


    class FooSelfAttention(nn.Module):
        def __init__(self, config, attention_type):
            super().__init__()
            self.config = config


    class FooAttention(nn.Module):
        def __init__(self, config, layer_id=0):
            super().__init__()
            self.attention_layers = config.attention_layers
            self.attention_type = self.attention_layers[layer_id]
            self.attention = FooSelfAttention(config, self.attention_type)
""")
SWITCH = {"window_switches": {"FooSelfAttention": ('attention_type == "local"', "config.window_size")}}


def test_the_config_declares_the_window_and_the_type_of_each_layer():
    files, state = run_transforms(SWITCHED, WindowSwitchLayerTypes, facts=SWITCH)
    output = files[FILENAME]
    assert not state.diagnostics, [d.render() for d in state.diagnostics]
    assert (
        '        return ["sliding_attention" if t == "local" else "full_attention" for t in self.attention_layers]\n'
    ) in output
    namespace = {}
    exec(compile(output, FILENAME, "exec"), namespace)
    config = namespace["FooConfig"](attention_types=["global", "local", "local"], window_size=3)
    assert config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    assert config.sliding_window == 3


def test_a_switch_not_read_from_a_config_list_is_refused():
    source = SWITCHED.replace("self.attention_layers[layer_id]", '"local" if layer_id % 2 else "global"')
    files, state = run_transforms(source, WindowSwitchLayerTypes, facts=SWITCH)
    assert files[FILENAME] == source
    [diagnostic] = state.diagnostics
    assert diagnostic.symbol == "FooSelfAttention" and "config.<types>[layer]" in diagnostic.message


def test_nothing_is_declared_without_a_window_switch():
    files, state = run_transforms(SWITCHED, WindowSwitchLayerTypes)
    assert files[FILENAME] == SWITCHED and not state.changes


def test_the_base_model_builds_one_mask_per_layer_type():
    files, state = run_transforms(module(LEGACY_CHAIN), UseMaskingUtils, facts=SWITCH)
    output = files[FILENAME]
    assert "attention_mask = attention_mask if isinstance(attention_mask, dict) else {" in output
    assert '"sliding_attention": create_sliding_window_causal_mask(config=self.config' in output
    assert "from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask" in output
    compile(output, FILENAME, "exec")
