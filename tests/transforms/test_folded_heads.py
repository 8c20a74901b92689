"""Heads folded into the batch by one reshape per tensor, with the scores from a bias tensor's
own `baddbmm` (the ALiBi form of the BLOOM lineage): unfolded to `[batch, heads, seq, dim]`,
the bias passed as `position_bias`, and the ported module run against the legacy one. Also:
masked scores written to a new name before the softmax, a forward that refuses extra
keywords in its `**kwargs`, and the plan of an attention that takes a position bias."""

from __future__ import annotations

import ast
import textwrap
from types import SimpleNamespace

import torch

from tests.transforms.helpers import FILENAME, check_noop, check_transformed, run_transforms, transformed
from tests.transforms.test_parallel_plans import CONFIG, MODELING
from transforms.attention_interface import RouteAttention
from transforms.attention_layout import UnflattenHeads
from transforms.attention_math import mask_scores_in_place
from transforms.cst_utils import code_of, parse_stmts
from transforms.kwargs_threading import ThreadKwargs
from transforms.parallel_plans import WriteParallelPlans

LEGACY = textwrap.dedent("""\
    import torch
    from torch import nn
    from torch.nn import functional as F


    class FoldAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.num_heads = 2
            self.head_dim = 4
            self.inv_norm_factor = 0.5
            self.beta = 2.0
            self.qkv = nn.Linear(8, 24)
            self.attention_dropout = nn.Dropout(0.0)

        def _merge_heads(self, x):
            batch_size_and_num_heads, seq_length, _ = x.shape
            batch_size = batch_size_and_num_heads // self.num_heads
            x = x.view(batch_size, self.num_heads, seq_length, self.head_dim)
            x = x.permute(0, 2, 1, 3)
            return x.reshape(batch_size, seq_length, self.num_heads * self.head_dim)

        def forward(self, hidden_states, alibi, attention_mask):
            batch_size, q_length, _ = hidden_states.shape
            query_layer, key_layer, value_layer = self.qkv(hidden_states).view(batch_size, q_length, 3, 2, 4).unbind(2)
            query_layer = query_layer.transpose(1, 2).reshape(batch_size * self.num_heads, q_length, self.head_dim)
            key_layer = key_layer.transpose(1, 2).reshape(batch_size * self.num_heads, -1, self.head_dim).transpose(1, 2)
            value_layer = value_layer.transpose(1, 2).reshape(batch_size * self.num_heads, -1, self.head_dim)
            _, _, kv_length = key_layer.shape
            # scores
            matmul_result = alibi.baddbmm(batch1=query_layer, batch2=key_layer, beta=BETA, alpha=self.inv_norm_factor)
            attn_weights = matmul_result.view(batch_size, self.num_heads, q_length, kv_length)
            if attention_mask is not None:
                causal_mask = attention_mask[:, :, :, :kv_length]
                attn_weights = attn_weights + causal_mask
            attention_probs = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_layer.dtype)
            attention_probs = self.attention_dropout(attention_probs)
            attention_probs_reshaped = attention_probs.view(batch_size * self.num_heads, q_length, kv_length)
            context_layer = torch.bmm(attention_probs_reshaped, value_layer)
            context_layer = self._merge_heads(context_layer)
            return context_layer, attention_probs
""")

UNFOLDED_FORWARD = """\
    def forward(self, hidden_states, alibi, attention_mask):
        batch_size, q_length, _ = hidden_states.shape
        query_layer, key_layer, value_layer = self.qkv(hidden_states).view(batch_size, q_length, 3, 2, 4).unbind(2)
        query_layer = query_layer.transpose(1, 2)
        key_layer = key_layer.transpose(1, 2)
        value_layer = value_layer.transpose(1, 2)
        # scores
        alibi = BIAS
        attn_weights = torch.matmul(query_layer, key_layer.transpose(2, 3)) * self.inv_norm_factor
        attn_weights = attn_weights + alibi
        if attention_mask is not None:
            causal_mask = attention_mask[:, :, :, :key_layer.shape[-2]]
            attn_weights = attn_weights + causal_mask
        attention_probs = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_layer.dtype)
        attention_probs = self.attention_dropout(attention_probs)
        context_layer = torch.matmul(attention_probs, value_layer)
        context_layer = context_layer.transpose(1, 2).flatten(2)
        return context_layer, attention_probs
"""


def _legacy(beta: str = "1.0") -> str:
    return LEGACY.replace("BETA", beta)


def _inputs():
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8)
    slopes = torch.tensor([0.5, 0.25])
    alibi = (slopes[None, :, None, None] * torch.arange(5.0)[None, None, None, :]).expand(2, 2, 1, 5).reshape(4, 1, 5)
    mask = torch.triu(torch.full((5, 5), torch.finfo(torch.float32).min), 1)[None, None].repeat(2, 1, 1, 1)
    return hidden, alibi, mask


def _module(source: str, implementation: str):
    namespace = {}
    exec(compile(source, FILENAME, "exec"), namespace)
    torch.manual_seed(1)
    return namespace["FoldAttention"](SimpleNamespace(_attn_implementation=implementation))


def test_reshapes_per_tensor_and_a_bias_baddbmm_are_unfolded():
    before = _legacy()
    head = before.split("    def forward")[0]
    check_transformed(before, head + UNFOLDED_FORWARD.replace("BIAS", "alibi.reshape(batch_size, self.num_heads, -1, alibi.shape[-1])"),
                      UnflattenHeads)
    # A beta other than one scales the bias, as baddbmm did.
    scaled = _legacy("self.beta")
    check_transformed(scaled, scaled.split("    def forward")[0] + UNFOLDED_FORWARD.replace(
        "BIAS", "self.beta * alibi.reshape(batch_size, self.num_heads, -1, alibi.shape[-1])"), UnflattenHeads)


def test_the_ported_module_computes_the_legacy_attention():
    hidden, alibi, mask = _inputs()
    for beta in ("1.0", "self.beta"):
        legacy_source = _legacy(beta)
        ported, state = transformed(legacy_source, [UnflattenHeads, RouteAttention])
        assert not state.diagnostics, [d.render() for d in state.diagnostics]
        assert "position_bias=alibi," in ported and state.facts["position_bias_classes"] == {"FoldAttention"}
        expected, expected_probs = _module(legacy_source, "eager")(hidden, alibi, mask)
        for implementation, tolerance in (("eager", 1e-6), ("sdpa", 1e-5)):
            output, probs = _module(ported, implementation)(hidden, alibi, mask)
            torch.testing.assert_close(output, expected, rtol=0, atol=tolerance)
            if implementation == "eager":
                torch.testing.assert_close(probs, expected_probs, rtol=0, atol=1e-6)


def test_a_bias_built_per_query_row_is_taken_as_it_is():
    """A bias already `[batch, heads, q, kv]` (built per row of a prepared 4D mask) keeps its shape."""
    hidden, alibi, mask = _inputs()
    ported, _ = transformed(_legacy(), [UnflattenHeads, RouteAttention])
    per_row = alibi.reshape(2, 2, 1, 5).expand(2, 2, 5, 5)
    output, _ = _module(ported, "eager")(hidden, per_row, mask)
    expected, _ = _module(_legacy(), "eager")(hidden, alibi, mask)
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-6)


def test_a_zero_beta_ignores_the_tensor_given_to_baddbmm():
    source = _legacy().replace(
        "matmul_result = alibi.baddbmm(batch1=query_layer, batch2=key_layer, beta=1.0, alpha=self.inv_norm_factor)",
        "matmul_result = torch.baddbmm(torch.empty(1), query_layer, key_layer, beta=0, alpha=self.inv_norm_factor)",
    )
    output, state = transformed(source, UnflattenHeads)
    assert "attn_weights = torch.matmul(query_layer, key_layer.transpose(2, 3)) * self.inv_norm_factor\n" in output
    assert "alibi" not in output.split("def forward")[1].split("return")[0].replace("alibi, attention_mask", "")
    assert not state.diagnostics


def test_folded_math_without_a_four_dimensional_view_is_left_alone():
    """Scores kept in `(batch * heads, q, kv)` up to the softmax: nothing says where heads are."""
    source = _legacy().replace(
        "attn_weights = matmul_result.view(batch_size, self.num_heads, q_length, kv_length)",
        "attn_weights = matmul_result",
    )
    check_noop(source, UnflattenHeads)
    check_noop(MODELING.replace("from .configuration_odd import OddConfig\n", ""), UnflattenHeads)


MASKED_INTO_NEW_NAME = """\
s = torch.matmul(q, k.transpose(2, 3)) * 0.5
w = torch.masked_fill(s, mask, torch.finfo(s.dtype).min)
p = F.softmax(w, dim=-1)
o = torch.matmul(p, v)
"""


def _code(stmts) -> str:
    return "".join(code_of(s) for s in stmts)


def test_scores_masked_into_a_new_name_keep_the_scores_name():
    out = _code(mask_scores_in_place(parse_stmts(MASKED_INTO_NEW_NAME)))
    assert out == MASKED_INTO_NEW_NAME.replace("w = torch.masked_fill(s", "s = torch.masked_fill(s").replace("softmax(w", "softmax(s")
    method = MASKED_INTO_NEW_NAME.replace("torch.masked_fill(s, mask,", "s.masked_fill(mask,")
    assert "p = F.softmax(s, dim=-1)" in _code(mask_scores_in_place(parse_stmts(method)))


def test_scores_read_after_the_mask_keep_their_names():
    later = MASKED_INTO_NEW_NAME + "r = s.sum()\n"
    assert _code(mask_scores_in_place(parse_stmts(later))) == later
    returned = MASKED_INTO_NEW_NAME + "out = (o, w)\n"
    assert _code(mask_scores_in_place(parse_stmts(returned))) == returned


REFUSES_EXTRA_KEYWORDS = MODELING.replace(
    "    def forward(self, hidden_states, mask=None):\n        residual = hidden_states\n",
    "    def forward(self, hidden_states, mask=None, **deprecated_arguments):\n"
    "        if len(deprecated_arguments) > 0:\n"
    '            raise ValueError(f"Got unexpected arguments: {deprecated_arguments}")\n'
    "        residual = hidden_states\n",
)


def test_a_refusal_of_extra_keywords_goes_when_they_are_passed_on():
    assert REFUSES_EXTRA_KEYWORDS != MODELING
    files, state = run_transforms({"configuration_odd.py": CONFIG, "modeling_odd.py": REFUSES_EXTRA_KEYWORDS}, ThreadKwargs)
    block = files["modeling_odd.py"].split("class OddBlock")[1].split("class OddPreTrainedModel")[0]
    assert "raise ValueError" not in block and "**deprecated_arguments: Unpack[TransformersKwargs]" in block
    assert "self.mixer(self.pre(hidden_states), mask, **deprecated_arguments)" in block
    assert any("no longer raises on extra keywords" in c.message for c in state.changes)
    other = REFUSES_EXTRA_KEYWORDS.replace("if len(deprecated_arguments) > 0:", "if len(hidden_states) > 0:")
    files, _ = run_transforms({"configuration_odd.py": CONFIG, "modeling_odd.py": other}, ThreadKwargs)
    assert "raise ValueError" in files["modeling_odd.py"].split("class OddBlock")[1]


def _tp_plan(facts: dict) -> dict:
    files, _ = run_transforms(
        {"configuration_odd.py": textwrap.dedent(CONFIG), "modeling_odd.py": textwrap.dedent(MODELING)}, WriteParallelPlans, facts
    )
    tree = ast.parse(files["configuration_odd.py"])
    return next(ast.literal_eval(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign) and n.targets[0].id == "base_model_tp_plan")


def test_attention_given_a_position_bias_keeps_its_heads_whole():
    plan = _tp_plan({"position_bias_classes": {"OddAttention"}})
    assert {k: v for k, v in plan.items() if ".mixer." in k} == {f"stack.*.mixer.{p}": "replicate" for p in ("alpha", "beta", "gamma", "omega")}
    assert plan["stack.*.ff.back"] == "rowwise"
    assert _tp_plan({})["stack.*.mixer.omega"] == "rowwise"


def test_the_bias_goes_into_the_mask_for_the_paged_eager_kernel_only():
    """Continuous batching's `paged|eager` kernel adds its additive mask and drops `position_bias`."""
    ported, _ = transformed(_legacy(), [UnflattenHeads, RouteAttention])
    forward = ported.split("def forward")[1]
    block = forward[forward.index("        if self.config._attn_implementation"):forward.index("        attention_interface =")]
    hidden, alibi, mask = _inputs()
    bias = alibi.reshape(2, 2, 1, 5)
    for implementation, expected in (("paged|eager", mask + bias), ("sdpa", mask), ("eager", mask)):
        scope = {"self": SimpleNamespace(config=SimpleNamespace(_attn_implementation=implementation)),
                 "attention_mask": mask, "alibi": bias}
        exec(textwrap.dedent(block), scope)
        torch.testing.assert_close(scope["attention_mask"], expected, rtol=0, atol=0)


def test_folded_tensors_concatenated_by_hand_are_left_alone():
    """A cache concatenated along a folded axis would mean another axis once heads are apart."""
    source = _legacy().replace(
        "        _, _, kv_length = key_layer.shape\n",
        "        key_layer = torch.cat((key_layer, key_layer), dim=2)\n        _, _, kv_length = key_layer.shape\n",
    )
    assert source != _legacy()
    check_noop(source, UnflattenHeads)
