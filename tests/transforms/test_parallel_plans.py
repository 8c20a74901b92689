"""parallel-plans and head-shapes: the plans land in the config class, reshapes infer heads."""

from __future__ import annotations

import ast
import textwrap

from tests.transforms.helpers import check_noop, run_transforms
from transforms.conv1d_linear import Conv1DToLinear
from transforms.head_shapes import HeadAgnosticShapes
from transforms.parallel_plans import WriteParallelPlans

CONFIG = '''
from transformers import PretrainedConfig


class OddConfig(PretrainedConfig):
    """A config."""

    model_type = "odd"

    def __init__(self, hidden_size=32, num_heads=4, **kwargs):
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        super().__init__(**kwargs)
'''

# Projection names nobody lists: only the data flow says which feeds which.
MODELING = '''
import torch
from torch import nn
from transformers import PreTrainedModel
from .configuration_odd import OddConfig


class OddNorm(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class OddAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.hidden_size // config.num_heads
        self.hidden_size = config.hidden_size
        self.alpha = nn.Linear(config.hidden_size, config.hidden_size)
        self.beta = nn.Linear(config.hidden_size, config.hidden_size)
        self.gamma = nn.Linear(config.hidden_size, config.hidden_size)
        self.omega = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x, mask=None):
        b, t, _ = x.shape
        q = self.alpha(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.beta(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.gamma(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        scores = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        out = (scores @ v).transpose(1, 2).reshape(b, t, self.hidden_size)
        return self.omega(out), scores


class OddFeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.left = nn.Linear(config.hidden_size, 64)
        self.right = nn.Linear(config.hidden_size, 64)
        self.back = nn.Linear(64, config.hidden_size)

    def forward(self, x):
        return self.back(torch.nn.functional.silu(self.left(x)) * self.right(x))


class OddBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.pre = OddNorm(config.hidden_size)
        self.mixer = OddAttention(config)
        self.post = OddNorm(config.hidden_size)
        self.ff = OddFeedForward(config)

    def forward(self, hidden_states, mask=None):
        residual = hidden_states
        attended, _ = self.mixer(self.pre(hidden_states), mask)
        hidden_states = residual + attended
        hidden_states = hidden_states + self.ff(self.post(hidden_states))
        return (hidden_states,)


class OddPreTrainedModel(PreTrainedModel):
    config_class = OddConfig


class OddModel(OddPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.tok = nn.Embedding(100, config.hidden_size)
        self.stack = nn.ModuleList([OddBlock(config) for _ in range(2)])
        self.last = OddNorm(config.hidden_size)

    def forward(self, input_ids, mask=None, output_attentions: bool = False):
        embeddings = self.tok(input_ids)
        hidden_states = embeddings
        for block in self.stack:
            outputs = block(hidden_states, mask=mask)
            hidden_states = outputs[0]
        hidden_states = self.last(hidden_states)
        return hidden_states
'''

EXPECTED_CONFIG = '''
from transformers import PretrainedConfig


class OddConfig(PretrainedConfig):
    """A config."""

    model_type = "odd"
    # Inferred by port-model from the forward code's data flow; see PORTING.md.
    base_model_tp_plan = {
        "stack.*.mixer.alpha": "colwise",
        "stack.*.mixer.beta": "colwise",
        "stack.*.mixer.gamma": "colwise",
        "stack.*.mixer.omega": "rowwise",
        "stack.*.ff.left": "colwise",
        "stack.*.ff.right": "colwise",
        "stack.*.ff.back": "rowwise",
    }
    base_model_pp_plan = {
        "tok": (["input_ids"], ["embeddings"]),
        "stack": (["hidden_states", "mask"], ["hidden_states"]),
        "last": (["hidden_states"], ["hidden_states"]),
    }

    def __init__(self, hidden_size=32, num_heads=4, **kwargs):
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        super().__init__(**kwargs)
'''


def _files(config: str = CONFIG, modeling: str = MODELING) -> dict[str, str]:
    return {"configuration_odd.py": textwrap.dedent(config), "modeling_odd.py": textwrap.dedent(modeling)}


def _declared(source: str, name: str) -> dict:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not declared")


def test_plans_written_into_the_config_class():
    files, state = run_transforms(_files(), WriteParallelPlans)
    assert files["configuration_odd.py"] == textwrap.dedent(EXPECTED_CONFIG)
    assert files["modeling_odd.py"] == textwrap.dedent(MODELING)
    compile(files["configuration_odd.py"], "configuration_odd.py", "exec")
    tp = _declared(files["configuration_odd.py"], "base_model_tp_plan")
    pp = _declared(files["configuration_odd.py"], "base_model_pp_plan")
    assert {k for k, v in tp.items() if v == "rowwise"} == {"stack.*.mixer.omega", "stack.*.ff.back"}
    assert list(pp) == ["tok", "stack", "last"]
    assert [c.transform for c in state.changes] == ["parallel-plans"]
    assert state.changes[0].file == "configuration_odd.py" and state.changes[0].line == 8
    assert not state.diagnostics


def test_declared_plans_are_left_alone():
    files, _ = run_transforms(_files(), WriteParallelPlans)
    again, state = run_transforms(files, WriteParallelPlans)
    assert again == files and not state.changes


def test_a_config_with_its_own_tp_plan_gets_only_the_pipeline_plan():
    own = CONFIG.replace('model_type = "odd"', 'model_type = "odd"\n    base_model_tp_plan = {"stack.*.ff.back": "rowwise"}')
    files, state = run_transforms(_files(config=own), WriteParallelPlans)
    assert _declared(files["configuration_odd.py"], "base_model_tp_plan") == {"stack.*.ff.back": "rowwise"}
    assert list(_declared(files["configuration_odd.py"], "base_model_pp_plan")) == ["tok", "stack", "last"]


def test_no_config_class_no_change():
    check_noop(MODELING.replace("from .configuration_odd import OddConfig\n", "OddConfig = None\n"), WriteParallelPlans)


def test_head_counts_in_sharded_reshapes_become_minus_one():
    files, state = run_transforms(_files(), HeadAgnosticShapes)
    modeling = files["modeling_odd.py"]
    assert modeling.count("view(b, t, -1, self.head_dim)") == 3
    assert "reshape(b, t, -1)" in modeling and "self.num_heads, self.head_dim" not in modeling
    assert modeling.replace("-1", "X").count("X") == modeling.count("-1")  # nothing else touched
    compile(modeling, "modeling_odd.py", "exec")
    assert len(state.changes) == 4 and {c.transform for c in state.changes} == {"head-shapes"}
    assert files["configuration_odd.py"] == textwrap.dedent(CONFIG)


def test_concatenated_shapes_and_products_become_minus_one():
    before = MODELING.replace(
        "q = self.alpha(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)",
        "q = self.alpha(x).view(x.size()[:-1] + (self.num_heads, self.head_dim)).transpose(1, 2)",
    ).replace("reshape(b, t, self.hidden_size)", "reshape(b, t, self.num_heads * self.head_dim)")
    files, _ = run_transforms(_files(modeling=before), HeadAgnosticShapes)
    assert "x.size()[:-1] + (-1, self.head_dim)" in files["modeling_odd.py"]
    assert "reshape(b, t, -1)" in files["modeling_odd.py"]


def test_head_shapes_leave_replicated_and_already_agnostic_code_alone():
    agnostic = MODELING.replace("self.num_heads, self.head_dim", "-1, self.head_dim").replace(
        "reshape(b, t, self.hidden_size)", "reshape(b, t, -1)"
    )
    check_noop(agnostic, HeadAgnosticShapes)
    # Two head counts in one shape: which one is the shard? Left as it is.
    ambiguous = MODELING.replace("view(b, t, self.num_heads, self.head_dim)", "view(b, self.num_heads, t, self.num_heads)")
    files, _ = run_transforms({"modeling_odd.py": textwrap.dedent(ambiguous)}, HeadAgnosticShapes)
    assert "view(b, self.num_heads, t, self.num_heads)" in files["modeling_odd.py"]


def test_conv1d_becomes_linear_with_a_transposing_weight_op():
    import re

    conv = MODELING.replace("from torch import nn\n", "from torch import nn\nfrom transformers.pytorch_utils import Conv1D\n")
    conv = conv.replace("self.left = nn.Linear(config.hidden_size, 64)", "self.left = Conv1D(64, config.hidden_size)")
    conv = conv.replace("self.back = nn.Linear(64, config.hidden_size)", "self.back = Conv1D(config.hidden_size, 64)")
    files, state = run_transforms(_files(modeling=conv), Conv1DToLinear)
    modeling = files["modeling_odd.py"]
    assert "self.left = nn.Linear(config.hidden_size, 64)" in modeling
    assert "self.back = nn.Linear(64, config.hidden_size)" in modeling
    compile(modeling, "modeling_odd.py", "exec")
    assert [c.transform for c in state.changes] == ["conv1d-linear", "conv1d-linear"]
    ops = {op.source: op for op in state.weight_ops}
    assert all(op.kind == "permute" and op.perm_spec == (1, 0) for op in ops.values())
    assert any(re.fullmatch(s, "model.stack.3.ff.back.weight") for s in ops)
    assert not any(re.fullmatch(s, "model.stack.3.ff.back.bias") for s in ops)
    again, state = run_transforms(files, Conv1DToLinear)
    assert again == files and not state.changes and not state.weight_ops


SHAPE_HELPER = MODELING.replace(
    "    def forward(self, x, mask=None):\n        b, t, _ = x.shape\n",
    "    def _shape(self, tensor, seq_len, bsz):\n"
    "        return tensor.view(bsz, seq_len, self.num_heads, self.head_dim).transpose(1, 2)\n\n"
    "    def forward(self, x, mask=None):\n        b, t, _ = x.shape\n",
).replace(
    "k = self.beta(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)", "k = self._shape(self.beta(x), -1, b)"
)


def test_a_helper_handed_minus_one_computes_the_heads_from_the_tensor():
    """CLIP's and BART's `self._shape(self.k_proj(x), -1, bsz)`: a second -1 would not run."""
    import torch

    files, _ = run_transforms(_files(modeling=SHAPE_HELPER), HeadAgnosticShapes)
    modeling = files["modeling_odd.py"]
    assert "tensor.view(bsz, seq_len, tensor.size(-1) // self.head_dim, self.head_dim)" in modeling
    assert modeling.count("view(b, t, -1, self.head_dim)") == 2  # the other reshapes still get -1
    namespace: dict = {}
    exec(compile(modeling.replace("from .configuration_odd import OddConfig", "OddConfig = None"), "m", "exec"), namespace)
    config = type("Config", (), {"num_heads": 4, "hidden_size": 16})()
    attention = namespace["OddAttention"](config)
    shard = torch.randn(2, 3, 8)  # a rank's half of the heads: 2 of 4, head size 4
    assert attention._shape(shard, -1, 2).shape == (2, 2, 3, 4)
    unchanged = SHAPE_HELPER.replace("tensor.view(bsz, seq_len, self.num_heads, self.head_dim)",
                                     "tensor.view(bsz, self.num_heads, seq_len, self.head_dim)")
    files, _ = run_transforms(_files(modeling=unchanged), HeadAgnosticShapes)
    assert "tensor.view(bsz, self.num_heads, seq_len, self.head_dim)" in files["modeling_odd.py"]  # not the last axis split
