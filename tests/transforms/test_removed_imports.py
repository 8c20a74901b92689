"""RemovedImports: names the installed transformers no longer has."""

from __future__ import annotations

from tests.transforms.helpers import check_noop, check_transformed, transformed
from transforms.removed_imports import RemovedImports


def test_fx_probe_and_its_branch_removed():
    state = check_transformed(
        '''\
    import torch
    from transformers.modeling_attn_mask_utils import _prepare_4d_causal_attention_mask
    from transformers.utils.import_utils import is_torch_fx_available

    # This makes `_prepare_4d_causal_attention_mask` a leaf function in the FX graph.
    if is_torch_fx_available():
        _prepare_4d_causal_attention_mask = torch.fx.wrap(_prepare_4d_causal_attention_mask)


    def build(attention_mask, shape, inputs_embeds):
        return _prepare_4d_causal_attention_mask(attention_mask, shape, inputs_embeds, 0)
    ''',
        '''\
    import torch
    from transformers.modeling_attn_mask_utils import _prepare_4d_causal_attention_mask


    def build(attention_mask, shape, inputs_embeds):
        return _prepare_4d_causal_attention_mask(attention_mask, shape, inputs_embeds, 0)
    ''',
        RemovedImports,
    )
    messages = [c.message for c in state.changes]
    assert "is_torch_fx_available() -> False (removed from transformers)" in messages
    assert "removed import of is_torch_fx_available (gone from transformers)" in messages


def test_probe_in_a_multi_name_import_and_an_else_branch():
    check_transformed(
        '''\
    from transformers.utils import is_flash_attn_2_available, is_torch_sdpa_available, logging

    if is_torch_sdpa_available():
        DEFAULT = "sdpa"
    else:
        DEFAULT = "eager"
    logger = logging.get_logger(__name__)
    FLASH = is_flash_attn_2_available()
    ''',
        '''\
    from transformers.utils import is_flash_attn_2_available, logging
    DEFAULT = "sdpa"
    logger = logging.get_logger(__name__)
    FLASH = is_flash_attn_2_available()
    ''',
        RemovedImports,
    )


def test_removed_name_still_used_is_a_diagnostic():
    _, state = transformed(
        '''\
    from transformers.modeling_utils import PreTrainedModel, SequenceSummary


    class FooForMultipleChoice(PreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.sequence_summary = SequenceSummary(config)


    HEADS = {"multiple-choice": FooForMultipleChoice}
    ''',
        RemovedImports,
    )
    [diagnostic] = state.diagnostics
    assert diagnostic.symbol == "SequenceSummary"
    assert "transformers.modeling_utils" in diagnostic.message


def test_code_only_a_removed_api_needed_is_removed_with_it():
    output, state = transformed(
        '''\
    from transformers.modeling_utils import PreTrainedModel, SequenceSummary
    from transformers.pytorch_utils import prune_conv1d_layer


    class FooModel(PreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.layers = [FooLayer(config)]

        def forward(self, x):
            return x

        def _prune_heads(self, heads):
            for layer, heads in heads.items():
                self.layers[layer].prune_heads(heads)


    class FooLayer(PreTrainedModel):
        def prune_heads(self, heads):
            self.dense = prune_conv1d_layer(self.dense, heads)

        def forward(self, x):
            return x


    class FooForMultipleChoice(PreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.sequence_summary = SequenceSummary(config)
    ''',
        RemovedImports,
    )
    compile(output, "modeling_test.py", "exec")
    assert not state.diagnostics
    assert "FooForMultipleChoice" not in output and "prune_heads" not in output and "_prune_heads" not in output
    assert "SequenceSummary" not in output and "prune_conv1d_layer" not in output
    assert "class FooModel" in output and "class FooLayer" in output


def test_noop_for_imports_that_exist():
    check_noop(
        '''\
    from transformers.activations import ACT2FN
    from transformers.cache_utils import Cache, DynamicCache
    from transformers.modeling_outputs import BaseModelOutputWithPast
    from transformers.modeling_utils import PreTrainedModel
    from transformers.utils import logging

    from .configuration_foo import FooConfig

    logger = logging.get_logger(__name__)
    ''',
        RemovedImports,
    )


def test_removed_name_used_under_an_alias_is_a_diagnostic():
    _, state = transformed(
        '''\
    from transformers.modeling_utils import SequenceSummary as Summary

    head = Summary(None)
    ''',
        RemovedImports,
    )
    assert state.diagnostics


def test_probe_in_an_elif():
    output, _ = transformed(
        '''\
    import os

    from transformers.utils import is_torch_sdpa_available

    if os.environ.get("FOO_ATTN"):
        DEFAULT = os.environ["FOO_ATTN"]
    elif is_torch_sdpa_available():
        DEFAULT = "sdpa"
    else:
        DEFAULT = "eager"
    ''',
        RemovedImports,
    )
    compile(output, "modeling_test.py", "exec")
