"""DropTowerDelegations: tie_weights overrides that only forward to a nested model go."""

from __future__ import annotations

from tests.transforms.helpers import check_noop, check_transformed
from transforms.multimodal_delegation import DropTowerDelegations

BEFORE = '''\
from torch import nn
from transformers import PreTrainedModel


class WrapperPreTrainedModel(PreTrainedModel):
    pass


class Wrapper(WrapperPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.language_model = nn.Linear(2, 2)

    def tie_weights(self):
        return self.language_model.tie_weights()

    def get_decoder(self):
        return self.language_model.get_decoder()
'''

AFTER = BEFORE.replace('''    def tie_weights(self):
        return self.language_model.tie_weights()

''', "")


def test_delegating_tie_weights_is_removed():
    state = check_transformed(BEFORE, AFTER, DropTowerDelegations)
    assert "tie_weights removed" in state.changes[0].message


def test_tie_weights_that_does_more_is_kept():
    check_noop(BEFORE.replace(
        "        return self.language_model.tie_weights()\n",
        "        self.language_model.tie_weights()\n        self.extra = 1\n",
    ), DropTowerDelegations)


def test_noop_outside_pretrained_classes():
    check_noop(BEFORE.replace("(PreTrainedModel)", "(nn.Module)"), DropTowerDelegations)
