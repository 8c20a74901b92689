"""A forward that shifts a tensor argument in place (`position_ids += self.offset`) shifts
it out of place, so the caller's tensor keeps its values."""

from __future__ import annotations

import textwrap

import torch

from tests.transforms.helpers import FILENAME, check_noop, check_transformed
from transforms.argument_updates import OutOfPlaceArgumentUpdates

BEFORE = textwrap.dedent("""\
    import torch
    from torch import nn


    class FooPositions(nn.Module):
        def __init__(self):
            super().__init__()
            self.offset = 2
            self.register_buffer("weights", torch.arange(40.0).view(10, 4))

        def forward(self, position_ids, past_key_values_length: int = 0):
            position_ids += self.offset
            past_key_values_length -= 0
            return self.weights.index_select(0, position_ids.view(-1))
""")
AFTER = BEFORE.replace("position_ids += self.offset", "position_ids = position_ids + self.offset").replace(
    "past_key_values_length -= 0", "past_key_values_length = past_key_values_length - 0"
)


def test_an_argument_shifted_in_place_is_shifted_out_of_place():
    check_transformed(BEFORE, AFTER, OutOfPlaceArgumentUpdates)
    outputs = []
    for source in (BEFORE, AFTER):
        namespace = {}
        exec(compile(source, FILENAME, "exec"), namespace)
        module, positions = namespace["FooPositions"](), torch.tensor([[0, 1, 2]])
        outputs.append((module(positions), module(positions), positions))
    (legacy_first, legacy_again, legacy_positions), (first, again, positions) = outputs
    assert torch.equal(first, legacy_first)  # the same lookup
    assert torch.equal(again, first) and torch.equal(positions, torch.tensor([[0, 1, 2]]))
    assert not torch.equal(legacy_again, legacy_first)  # the legacy form shifted the caller's tensor


def test_updates_of_locals_and_attributes_are_left_alone():
    check_noop("""\
        from torch import nn


        class FooPositions(nn.Module):
            def forward(self, position_ids):
                shifted = position_ids + 1
                shifted += 2
                self.calls += 1
                return shifted
    """, OutOfPlaceArgumentUpdates)
