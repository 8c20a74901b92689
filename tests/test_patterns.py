"""Team-written legacy repos, one per attention shape (tests/patterns/builder.py), ported and
proven against themselves running in transformers 4.36.2.

By default one repo runs, `combined`, which holds ALiBi, fused `[q|k|v]`, multi-query,
parallel blocks, qk-norm and experts at once (softcapping is proven by
tests/transforms/test_attention_shapes.py, sliding windows by the mistral entries of the
corpus); `PORT_MODEL_ALL_PATTERNS=1` runs every combination and each shape on its own,
among them einsum products with a softmax of an expression, an attention module built from
plain numbers and a relative position bias built inside forward (their rewrites are unit
tested in tests/transforms/test_attention_einsum.py, test_attention_config.py and
test_attention_bias.py on every run).
"""

from __future__ import annotations

import os

import pytest

import porter
from porter.report import PASS, SKIP
from tests.patterns.builder import COMBINED, DEFAULT_RUN, SHAPES, build

pytestmark = pytest.mark.slow

# An ALiBi model passes every engine run: packed calls (C3) and continuous batching with sdpa
# take the bias built per query row of the 4D mask, and for transformers' `paged|eager`
# kernel, which never adds the `position_bias` keyword, the bias travels in the mask (C5).
ALIBI_ENGINE_GAPS: set[str] = set()
PAGED_EAGER_RUN = "continuous batching (paged|eager) equals generate"
# A relative bias built from the query and key lengths is right for packed calls (relative
# distances inside a sequence are unchanged) but not for continuous batching, whose keys come
# from the paged cache: C5 is reported as failing.
RELATIVE_BIAS_ENGINE_GAPS = {"C5"}
# A softcapped model declines sdpa; transformers' `paged|eager` kernel drops `softcap`, so
# continuous batching on it gives other tokens (C5). The packed call (C3) passes.
SOFTCAP_ENGINE_GAPS = {"C5"}

NAMES = [*COMBINED, *SHAPES] if os.environ.get("PORT_MODEL_ALL_PATTERNS") else list(DEFAULT_RUN)


@pytest.mark.parametrize("name", NAMES)
def test_legacy_pattern_ports_and_verifies(name, cache_dir, tmp_path):
    repo = build(name, tmp_path / name)
    result = porter.port(repo, tmp_path / "ported")
    shape = {**SHAPES, **COMBINED}[name]
    # sdpa has no softcap: a softcapped model declares it unsupported and that run is skipped.
    # The engine-style runs then load it with eager instead of sdpa.
    allowed = (
        {("F2", "logits vs legacy, float32 sdpa"), ("F2", "greedy tokens vs legacy, sdpa"), ("C3", "engine-style runs")}
        if shape.softcap else set()
    )
    failing = [c for c in result.checks if c.status != PASS and not (c.status == SKIP and (c.item, c.name) in allowed)]
    expected_gaps = (
        ALIBI_ENGINE_GAPS if shape.alibi else RELATIVE_BIAS_ENGINE_GAPS if shape.relative_bias
        else SOFTCAP_ENGINE_GAPS if shape.softcap else set()
    )
    assert {c.item for c in failing} == expected_gaps, result.report.summary_table()
    if shape.softcap and not shape.alibi:
        [gap] = failing
        assert gap.name == PAGED_EAGER_RUN and "never applies" in gap.detail, gap
    assert result.verified == (not expected_gaps)
    assert {"F1", "F2", "F3", "B1", "B4", "C1", "C3"} <= {c.item for c in result.checks}
    flags = next(c for c in result.checks if c.item == "B4").detail
    if shape.alibi or shape.relative_bias:
        assert "'_supports_flash_attn': False" in flags, flags
    code = (result.output / "modeling_pattern_lm.py").read_text()
    assert code.count("ALL_ATTENTION_FUNCTIONS.get_interface(") == 1
    assert ("position_bias=alibi" in code) == shape.alibi
    assert ("position_bias=position_bias" in code) == shape.relative_bias
