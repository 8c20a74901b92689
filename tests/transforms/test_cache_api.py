"""ModernCacheAPI: Cache methods that transformers 5 removed."""

from __future__ import annotations

import inspect

from transformers.cache_utils import Cache, DynamicCache

from tests.transforms.helpers import check_noop, check_transformed, transformed
from transforms.cache_api import ModernCacheAPI


def test_removed_cache_methods_are_replaced():
    state = check_transformed(
        '''\
    from torch import nn
    from transformers.cache_utils import DynamicCache


    class FooModel(nn.Module):
        def forward(self, input_ids, past_key_values=None, use_cache=False):
            seq_length = input_ids.shape[1]
            past_key_values_length = 0
            if use_cache:
                past_key_values = DynamicCache.from_legacy_cache(past_key_values)
                past_key_values_length = past_key_values.get_usable_length(seq_length)
            layer_past = past_key_values.get_usable_length(seq_length, self.layer_idx)
            seen = past_key_values.seen_tokens
            return past_key_values.to_legacy_cache(), past_key_values_length + layer_past + seen
    ''',
        '''\
    from torch import nn
    from transformers.cache_utils import Cache, DynamicCache


    class FooModel(nn.Module):
        def forward(self, input_ids, past_key_values=None, use_cache=False):
            seq_length = input_ids.shape[1]
            past_key_values_length = 0
            if use_cache:
                past_key_values = (past_key_values if isinstance(past_key_values, Cache) else DynamicCache(config=self.config))
                past_key_values_length = past_key_values.get_seq_length()
            layer_past = past_key_values.get_seq_length(self.layer_idx)
            seen = past_key_values.get_seq_length()
            return past_key_values, past_key_values_length + layer_past + seen
    ''',
        ModernCacheAPI,
    )
    assert len(state.changes) == 5


def test_replacement_methods_exist_on_the_installed_cache():
    """What the rewrite emits for get_usable_length/seen_tokens/from_legacy_cache works with transformers 5."""
    assert "layer_idx" in inspect.signature(Cache.get_seq_length).parameters
    assert "config" in inspect.signature(DynamicCache).parameters


def test_get_max_length_target_exists_on_the_installed_cache():
    output, state = transformed("max_cache_length = past_key_values.get_max_length()\n", ModernCacheAPI)
    compile(output, "modeling_test.py", "exec")
    method = output.split(".")[1].split("(")[0]
    assert hasattr(Cache, method), f"{output!r} calls a method the installed Cache lacks"


def test_seen_tokens_assignment_still_compiles():
    output, _ = transformed("past_key_values.seen_tokens = 0\n", ModernCacheAPI)
    compile(output, "modeling_test.py", "exec")


def test_noop_on_current_cache_api():
    check_noop(
        '''\
    from torch import nn
    from transformers.cache_utils import DynamicCache


    class FooModel(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.seen_tokens = 0

        def forward(self, input_ids, past_key_values=None, use_cache=False):
            if use_cache and past_key_values is None:
                past_key_values = DynamicCache(config=self.config)
            past_seen_tokens = past_key_values.get_seq_length() if past_key_values is not None else 0
            self.seen_tokens += input_ids.shape[1]
            return past_key_values, past_seen_tokens
    ''',
        ModernCacheAPI,
    )
