"""Vision-language models, ported and proven against themselves in their own release.

transformers 4.44.2's llava with its CLIP vision tower and llama text tower, as one
remote-code repo (tests/corpus.py), which expands one placeholder per image inside the
model until the port moves the expansion to its processor, and the team-written sample in samples/tiny_legacy_vlm,
whose processor tiles images so that the number of placeholders depends on the image
size. The verification runs images with text through the legacy and the ported model and
compares image features and logits (F2), counts the attention calls of every tower through
a registered kernel (B1), and checks the processor's predicted placeholder counts against
what it emits for random image sizes (E4).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

import porter
from porter.report import PASS
from tests.conftest import ROOT, tree_digest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ported_llava(cache_dir, tmp_path_factory):
    from tests.corpus import legacy_llava_repo

    source = legacy_llava_repo(cache_dir)
    before = tree_digest(source)
    result = porter.port(source, tmp_path_factory.mktemp("llava") / "ported")
    return source, before, result


def test_llava_ports_and_every_model_check_passes(ported_llava):
    source, before, result = ported_llava
    failing = [c for c in result.checks if c.status != PASS]
    assert not failing, result.report.summary_table()
    assert result.verified and result.report.status == "ported"
    assert tree_digest(source) == before


def test_llava_engine_hooks_are_ported_and_proven(ported_llava):
    """llava 4.44 writes one placeholder per image and expands it inside the model. The port
    moves the expansion to the processor and scatters the features into it: a base model
    without head (E1), get_image_features with one row per placeholder (E2), and a processor
    whose predicted counts equal what it emits (E4)."""
    _, _, result = ported_llava
    rows = {c.name: c for c in result.checks if c.item in ("E1", "E2", "E4")}
    assert all(c.status == PASS for c in rows.values()), result.report.summary_table()
    assert rows["base model fuses modalities, head class separate"].figures["base_model"] == "LlavaModel"
    # 30x30 images, 6x6 patches: 25 patches and a class token, which the "default" selection drops
    assert rows["get_image_features on the base model, one row per placeholder"].figures == {
        "feature_rows": 50, "placeholders": 50}
    counts = rows["processor predicts its image placeholders"].figures
    assert counts["sizes"] >= 20 and counts["mismatches"] == 0 and counts["distinct_counts"] == 1
    assert rows["mm_token_type_ids: one contiguous run per image"].figures["runs"] == [25, 25, 25]


def test_image_features_and_logits_match_the_legacy_model(ported_llava):
    _, _, result = ported_llava
    image_rows = {c.name: c for c in result.checks if c.name.startswith("image features and logits")}
    assert set(image_rows) == {
        "image features and logits vs legacy, float32 eager",
        "image features and logits vs legacy, float32 sdpa",
    }
    # greedy generation with images goes through the port's generation path (pixels at prefill only)
    greedy = [c for c in result.checks if c.name.startswith("greedy tokens with images vs legacy")]
    assert [c.status for c in greedy] == [PASS, PASS]
    assert greedy[0].figures["tokens"] == greedy[0].figures["legacy"] and len(greedy[0].figures["tokens"][0]) == 4
    eager = image_rows["image features and logits vs legacy, float32 eager"].figures
    assert eager["logits_max_abs_diff"] <= 1e-5 and eager["image_embeddings_max_abs_diff"] <= 1e-5
    # the legacy model got one placeholder per image and expanded it; the ported one the expanded prompt
    assert eager["positions"].startswith("legacy expanded the placeholders inside the model")


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
    assert config["auto_map"]["AutoModel"] == "modeling_llava.LlavaModel"
    modeling = (out / "modeling_llava.py").read_text()
    assert "def get_image_features(self, pixel_values" in modeling
    assert "inputs_embeds.masked_scatter(special_image_mask" in modeling
    assert "_merge_input_ids_with_image_features" not in modeling
    assert json.loads((out / "processor_config.json").read_text()) == {
        "patch_size": 6, "num_additional_image_tokens": 1, "vision_feature_select_strategy": "default",
        "image_token_index": 127}
    assert "def _get_num_multimodal_tokens(self" in (out / "processing_llava.py").read_text()
    assert '"image_token_id": "image_token_index"' in (out / "configuration_llava.py").read_text()
    clip = (out / "modeling_clip.py").read_text()
    assert clip.count("ALL_ATTENTION_FUNCTIONS.get_interface(") == 1 and "torch.bmm" not in clip
    assert {"tokenizer.json", "preprocessor_config.json", "processing_llava.py"} <= {p.name for p in out.iterdir()}
    # Each tower's tensor-parallel plan in its own config class, where transformers reads it.
    assert '"vision_model.encoder.layers.*.mlp.fc2": "rowwise"' in (out / "configuration_clip.py").read_text()
    assert '"layers.*.self_attn.o_proj": "rowwise"' in (out / "configuration_llama.py").read_text()
    assert "tensor.view(bsz, seq_len, tensor.size(-1) // self.head_dim, self.head_dim)" in clip


@pytest.fixture(scope="module")
def ported_sample(cache_dir, tmp_path_factory):
    source = tmp_path_factory.mktemp("vlm_sample") / "tiny_legacy_vlm"
    shutil.copytree(ROOT / "samples" / "tiny_legacy_vlm", source)
    script = ROOT / "samples" / "make_vlm_sample.py"
    subprocess.run([sys.executable, str(script), str(source), "--cache-dir", str(cache_dir)], check=True)
    return porter.port(source, source.parent / "ported")


def test_sample_ports_and_every_check_passes(ported_sample):
    failing = [c for c in ported_sample.checks if c.status != PASS]
    assert not failing, ported_sample.report.summary_table()
    assert ported_sample.verified
    assert {"E1", "E2", "E4"} <= {c.item for c in ported_sample.checks}
    config = json.loads((ported_sample.output / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_tiny_legacy_vlm.TinyLegacyVLMModel"
    again = porter.check(ported_sample.output)
    assert again.report.status == "unchanged", again.diff


def test_sample_processor_predicts_its_placeholders(ported_sample):
    rows = {c.name: c for c in ported_sample.checks if c.item == "E4"}
    counts = rows["processor predicts its image placeholders"].figures
    assert counts["sizes"] >= 20 and counts["mismatches"] == 0
    assert counts["distinct_counts"] > 3, "the image sizes must give different placeholder counts"
    runs = rows["mm_token_type_ids: one contiguous run per image"].figures["runs"]
    assert len(runs) == 3 and len(set(runs)) > 1


def test_sample_image_features_match_the_legacy_model(ported_sample):
    eager = next(c for c in ported_sample.checks if c.name == "image features and logits vs legacy, float32 eager")
    assert eager.figures["logits_max_abs_diff"] <= 1e-5 and eager.figures["image_embeddings_max_abs_diff"] <= 1e-5
    towers = next(c for c in ported_sample.checks if c.name == "attention of every tower goes through the interface")
    assert towers.status == PASS and towers.figures["calls"] == 4
