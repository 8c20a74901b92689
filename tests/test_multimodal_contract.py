"""The static E rows of `port-model check` on a composite model: the class AutoModel builds
is the base model that fuses the modalities (C2, E1, E2), and `image_token_id` may be an
`attribute_map` alias of the legacy key (E3)."""

from __future__ import annotations

import libcst as cst

from porter.contract import Code, base_model_entry, multimodal
from porter.report import FAIL, PASS
from tests.transforms.helpers import transformed
from tests.transforms.test_multimodal_split import LEGACY
from transforms.multimodal_features import ImageFeaturesMethod
from transforms.multimodal_split import SplitBaseAndHead

CONFIG = {
    "model_type": "fuse", "text_config": {}, "vision_config": {}, "image_token_index": 3,
    "auto_map": {"AutoConfig": "modeling_test.FuseConfig", "AutoModel": "modeling_test.FuseModel"},
}


def _rows(source: str) -> dict:
    code = Code.read(CONFIG, {"modeling_test.py": cst.parse_module(source)})
    return {c.item: c for c in [base_model_entry(code), *multimodal(code)]}


def test_split_composite_is_the_base_model_engines_build():
    ported, _ = transformed(LEGACY, (ImageFeaturesMethod, SplitBaseAndHead))
    rows = _rows(ported)
    assert [rows[i].status for i in ("C2", "E1", "E2")] == [PASS, PASS, PASS]
    assert rows["E3"].status == FAIL and rows["E3"].detail == "config.json: no image_token_id"
    aliased = ported.replace('    model_type = "fuse"\n', '    model_type = "fuse"\n    attribute_map = {"image_token_id": "image_token_index"}\n')
    assert _rows(aliased)["E3"].status == PASS


def test_legacy_composite_fails_where_the_port_would_fix_it():
    rows = _rows(LEGACY.replace("class FuseForConditionalGeneration", "class FuseModel"))
    assert rows["E1"].status == PASS  # it holds language_model ...
    assert rows["E2"].status == FAIL and "FuseModel has no get_image_features" in rows["E2"].detail
    assert rows["C2"].status == FAIL, "... but a text head, not a base model"



COMPOSITE = """
import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel


class FusePreTrainedModel(PreTrainedModel):
    base_model_prefix = "model"


class FuseModel(FusePreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, **kwargs):
        inputs_embeds = self.language_model.get_input_embeddings()(input_ids)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
"""


def test_a_composite_leaves_its_mask_to_the_model_it_holds():
    from porter.contract import _passes_mask_on

    code = Code.read(CONFIG, {"modeling_test.py": cst.parse_module(COMPOSITE)})
    assert _passes_mask_on(code, "FuseModel")
    # A model that makes a mask of its own before handing it on builds it itself (BERT's extended mask).
    own = COMPOSITE.replace("        inputs_embeds =", "        attention_mask = attention_mask[:, None, None, :]\n        inputs_embeds =")
    assert not _passes_mask_on(Code.read(CONFIG, {"modeling_test.py": cst.parse_module(own)}), "FuseModel")
