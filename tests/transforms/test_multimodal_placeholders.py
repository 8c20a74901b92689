"""ExpandPlaceholders: a processor whose model expanded placeholders inside now expands
them itself, to the count the model's features have, and gets the E4 hooks from it.

The processor below is written as llava's was before transformers 4.47 (it tokenizes the
text as given). With the model of test_multimodal_merge.py (a class token added to each
image's patches, dropped again by the "default" feature selection), the ported processor
must emit one placeholder per feature row, and predict that count from an image size,
for any image processor: a center-cropping one (the same count for every size) and one
that keeps the aspect ratio (a count that varies with the size).
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from tests.transforms.helpers import run_transforms
from tests.transforms.test_multimodal_merge import FORWARD, HEADER, MERGE
from transforms.multimodal_merge import ScatterIntoPlaceholders
from transforms.multimodal_placeholders import ExpandPlaceholders
from transforms.multimodal_processor import ProcessorHooks

PROCESSOR = '''\
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin


class FuseProcessor(ProcessorMixin):
    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def __call__(self, text=None, images=None, padding=False, return_tensors="pt"):
        if images is not None:
            image_inputs = self.image_processor(images, return_tensors=return_tensors)
        else:
            image_inputs = {}
        text_inputs = self.tokenizer(text, return_tensors=return_tensors, padding=padding)
        return BatchFeature(data={**text_inputs, **image_inputs})
'''

PATCH = 4
IMAGE_TOKEN = 4
ORDER = (ScatterIntoPlaceholders, ExpandPlaceholders, ProcessorHooks)


def _port(processor_source=PROCESSOR):
    return run_transforms({"modeling_fuse.py": HEADER + MERGE + FORWARD, "processing_fuse.py": processor_source}, ORDER)


@pytest.fixture(scope="module")
def ported():
    files, state = _port()
    assert not state.diagnostics, [d.render() for d in state.diagnostics]
    return files["processing_fuse.py"], state


def _processor(source: str, crop: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPImageProcessor, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "<image>": IMAGE_TOKEN, **{f"w{i}": i for i in range(5, 40)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", additional_special_tokens=["<image>"]
    )
    images = CLIPImageProcessor(size={"shortest_edge": 12}, crop_size={"height": 12, "width": 12}, do_center_crop=crop)
    namespace: dict = {}
    exec(compile(source, "processing_fuse.py", "exec"), namespace)
    return namespace["FuseProcessor"](images, tokenizer, patch_size=PATCH, num_additional_image_tokens=1,
                                      select="default", image_token_index=IMAGE_TOKEN)


def test_processor_expands_and_declares_its_settings(ported):
    output, state = ported
    assert "    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, patch_size=None, " \
           "num_additional_image_tokens=0, select=None, image_token_index=None, **kwargs):\n" in output
    assert "        self.image_token = self.tokenizer.convert_ids_to_tokens(image_token_index)\n" in output
    assert "pieces[piece_index] = self.image_token * num_image_tokens + pieces[piece_index]" in output
    assert '        if self.select == "default":\n            num_image_tokens -= 1\n' in output
    assert "num_image_tokens = self._image_feature_tokens(height, width)\n                image_token_counts" in output
    assert state.facts["processor_config"] == {
        "patch_size": {"config": "vision_config.patch_size"},
        "num_additional_image_tokens": {"value": 1},
        "select": {"config": "select"},
        "image_token_index": {"config": "image_token_index"},
    }
    assert [c.transform for c in state.changes if c.file == "processing_fuse.py"] == [
        "multimodal-placeholders", "multimodal-processor"]


@pytest.mark.parametrize("crop", [True, False], ids=["center-crop", "aspect-ratio"])
def test_predicted_counts_equal_the_emitted_placeholders_for_random_sizes(ported, crop):
    processor = _processor(ported[0], crop)
    rng = random.Random(1)
    sizes = [(rng.randint(4, 80), rng.randint(4, 80)) for _ in range(20)]
    predicted = processor._get_num_multimodal_tokens(image_sizes=sizes)
    distinct = set(predicted.num_image_tokens)
    assert distinct == {(12 // PATCH) ** 2} if crop else len(distinct) > 3
    for (height, width), tokens in zip(sizes, predicted.num_image_tokens, strict=True):
        image = np.random.default_rng(height * 100 + width).integers(0, 255, (height, width, 3), dtype=np.uint8)
        out = processor(text="w5 <image> w6", images=[image])
        assert int((out["input_ids"] == IMAGE_TOKEN).sum()) == tokens, (height, width)
        rows_per_image = (out["pixel_values"].shape[-2] // PATCH) * (out["pixel_values"].shape[-1] // PATCH)
        assert tokens == rows_per_image, "one placeholder per patch: the class token is added, then dropped"


def test_two_images_in_a_batch_of_prompts(ported):
    processor = _processor(ported[0], crop=True)
    images = [np.zeros((20, 30, 3), dtype=np.uint8)] * 3
    out = processor(text=["w5 <image> w6 <image>", "<image> w7"], images=images, padding=True,
                    return_mm_token_type_ids=True)
    assert (out["input_ids"] == IMAGE_TOKEN).sum(-1).tolist() == [18, 9]
    assert (out["mm_token_type_ids"] == 1).sum().item() == 27


def test_noop_without_a_model_that_expands_inside():
    files, state = run_transforms({"processing_fuse.py": PROCESSOR}, (ExpandPlaceholders, ProcessorHooks))
    assert files["processing_fuse.py"] == PROCESSOR and not state.changes and not state.diagnostics


def test_noop_on_its_own_output(ported):
    files, state = run_transforms({"modeling_fuse.py": HEADER + MERGE + FORWARD, "processing_fuse.py": ported[0]}, ORDER)
    assert files["processing_fuse.py"] == ported[0]
    assert [c.transform for c in state.changes] == ["multimodal-merge"]


def test_a_call_without_text_and_images_is_refused():
    source = PROCESSOR.replace("text=None, images=None", "prompt=None, images=None").replace("self.tokenizer(text,", "self.tokenizer(prompt,")
    files, state = _port(source)
    assert files["processing_fuse.py"] == source
    assert "no `text` and `images` parameters" in state.diagnostics[0].render()
