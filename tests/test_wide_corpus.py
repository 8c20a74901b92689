"""The wide corpus (tests/wide_corpus.py): more legacy architectures, ported and verified.

Too long for every CI run, so it runs when `PORT_MODEL_WIDE_CORPUS=1`. A port must either
pass every check or be refused with a diagnostic naming a file and line; the refusals that
are expected are listed by id in `EXPECTED_REFUSALS`, and the ports written with failing
checks by id in `EXPECTED_FAILURES`, so that a change shows here.
"""

from __future__ import annotations

import os

import pytest

import porter
from porter.errors import PortError
from porter.report import PASS, SKIP
from tests.wide_corpus import WIDE_CORPUS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("PORT_MODEL_WIDE_CORPUS") != "1", reason="set PORT_MODEL_WIDE_CORPUS=1"),
]

# id -> a phrase the refusal's text must contain.
EXPECTED_REFUSALS: dict[str, str] = {
    "remote-chatglm2-colossalai": "attention_scores is computed from `matmul_result`",
    "remote-mpt-alibi-llava": "the math is in the module-level function `scaled_multihead_dot_product_attention`",
    "remote-mpt-qkln-llava": "the math is in the module-level function `scaled_multihead_dot_product_attention`",
    "remote-yuan2-ipex-llm": "the attention math is inside `if self.use_flash_attention:`",
    "remote-gemma2-costwise-flagembedding": "builds `Gemma2DecoderLayer` from transformers.models.gemma2",
    # Causal language models: fused projections, ALiBi, multi-query (docs/architectures.md).
    **{
        f"falcon-alibi-{version}": "the branch arm that `config.alibi` selects (this repo's config) is not understood"
        for version in ("4.44.2", "4.36.2")
    },
    **{
        f"gpt_bigcode-{v}": "the attention math is inside `if upcast:`"
        for v in ("4.44.2", "mha-4.44.2", "4.36.2", "4.30.2")
    },
    # Encoders and encoder-decoder models
    "distilbert-4.44.2": "expected `context = context.transpose(1, 2)` after the attention math",
    "deberta_v2-4.44.2": "normalises its attention scores with `XSoftmax.apply`",
    "t5-4.44.2": "T5Attention is a cross-attention: it projects keys and values from `key_value_states`",
    "bart-4.44.2": "BartAttention is a cross-attention: it projects keys and values from `key_value_states`",
    "marian-4.44.2": "MarianAttention is a cross-attention: it projects keys and values from `key_value_states`",
    # older GPT families
    "ctrl-4.44.2": "no softmax in forward or in a helper method it calls",
}


# id -> the items whose checks fail (docs/architectures.md gives each reason); every other
# check of the port must pass, and the port is never reported as a success.
EXPECTED_FAILURES: dict[str, set[str]] = {
    "mpt-4.44.2": {"C5"},  # the ALiBi table is sliced to the step's own keys
    "mpt-4.36.2": {"C5"},
    "remote-minicpm-layerwise-flagembedding": {"F1"},  # the legacy head itself fails to run
}


@pytest.mark.parametrize("entry", WIDE_CORPUS, ids=[m.id for m in WIDE_CORPUS])
def test_wide_corpus_entry(entry, cache_dir, tmp_path):
    repo = entry.build(cache_dir)
    if entry.id in EXPECTED_REFUSALS:
        with pytest.raises(PortError) as refused:
            porter.port(repo, tmp_path / "ported")
        assert EXPECTED_REFUSALS[entry.id] in refused.value.render()
        assert any(d.line for d in refused.value.diagnostics)
        return
    result = porter.port(repo, tmp_path / "ported")
    failing = [c for c in result.checks if c.status not in (PASS, SKIP)]
    if entry.id in EXPECTED_FAILURES:
        assert {c.item for c in failing} == EXPECTED_FAILURES[entry.id], result.report.summary_table()
        assert not result.verified and result.report.status == "verification-failed"
        return
    assert not failing, result.report.summary_table()
    assert result.report.reference["transformers_version"] == entry.version
