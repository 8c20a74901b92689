"""parallel-plans: an attention module that owns weights shaped (heads, head_dim), such as a
per-head qk-norm, keeps its projections whole; one without them is split by heads."""

from __future__ import annotations

import ast
import textwrap

from tests.transforms.helpers import run_transforms
from tests.transforms.test_parallel_plans import CONFIG, MODELING
from transforms.parallel_plans import WriteParallelPlans

PER_HEAD_NORM = MODELING.replace(
    "        self.omega = nn.Linear(config.hidden_size, config.hidden_size)\n",
    "        self.omega = nn.Linear(config.hidden_size, config.hidden_size)\n"
    "        self.q_norm = OddNorm((self.num_heads, self.head_dim))\n",
).replace(
    "        q = self.alpha(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)\n",
    "        q = self.q_norm(self.alpha(x).view(b, t, self.num_heads, self.head_dim)).transpose(1, 2)\n",
)


def _tp_plan(modeling: str) -> dict:
    files, _ = run_transforms(
        {"configuration_odd.py": textwrap.dedent(CONFIG), "modeling_odd.py": textwrap.dedent(modeling)}, WriteParallelPlans
    )
    tree = ast.parse(files["configuration_odd.py"])
    return next(ast.literal_eval(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign) and n.targets[0].id == "base_model_tp_plan")


def test_attention_with_per_head_weights_stays_whole():
    assert PER_HEAD_NORM != MODELING
    plan = _tp_plan(PER_HEAD_NORM)
    assert {k: v for k, v in plan.items() if ".mixer." in k} == {f"stack.*.mixer.{p}": "replicate" for p in ("alpha", "beta", "gamma", "omega")}
    assert plan["stack.*.ff.back"] == "rowwise"  # the MLP is still split


PER_HEAD_NORMS = PER_HEAD_NORM.replace(
    "        self.q_norm = OddNorm((self.num_heads, self.head_dim))\n",
    "        self.q_norm = nn.ModuleList([OddNorm(self.head_dim) for _ in range(self.num_heads)])\n",
).replace(
    "self.q_norm(self.alpha(x).view(b, t, self.num_heads, self.head_dim))",
    "torch.stack([n(h) for n, h in zip(self.q_norm, self.alpha(x).view(b, t, self.num_heads, self.head_dim).unbind(2))], 2)",
)


def test_attention_with_one_norm_per_head_stays_whole():
    assert PER_HEAD_NORMS != PER_HEAD_NORM
    plan = _tp_plan(PER_HEAD_NORMS)
    assert plan["stack.*.mixer.omega"] == "replicate" and plan["stack.*.ff.back"] == "rowwise"


def test_attention_without_them_is_split_by_heads():
    """A `(heads, head_dim)` tuple in forward is a reshape (GPT-2's `_split_heads`), not a weight."""
    reshaped_by_tuple = MODELING.replace(
        "        q = self.alpha(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)\n",
        "        q = self.alpha(x).view(x.size()[:-1] + (self.num_heads, self.head_dim)).transpose(1, 2)\n",
    )
    assert reshaped_by_tuple != MODELING
    for modeling in (MODELING, reshaped_by_tuple):
        assert _tp_plan(modeling)["stack.*.mixer.omega"] == "rowwise"
