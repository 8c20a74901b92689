"""The verification runner with encoders: a masked-LM head is loaded by its own auto class,
and a forward without a cache is not handed `use_cache`."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

RUNNER_DIR = Path(__file__).resolve().parent.parent / "porter" / "verify"


@pytest.fixture()
def runner(monkeypatch):
    monkeypatch.syspath_prepend(str(RUNNER_DIR))  # the runner imports its sibling files as a script does
    import runner

    return runner


def test_a_masked_lm_head_is_preferred_to_the_bare_encoder(runner) -> None:
    import transformers

    auto_map = {"AutoModel": "m.Encoder", "AutoModelForMaskedLM": "m.EncoderForMaskedLM"}
    assert runner._auto_class_name(auto_map, transformers) == "AutoModelForMaskedLM"


class _Encoder(torch.nn.Module):
    """A forward with no cache keyword, as BERT-family encoders without a decoder mode have."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, return_dict=True):
        return SimpleNamespace(logits=None, last_hidden_state=(input_ids + position_ids).float()[..., None])


def test_a_forward_without_use_cache_runs_and_gets_the_positions(runner) -> None:
    inputs = {"single.input_ids": torch.tensor([[3, 4, 5]]), "single.position_ids": torch.tensor([[0, 1, 2]])}
    tensors: dict = {}
    runner._run_forward(_Encoder(), inputs, "single", tensors, with_positions=True)
    assert tensors["single.output"].flatten().tolist() == [3.0, 5.0, 7.0]
