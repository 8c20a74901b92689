"""ProcessorHooks: processors that expand image placeholders predict the expansion (E4).

The sample processor (samples/tiny_legacy_vlm) tiles images: its placeholder count
depends on the image size. The ported processor runs under the installed transformers:
for random sizes, `_get_num_multimodal_tokens` must predict exactly the placeholders and
pixel rows the processor then emits, and `mm_token_type_ids` marks each image's run.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.transforms.helpers import FILENAME, check_noop, transformed
from transforms.multimodal_processor import ProcessorHooks

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "tiny_legacy_vlm" / "processing_tiny_legacy_vlm.py"
LEGACY = SAMPLE.read_text()

HOOK = '''\
    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs):
        """Placeholder tokens and pixel rows per image, from `(height, width)` sizes, before any image is processed."""
        vision_data = {}
        if image_sizes is not None:
            image_token_counts, image_patch_counts = [], []
            for height, width in image_sizes:
                rows, cols = self.get_tile_grid(height, width)
                num_tiles = rows * cols + (1 if rows * cols > 1 else 0)
                num_image_tokens = num_tiles * (self.tile_size // self.patch_size) ** 2
                image_token_counts.append(int(num_image_tokens))
                blank_image = np.zeros((height, width, 3), dtype=np.uint8)
                image_patch_counts.append(len(self(text=self.image_token, images=[blank_image])["pixel_values"]))
            vision_data.update(num_image_tokens=image_token_counts, num_image_patches=image_patch_counts)
        return MultiModalData(**vision_data)
'''


@pytest.fixture(scope="module")
def ported():
    output, state = transformed(LEGACY, ProcessorHooks)
    assert not state.diagnostics, [d.render() for d in state.diagnostics]
    return output, state


@pytest.fixture(scope="module")
def processor(ported):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "<image>": 4, **{f"w{i}": i for i in range(5, 40)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", additional_special_tokens=["<image>"]
    )
    namespace: dict = {}
    exec(compile(ported[0], FILENAME, "exec"), namespace)
    return namespace["TinyLegacyVLMProcessor"](tokenizer)


def test_hooks_are_added(ported):
    output, state = ported
    assert HOOK in output
    assert "        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)\n" in output
    assert '        return_mm_token_type_ids = kwargs.pop("return_mm_token_type_ids", False)\n' in output
    assert "from transformers.processing_utils import MultiModalData, ProcessorMixin" in output
    assert [c.transform for c in state.changes] == ["multimodal-processor"]


def test_predicted_counts_equal_the_emitted_placeholders_for_random_sizes(processor):
    rng = random.Random(0)
    sizes = [(rng.randint(4, 90), rng.randint(4, 90)) for _ in range(24)]
    predicted = processor._get_num_multimodal_tokens(image_sizes=sizes)
    assert len(set(predicted.num_image_tokens)) > 3, "the sizes must exercise different tilings"
    for (height, width), tokens, patches in zip(sizes, predicted.num_image_tokens, predicted.num_image_patches, strict=True):
        image = np.random.default_rng(height * 100 + width).integers(0, 255, (height, width, 3), dtype=np.uint8)
        out = processor(text="w5 <image> w6", images=[image])
        assert int((out["input_ids"] == processor.image_token_id).sum()) == tokens, (height, width)
        assert out["pixel_values"].shape[0] == patches, (height, width)


def test_mm_token_type_ids_mark_one_contiguous_run_per_image(processor):
    sizes = [(20, 50), (70, 12), (8, 8)]
    images = [np.zeros((h, w, 3), dtype=np.uint8) for h, w in sizes]
    out = processor(text="w5 <image> w6 w7 <image> w8 <image> w9", images=images, return_mm_token_type_ids=True)
    types = out["mm_token_type_ids"][0]
    assert torch.is_tensor(types) and types.shape == out["input_ids"][0].shape
    assert torch.equal(types == 1, out["input_ids"][0] == processor.image_token_id)
    edges = torch.diff(torch.cat([torch.tensor([0]), types, torch.tensor([0])]))
    starts, ends = (edges == 1).nonzero().flatten(), (edges == -1).nonzero().flatten()
    runs = (ends - starts).tolist()
    assert runs == processor._get_num_multimodal_tokens(image_sizes=sizes).num_image_tokens
    assert "mm_token_type_ids" not in processor(text="w5 <image>", images=images[:1])


def test_noop_when_the_processor_does_not_expand_placeholders():
    check_noop(LEGACY.replace(' + " ".join([self.image_token] * num_image_tokens) + ', " + self.image_token + "), ProcessorHooks)


def test_noop_when_the_hook_exists(ported):
    check_noop(ported[0], ProcessorHooks)


def test_count_reading_more_than_the_image_size_is_refused():
    before = LEGACY.replace(
        "num_image_tokens = num_tiles * (self.tile_size // self.patch_size) ** 2",
        "num_image_tokens = num_tiles * (self.tile_size // self.patch_size) ** 2 + len(sample)",
    )
    output, state = transformed(before, ProcessorHooks)
    assert output == before
    assert state.diagnostics and "sample" in state.diagnostics[0].render()
