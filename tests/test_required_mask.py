"""Which heads cannot run without an attention mask, so the single-sequence runs give them
an all-ones one (porter/verify/required_mask.py, used by the child runners)."""

from __future__ import annotations

import torch
from torch import nn

from porter.verify.required_mask import mask_for, requires_attention_mask


class RewardHead(nn.Module):
    def forward(self, input_ids, attention_mask=None):
        hidden = input_ids.float()
        ends = attention_mask.cumsum(dim=1).argmax(dim=1).view(-1, 1)
        return torch.gather(hidden, 1, ends)


class GuardedHead(nn.Module):
    def forward(self, input_ids, attention_mask=None):
        if attention_mask is not None:
            return input_ids * attention_mask[:, :1]
        return input_ids


class DefaultedHead(nn.Module):
    def forward(self, input_ids, attention_mask=None):
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        return input_ids * attention_mask.sum()


class PassingHead(nn.Module):
    def forward(self, input_ids, attention_mask=None):
        return self.inner(input_ids, attention_mask=attention_mask)


def test_a_head_that_dereferences_the_mask_unguarded_requires_one():
    assert requires_attention_mask(RewardHead())
    for head in (GuardedHead(), DefaultedHead(), PassingHead()):
        assert not requires_attention_mask(head), type(head).__name__


def test_the_single_run_gets_all_ones_only_where_required():
    ids = torch.tensor([[5, 6, 7]])
    inputs = {"single.input_ids": ids, "batch.input_ids": ids, "batch.attention_mask": torch.tensor([[0, 1, 1]])}
    mask = mask_for(RewardHead(), inputs, "single")
    assert torch.equal(mask, torch.ones_like(ids))
    # an all-ones mask means the same as none: the reward head then reads the last position
    assert RewardHead()(ids, attention_mask=mask).item() == 7.0
    assert mask_for(GuardedHead(), inputs, "single") is None
    assert torch.equal(mask_for(RewardHead(), inputs, "batch"), inputs["batch.attention_mask"])


def test_a_per_sequence_output_is_compared_whole_under_a_padded_batch():
    from porter.verify import _max_diff

    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    scores, other = torch.tensor([[1.0], [2.0]]), torch.tensor([[1.0], [2.5]])
    assert _max_diff(scores, other, mask) == 0.5
    per_position = torch.zeros(2, 3, 4)
    changed = per_position.clone()
    changed[0, 0] = 9.0  # a padded position: left out
    assert _max_diff(per_position, changed, mask) == 0.0
