"""tied-head-plan: a head tied to the embedding transformers shards gets its column-parallel,
gathered plan; untied heads, heads with a plan and models without a base plan are left alone."""

from __future__ import annotations

import ast
import textwrap

from tests.transforms.helpers import run_transforms
from tests.transforms.test_parallel_plans import CONFIG, MODELING
from transforms.parallel_plans import WriteParallelPlans
from transforms.tied_head_plan import TiedHeadPlan

HEAD = '''

class OddForCausalLM(OddPreTrainedModel):
    _tied_weights_keys = {"out.weight": "model.embed_tokens.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.model = OddModel(config)
        self.out = nn.Linear(config.hidden_size, 100, bias=False)

    def forward(self, input_ids):
        return self.out(self.model(input_ids))
'''

MODELING_TIED = textwrap.dedent(MODELING).replace("self.tok", "self.embed_tokens") + textwrap.dedent(HEAD)
PLANNED = '    _tied_weights_keys = {"out.weight": "model.embed_tokens.weight"}\n    _tp_plan = {"out": "colwise_gather_output"}\n'


def _run(modeling: str, config: str = CONFIG):
    files, state = run_transforms(
        {"configuration_odd.py": textwrap.dedent(config), "modeling_odd.py": modeling}, (WriteParallelPlans, TiedHeadPlan)
    )
    return files["modeling_odd.py"], state


def test_a_head_tied_to_the_sharded_embedding_is_split_like_it():
    output, state = _run(MODELING_TIED)
    assert output == MODELING_TIED.replace('    _tied_weights_keys = {"out.weight": "model.embed_tokens.weight"}\n', PLANNED)
    head = next(n for n in ast.parse(output).body if isinstance(n, ast.ClassDef) and n.name == "OddForCausalLM")
    plan = next(ast.literal_eval(s.value) for s in head.body if isinstance(s, ast.Assign) and s.targets[0].id == "_tp_plan")
    assert plan == {"out": "colwise_gather_output"}
    assert [c.transform for c in state.changes] == ["parallel-plans", "tied-head-plan"]
    assert state.changes[1].file == "modeling_odd.py" and not state.diagnostics


def test_heads_left_alone():
    untied_to_sharded = MODELING_TIED.replace("self.embed_tokens", "self.tok").replace("model.embed_tokens.weight", "model.tok.weight")
    for modeling in (untied_to_sharded, MODELING_TIED.replace(PLANNED.splitlines()[0] + "\n", PLANNED)):
        output, state = _run(modeling)
        assert output == modeling
        assert "tied-head-plan" not in {c.transform for c in state.changes}


def test_a_tie_config_json_turns_off_is_left_alone():
    files, state = run_transforms(
        {"configuration_odd.py": textwrap.dedent(CONFIG), "modeling_odd.py": MODELING_TIED},
        (WriteParallelPlans, TiedHeadPlan),
        facts={"config_json": {"tie_word_embeddings": False}},
    )
    assert files["modeling_odd.py"] == MODELING_TIED and "tied-head-plan" not in {c.transform for c in state.changes}


def test_no_base_plan_no_head_plan():
    """Blocks without projections: no base plan, so transformers shards no embedding."""
    no_projections = MODELING_TIED.replace("[OddBlock(config) for _ in range(2)]", "[OddNorm(config.hidden_size) for _ in range(2)]")
    no_projections = no_projections.replace("outputs = block(hidden_states, mask=mask)", "outputs = (block(hidden_states),)")
    output, state = _run(no_projections)
    assert output == no_projections and "tied-head-plan" not in {c.transform for c in state.changes}


def test_a_head_tied_to_an_embedding_deeper_in_the_base_model_is_split_like_it():
    """OPT's shape: the head holds `model`, whose `decoder` holds the layers and `embed_tokens`."""
    nested = MODELING_TIED.replace('"model.embed_tokens.weight"', '"model.decoder.embed_tokens.weight"')
    output, state = _run(nested)
    assert '    _tp_plan = {"out": "colwise_gather_output"}\n' in output
    assert "tied-head-plan" in {c.transform for c in state.changes}
    for elsewhere in ('"other.decoder.embed_tokens.weight"', '"model.decoder.embed_tokens_scale.weight"'):
        untouched = MODELING_TIED.replace('"model.embed_tokens.weight"', elsewhere)
        output, state = _run(untouched)
        assert output == untouched and "tied-head-plan" not in {c.transform for c in state.changes}
