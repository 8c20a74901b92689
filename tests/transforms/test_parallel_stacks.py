"""Parallel plans of encoders that group their layers (ALBERT style): a layer list inside a
layer whose elements run one after the other is a stack, not experts; and a projection
after the layers that also reads a projection made before them (through the collected
hidden states) takes a full-width input, so the two are not a column/row pair."""

from __future__ import annotations

import libcst as cst

from porter.analysis import analyse
from porter.parallel import infer_plans
from tests.transforms.test_parallel_plans import MODELING

GROUPED = MODELING.replace(
    '''class OddPreTrainedModel(PreTrainedModel):''',
    '''class OddGroup(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.inner = nn.ModuleList([OddBlock(config) for _ in range(2)])

    def forward(self, hidden_states, mask=None):
        for index, block in enumerate(self.inner):
            layer_output = block(hidden_states, mask=mask)
            hidden_states = layer_output[0]
        return (hidden_states,)


class OddPreTrainedModel(PreTrainedModel):''',
).replace(
    '''        self.stack = nn.ModuleList([OddBlock(config) for _ in range(2)])
        self.last = OddNorm(config.hidden_size)

    def forward(self, input_ids, mask=None, output_attentions: bool = False):
        embeddings = self.tok(input_ids)
        hidden_states = embeddings
        for block in self.stack:
            outputs = block(hidden_states, mask=mask)
            hidden_states = outputs[0]
        hidden_states = self.last(hidden_states)
        return hidden_states''',
    '''        self.widen = nn.Linear(16, config.hidden_size)
        self.groups = nn.ModuleList([OddGroup(config) for _ in range(2)])
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, input_ids, mask=None, output_attentions: bool = False):
        hidden_states = self.widen(self.tok(input_ids))
        all_hidden_states = (hidden_states,)
        for group in self.groups:
            outputs = group(hidden_states, mask=mask)
            hidden_states = outputs[0]
            all_hidden_states = all_hidden_states + (hidden_states,)
        sequence_output = (hidden_states, all_hidden_states)[0]
        return sequence_output, self.pooler(sequence_output[:, 0])''',
)

EXPERTS = GROUPED.replace(
    '''        for index, block in enumerate(self.inner):
            layer_output = block(hidden_states, mask=mask)
            hidden_states = layer_output[0]
        return (hidden_states,)''',
    '''        weights = torch.softmax(self.router(hidden_states), dim=-1)
        mixed = 0
        for index, block in enumerate(self.inner):
            mixed = mixed + block(hidden_states, mask=mask)[0] * weights[..., index : index + 1]
        return (mixed,)''',
).replace(
    "        self.inner = nn.ModuleList([OddBlock(config) for _ in range(2)])\n",
    "        self.inner = nn.ModuleList([OddBlock(config) for _ in range(2)])\n"
    "        self.router = nn.Linear(config.hidden_size, 2)\n",
)


def _plans(modeling: str):
    assert modeling != MODELING
    return infer_plans(analyse({"modeling_odd.py": cst.parse_module(modeling)}))


def test_layers_grouped_in_a_stack_are_not_experts_and_keep_their_pairs():
    plans = _plans(GROUPED)
    assert plans.experts == [] and not plans.problems
    assert plans.tp_plan["groups.*.inner.*.mixer.alpha"] == "colwise"
    assert plans.tp_plan["groups.*.inner.*.mixer.omega"] == "rowwise"
    assert plans.tp_plan["groups.*.inner.*.ff.back"] == "rowwise"


def test_a_projection_after_the_layers_is_not_paired_with_one_before_them():
    plans = _plans(GROUPED)
    assert "widen" not in plans.tp_plan and "pooler" not in plans.tp_plan
    assert {"widen", "pooler"} <= set(plans.replicated)


def test_experts_whose_outputs_are_summed_are_still_experts():
    plans = _plans(EXPERTS)
    assert plans.experts == ["groups.*.inner"] and plans.routers == ["groups.*.router"]


def test_attention_below_a_module_that_owns_a_per_head_bias_table_stays_whole():
    """MPNet style: the encoder builds one `[batch, heads, q, k]` bias for every layer from an
    embedding with a column per head; a rank holding half the heads could not add it."""
    with_table = GROUPED.replace(
        "        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)\n",
        "        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)\n"
        "        self.relative_attention_bias = nn.Embedding(32, config.num_heads)\n",
    )
    plans = _plans(with_table)
    assert plans.tp_plan["groups.*.inner.*.mixer.alpha"] == "replicate"
    assert plans.tp_plan["groups.*.inner.*.mixer.omega"] == "replicate"
    assert plans.tp_plan["groups.*.inner.*.ff.back"] == "rowwise"  # the MLP has no bias to keep whole
