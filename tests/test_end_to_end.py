"""Real legacy code, ported and proven against itself running in its own transformers."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

import porter
from porter.report import PASS
from tests.conftest import tree_digest

pytestmark = pytest.mark.slow

EXPECTED_PASSING = {"F1", "F2", "F3", "A2", "A3", "B1", "B3", "B4", "C1", "C3"}


def _assert_fully_verified(result) -> None:
    statuses = {(c.item, c.name): c.status for c in result.checks}
    failing = {k: v for k, v in statuses.items() if v != PASS}
    assert not failing, result.report.summary_table()
    assert EXPECTED_PASSING <= {item for item, _ in statuses}
    assert result.verified and result.report.status == "ported"


@pytest.fixture(scope="module")
def ported_llama(llama_436, tmp_path_factory):
    before = tree_digest(llama_436)
    out = tmp_path_factory.mktemp("llama") / "ported"
    result = porter.port(llama_436, out)
    return llama_436, before, result


def test_llama_436_ports_and_verifies(ported_llama):
    _, _, result = ported_llama
    _assert_fully_verified(result)
    eager = next(c for c in result.checks if c.name == "logits vs legacy, float32 eager")
    assert eager.figures["single_max_abs_diff"] <= 1e-5
    assert eager.figures["padded_batch_max_abs_diff"] <= 1e-5
    assert result.report.reference["transformers_version"] == "4.36.2"


def test_llama_436_output_repo(ported_llama):
    src, before, result = ported_llama
    out = result.output
    assert tree_digest(src) == before, "the input repo was modified"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "modeling_llama.py", "configuration_llama.py", "model.safetensors"} <= names
    assert {"PORTING.md", "porting_report.json", "README.md", "generation_config.json"} <= names
    assert "pytorch_model.bin" not in names
    assert not list(out.parent.glob(".*partial*")), "staging folder left behind"
    code = (out / "modeling_llama.py").read_text()
    compile(code, "modeling_llama.py", "exec")
    assert code.count("ALL_ATTENTION_FUNCTIONS.get_interface(") == 1
    assert "LlamaFlashAttention2" not in code and "LLAMA_ATTENTION_CLASSES" not in code
    report = json.loads((out / "porting_report.json").read_text())
    assert report["verified"] is True and report["versions"]["transformers"]
    assert "## Ported with port-model" in (out / "README.md").read_text()
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_llama_436_port_is_idempotent(ported_llama):
    _, _, result = ported_llama
    again = porter.check(result.output)
    assert again.report.status == "unchanged", again.diff
    assert again.diff == ""


def test_team_sample_ports_and_verifies(sample_repo, tmp_path):
    result = porter.port(sample_repo, tmp_path / "out")
    _assert_fully_verified(result)
    tokens = next(c for c in result.checks if c.name == "greedy tokens vs legacy, eager")
    assert len({t for row in tokens.figures["tokens"] for t in row}) > 2, "degenerate generation proves nothing"
