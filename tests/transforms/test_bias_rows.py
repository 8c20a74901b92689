"""BiasPerQueryRow: an ALiBi bias built from the padding mask follows each row of a 4D mask."""

from __future__ import annotations

import torch

from tests.patterns.builder import ALIBI, SHAPES, modeling_code
from tests.transforms.helpers import FILENAME, transformed
from transforms.attention_interface import RouteAttention
from transforms.bias_rows import HELPER, BiasPerQueryRow
from transforms.masks import UseMaskingUtils

# What runs before it: attention routed (the bias found), the mask built by masking_utils.
WITHOUT = (RouteAttention, UseMaskingUtils)
WITH = (*WITHOUT, BiasPerQueryRow)
LEGACY_CALL = "alibi = build_alibi_tensor(attention_mask, self.config.num_attention_heads, inputs_embeds.dtype)"
PER_ROW_CALL = (
    "alibi = bias_per_query_row(build_alibi_tensor, attention_mask, self.config.num_attention_heads, inputs_embeds.dtype)"
)


def test_alibi_builder_call_goes_through_the_per_row_helper():
    """The rewrites before it, with and without it: the helper is added before the first class
    and the base model's bias call goes through it; nothing else differs."""
    source = modeling_code(SHAPES["alibi"])
    before, _ = transformed(source, WITHOUT)
    after, state = transformed(source, WITH)
    first_class = before.index("\nclass ") + 1
    expected = (before[:first_class] + HELPER + "\n\n" + before[first_class:]).replace(LEGACY_CALL, PER_ROW_CALL)
    assert after == expected
    compile(after, FILENAME, "exec")
    [change] = [c for c in state.changes if c.transform == "bias-rows"]
    assert change.message == "PatternLMModel.forward: build_alibi_tensor builds its bias per query row of a 4D mask"


def test_noop_without_an_additive_bias():
    source = modeling_code(SHAPES["mqa"])
    assert transformed(source, WITHOUT)[0] == transformed(source, WITH)[0]


def test_per_row_bias_is_each_packed_requests_own_bias():
    """Run: a 2D mask gives the legacy bias; a 4D mask over two packed requests (what continuous
    batching passes) gives, on every allowed entry, the bias each request has on its own."""
    namespace = {}
    exec("import math\nimport torch\n" + ALIBI + HELPER, namespace)
    build, per_row = namespace["build_alibi_tensor"], namespace["bias_per_query_row"]
    padded = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    assert torch.equal(per_row(build, padded, 4, torch.float32), build(padded, 4, torch.float32))
    lengths = (3, 4)
    allowed = torch.block_diag(*[torch.ones(n, n).tril() for n in lengths]).bool()
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]
    packed = per_row(build, additive, 4, torch.float32)
    assert packed.shape == (1, 4, 7, 7)
    start = 0
    for n in lengths:
        alone = build(torch.ones(1, n, dtype=torch.long), 4, torch.float32).expand(1, 4, n, n)
        block = packed[..., start : start + n, start : start + n]
        causal = torch.ones(n, n).tril().bool()
        assert torch.equal(block[..., causal], alone[..., causal])
        start += n
