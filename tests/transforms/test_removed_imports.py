"""RemovedImports: names the installed transformers no longer has."""

from __future__ import annotations

import torch

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


# Removed mask helpers of in-library modeling modules, still used: defined locally.

HELPERS_BEFORE = '''\
import torch
from transformers.models.bloom.modeling_bloom import _expand_mask as _expand_mask_bloom
from transformers.models.opt.modeling_opt import OPTForCausalLM
from transformers.models.opt.modeling_opt import _expand_mask as _expand_mask_opt
from transformers.models.opt.modeling_opt import _make_causal_mask as _make_causal_mask_opt


def opt_mask(attention_mask, shape, dtype):
    causal = _make_causal_mask_opt(shape, dtype, attention_mask.device, past_key_values_length=1)
    return causal + _expand_mask_opt(attention_mask, dtype, tgt_len=shape[-1])


def bloom_mask(attention_mask, tgt_length):
    return _expand_mask_bloom(attention_mask, tgt_length)
'''


def test_removed_mask_helpers_still_used_are_defined_locally():
    output, state = transformed(HELPERS_BEFORE, RemovedImports)
    assert not state.diagnostics, [d.render() for d in state.diagnostics]
    assert "from transformers.models.opt.modeling_opt import OPTForCausalLM" in output
    assert "import _expand_mask" not in output and "import _make_causal_mask" not in output
    for bound in ("_expand_mask_bloom", "_expand_mask_opt", "_make_causal_mask_opt"):
        assert f"\ndef {bound}(" in output
    assert any("defined locally as transformers 4.30.2 had it" in c.message for c in state.changes)
    namespace: dict = {}
    exec(compile(output, "modeling_test.py", "exec"), namespace)
    # additive: the padded key and the future keys (one cached position in front) get the minimum
    combined = namespace["opt_mask"](torch.tensor([[0, 1, 1, 1]]), (1, 3), torch.float32)
    assert combined.shape == (1, 1, 3, 4)
    keys, queries = torch.arange(4)[None, :], torch.arange(3)[:, None]
    allowed = (keys <= queries + 1) & (keys != 0)
    assert torch.equal(combined[0, 0] == 0, allowed)
    assert (combined[0, 0][~allowed] <= torch.finfo(torch.float32).min).all()
    # boolean, True where masked
    expanded = namespace["bloom_mask"](torch.tensor([[0, 1, 1]]), 2)
    assert torch.equal(expanded, torch.tensor([[[[True, False, False]] * 2]]))
    again, state = transformed(output, RemovedImports)
    assert again == output and not state.changes and not state.diagnostics


def test_removed_helper_without_known_behaviour_is_still_a_diagnostic():
    _, state = transformed(
        '''\
    from transformers.models.foo.modeling_foo import _expand_mask


    def build(mask, dtype):
        return _expand_mask(mask, dtype)
    ''',
        RemovedImports,
    )
    [diagnostic] = state.diagnostics
    assert diagnostic.symbol == "_expand_mask"


def test_removed_helper_imported_under_a_condition_is_still_a_diagnostic():
    # only a module-level import gets the definition: a guarded one keeps its fallback logic
    _, state = transformed(
        '''\
    try:
        from transformers.models.opt.modeling_opt import _expand_mask
    except ImportError:
        _expand_mask = None


    def build(mask, dtype):
        return _expand_mask(mask, dtype)
    ''',
        RemovedImports,
    )
    [diagnostic] = state.diagnostics
    assert diagnostic.symbol == "_expand_mask"


def test_local_definitions_have_the_bodies_of_the_4_30_2_release(cache_dir):
    import ast
    import zipfile

    from tests.corpus import fetch_wheel
    from transforms.legacy_helpers import LEGACY_DEFINITIONS

    def body_without_docstring(fn: ast.FunctionDef) -> str:
        body = fn.body[1:] if isinstance(fn.body[0], ast.Expr) and isinstance(fn.body[0].value, ast.Constant) else fn.body
        return ast.dump(ast.Module(body=body, type_ignores=[]))

    def params(fn: ast.FunctionDef) -> list[str]:
        return [a.arg for a in fn.args.args]

    # one module per definition (the others were checked to hold the same body when listed)
    checked = {template: key for key, template in LEGACY_DEFINITIONS.items()}
    with zipfile.ZipFile(fetch_wheel("transformers", "4.30.2", cache_dir)) as wheel:
        for template, (module, name) in checked.items():
            released = ast.parse(wheel.read(module.replace(".", "/") + ".py").decode())
            [original] = [n for n in released.body if isinstance(n, ast.FunctionDef) and n.name == name]
            [ours] = ast.parse(template.format(name=name)).body
            assert params(ours) == params(original), module
            assert body_without_docstring(ours) == body_without_docstring(original), module
