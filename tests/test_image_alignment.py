"""The image batch of the verification when the legacy model expands placeholders inside
and the ported processor does it: both prompts hold the same text, and the legacy output
is compared row for row only when it is laid out like the expanded prompt."""

from __future__ import annotations

import torch

from porter.report import FAIL, PASS, Report
from porter.verify.images import PLACEHOLDER_POSITION, add_image_checks, make_image_inputs

CONFIG = {"vision_config": {"image_size": 8, "num_channels": 3}, "text_config": {"vocab_size": 50}, "image_token_index": 7}


def test_prompts_with_one_and_with_expanded_placeholders_share_their_text():
    one, expanded = make_image_inputs(CONFIG, 1), make_image_inputs(CONFIG, 5)
    assert torch.equal(one["image.pixel_values"], expanded["image.pixel_values"])
    text_one = one["image.input_ids"][one["image.input_ids"] != 7].reshape(2, -1)
    text_expanded = expanded["image.input_ids"][expanded["image.input_ids"] != 7].reshape(2, -1)
    assert torch.equal(text_one, text_expanded)
    assert (expanded["image.input_ids"][:, PLACEHOLDER_POSITION : PLACEHOLDER_POSITION + 5] == 7).all()


def _report(reference_length: int, shift: float = 0.0) -> Report:
    legacy, ported = make_image_inputs(CONFIG, 1), make_image_inputs(CONFIG, 5)
    ported_length = ported["image.input_ids"].shape[1]
    logits = torch.randn(2, ported_length, 50)
    reference = {"eager.image.output": (logits[:, :reference_length] + shift).clone()}
    report = Report(source="test")
    add_image_checks(report, reference, {"eager.image.output": logits}, "eager", {"eager": 1e-5}, legacy, ported)
    return report


def test_legacy_rows_laid_out_for_the_expanded_prompt_are_compared_row_for_row():
    check = _report(reference_length=15).checks[0]
    assert check.status == PASS and check.figures["logits_max_abs_diff"] == 0
    assert check.figures["positions"].startswith("legacy expanded the placeholders inside the model")
    assert _report(reference_length=15, shift=1e-3).checks[0].status == FAIL


def test_legacy_rows_of_another_length_fail_with_both_lengths():
    check = _report(reference_length=11).checks[0]
    assert check.status == FAIL
    assert check.detail == "legacy output has 11 positions for a 11-token prompt, the ported 15 for the expanded one"
