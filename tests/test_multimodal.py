"""A composite vision-language model, ported and proven against itself in its own release.

transformers 4.44.2's llava with its CLIP vision tower and llama text tower, as one
remote-code repo (tests/corpus.py). The verification runs images with text through the
legacy and the ported model and compares image features and logits (F2), and counts the
attention calls of both towers through a registered kernel (B1).
"""

from __future__ import annotations

import json

import pytest

import porter
from porter.report import PASS
from tests.conftest import tree_digest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ported_llava(cache_dir, tmp_path_factory):
    from tests.corpus import legacy_llava_repo

    source = legacy_llava_repo(cache_dir)
    before = tree_digest(source)
    result = porter.port(source, tmp_path_factory.mktemp("llava") / "ported")
    return source, before, result


def test_llava_ports_and_every_check_passes(ported_llava):
    source, before, result = ported_llava
    failing = [c for c in result.checks if c.status != PASS]
    assert not failing, result.report.summary_table()
    assert result.verified and tree_digest(source) == before


def test_image_features_and_logits_match_the_legacy_model(ported_llava):
    _, _, result = ported_llava
    image_rows = {c.name: c for c in result.checks if c.name.startswith("image features and logits")}
    assert set(image_rows) == {
        "image features and logits vs legacy, float32 eager",
        "image features and logits vs legacy, float32 sdpa",
    }
    eager = image_rows["image features and logits vs legacy, float32 eager"].figures
    assert eager["logits_max_abs_diff"] <= 1e-5 and eager["image_embeddings_max_abs_diff"] <= 1e-5


def test_attention_of_both_towers_goes_through_the_interface(ported_llava):
    _, _, result = ported_llava
    towers = next(c for c in result.checks if c.name == "attention of every tower goes through the interface")
    assert towers.status == PASS
    assert towers.figures["layers"] == {"text_config": 2, "vision_config": 2}
    assert towers.figures["calls"] == 4
    assert len(towers.figures["modules"]) == 2, "one attention class per tower"


def test_ported_repo_exposes_the_multimodal_names(ported_llava):
    _, _, result = ported_llava
    out = result.output
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_llava.LlavaForConditionalGeneration"
    assert "AutoModelForVision2Seq" not in config["auto_map"]
    modeling = (out / "modeling_llava.py").read_text()
    assert "def get_image_features(self, pixel_values" in modeling
    assert '"image_token_id": "image_token_index"' in (out / "configuration_llava.py").read_text()
    clip = (out / "modeling_clip.py").read_text()
    assert clip.count("ALL_ATTENTION_FUNCTIONS.get_interface(") == 1 and "torch.bmm" not in clip
    assert {"tokenizer.json", "preprocessor_config.json", "processing_llava.py"} <= {p.name for p in out.iterdir()}
