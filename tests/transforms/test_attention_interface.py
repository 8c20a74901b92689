"""RouteAttention: inline eager attention math becomes eager_attention_forward + one interface call."""

from __future__ import annotations

import math
import textwrap
from types import SimpleNamespace

import libcst as cst
import pytest
import torch
from torch import nn

from tests.transforms.helpers import FILENAME, check_noop, check_transformed, transformed
from transforms.attention_interface import RouteAttention

# A transformers-4.36-era eager attention: GQA through repeat_kv, shape guards, fp32 softmax, dropout.
LEGACY = textwrap.dedent('''\
    import math

    import torch
    from torch import nn


    def repeat_kv(hidden_states, n_rep):
        if n_rep == 1:
            return hidden_states
        batch, num_key_value_heads, slen, head_dim = hidden_states.shape
        hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
        return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


    class FooAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.hidden_size = config.hidden_size
            self.num_heads = config.num_attention_heads
            self.head_dim = self.hidden_size // self.num_heads
            self.num_key_value_heads = config.num_key_value_heads
            self.num_key_value_groups = self.num_heads // self.num_key_value_heads
            self.attention_dropout = config.attention_dropout
            self.is_causal = True
            self.q_proj = nn.Linear(self.hidden_size, self.num_heads * self.head_dim, bias=False)
            self.k_proj = nn.Linear(self.hidden_size, self.num_key_value_heads * self.head_dim, bias=False)
            self.v_proj = nn.Linear(self.hidden_size, self.num_key_value_heads * self.head_dim, bias=False)
            self.o_proj = nn.Linear(self.num_heads * self.head_dim, self.hidden_size, bias=False)

        def forward(self, hidden_states, attention_mask=None, output_attentions=False):
            bsz, q_len, _ = hidden_states.size()

            query_states = self.q_proj(hidden_states).view(bsz, q_len, -1, self.head_dim).transpose(1, 2)
            key_states = self.k_proj(hidden_states).view(bsz, q_len, -1, self.head_dim).transpose(1, 2)
            value_states = self.v_proj(hidden_states).view(bsz, q_len, -1, self.head_dim).transpose(1, 2)

            key_states = repeat_kv(key_states, self.num_key_value_groups)
            value_states = repeat_kv(value_states, self.num_key_value_groups)

            attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(self.head_dim)

            if attn_weights.size() != (bsz, self.num_heads, q_len, q_len):
                raise ValueError(f"Attention weights should be of size {(bsz, self.num_heads, q_len, q_len)}")

            if attention_mask is not None:
                if attention_mask.size() != (bsz, 1, q_len, q_len):
                    raise ValueError(f"Attention mask should be of size {(bsz, 1, q_len, q_len)}")
                attn_weights = attn_weights + attention_mask

            # upcast attention to fp32
            attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype)
            attn_weights = nn.functional.dropout(attn_weights, p=self.attention_dropout, training=self.training)
            attn_output = torch.matmul(attn_weights, value_states)

            if attn_output.size() != (bsz, self.num_heads, q_len, self.head_dim):
                raise ValueError(f"`attn_output` should be of size {(bsz, self.num_heads, q_len, self.head_dim)}")

            attn_output = attn_output.transpose(1, 2).contiguous()
            attn_output = attn_output.reshape(bsz, q_len, self.hidden_size)
            attn_output = self.o_proj(attn_output)

            if not output_attentions:
                attn_weights = None
            return attn_output, attn_weights
''')

PORTED = textwrap.dedent('''\
    import math

    import torch
    from torch import nn
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


    def repeat_kv(hidden_states, n_rep):
        if n_rep == 1:
            return hidden_states
        batch, num_key_value_heads, slen, head_dim = hidden_states.shape
        hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
        return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


    def eager_attention_forward(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float,
        dropout: float = 0.0,
        **kwargs,
    ):
        key = repeat_kv(key, module.num_key_value_groups)
        value = repeat_kv(value, module.num_key_value_groups)

        attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling

        if attention_mask is not None:
            attn_weights = attn_weights + attention_mask

        # upcast attention to fp32
        attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
        attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
        attn_output = torch.matmul(attn_weights, value)
        attn_output = attn_output.transpose(1, 2).contiguous()
        return attn_output, attn_weights


    class FooAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.hidden_size = config.hidden_size
            self.num_heads = config.num_attention_heads
            self.head_dim = self.hidden_size // self.num_heads
            self.num_key_value_heads = config.num_key_value_heads
            self.num_key_value_groups = self.num_heads // self.num_key_value_heads
            self.attention_dropout = config.attention_dropout
            self.is_causal = True
            self.q_proj = nn.Linear(self.hidden_size, self.num_heads * self.head_dim, bias=False)
            self.k_proj = nn.Linear(self.hidden_size, self.num_key_value_heads * self.head_dim, bias=False)
            self.v_proj = nn.Linear(self.hidden_size, self.num_key_value_heads * self.head_dim, bias=False)
            self.o_proj = nn.Linear(self.num_heads * self.head_dim, self.hidden_size, bias=False)
            self.scaling = 1 / math.sqrt(self.head_dim)

        def forward(self, hidden_states, attention_mask=None, output_attentions=False, **kwargs):
            bsz, q_len, _ = hidden_states.size()

            query_states = self.q_proj(hidden_states).view(bsz, q_len, -1, self.head_dim).transpose(1, 2)
            key_states = self.k_proj(hidden_states).view(bsz, q_len, -1, self.head_dim).transpose(1, 2)
            value_states = self.v_proj(hidden_states).view(bsz, q_len, -1, self.head_dim).transpose(1, 2)

            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
            attn_output, attn_weights = attention_interface(
                self,
                query_states,
                key_states,
                value_states,
                attention_mask,
                dropout=0.0 if not self.training else self.attention_dropout,
                scaling=self.scaling,
                **kwargs,
            )
            attn_output = attn_output.reshape(bsz, q_len, self.hidden_size)
            attn_output = self.o_proj(attn_output)

            if not output_attentions:
                attn_weights = None
            return attn_output, attn_weights
''')


def test_inline_math_becomes_eager_function_and_one_interface_call():
    state = check_transformed(LEGACY, PORTED, RouteAttention)
    assert state.facts["routed"] == {"FooAttention"}
    messages = [c.message for c in state.changes]
    assert "FooAttention.forward: attention math moved to eager_attention_forward; one interface call" in messages
    assert "FooAttention.__init__: added self.scaling" in messages


def test_init_gains_every_attribute_the_interface_reads():
    """Without is_causal / num_key_value_groups in __init__ they are added too (groups from repeat_kv)."""
    legacy = LEGACY.replace("        self.is_causal = True\n", "").replace(
        "        self.num_key_value_groups = self.num_heads // self.num_key_value_heads\n", ""
    ).replace("self.num_key_value_groups)", "self.num_heads // self.num_key_value_heads)")
    output, state = transformed(legacy, RouteAttention)
    compile(output, FILENAME, "exec")
    assert not state.diagnostics
    assert (
        "        self.scaling = 1 / math.sqrt(self.head_dim)\n"
        "        self.is_causal = True\n"
        "        self.num_key_value_groups = self.num_heads // self.num_key_value_heads\n"
    ) in output


def test_noop_on_already_ported_code():
    check_noop(PORTED, RouteAttention)


def test_noop_without_attention():
    check_noop(
        '''\
    from torch import nn


    class FooMLP(nn.Module):
        def forward(self, hidden_states):
            return nn.functional.softmax(hidden_states, dim=-1)
    ''',
        RouteAttention,
    )


# -- refusals: the source is left alone and a diagnostic says why --------------------------
def test_diagnostic_for_math_reading_an_extra_local():
    legacy = LEGACY.replace(
        "def forward(self, hidden_states, attention_mask=None, output_attentions=False):",
        "def forward(self, hidden_states, attention_mask=None, output_attentions=False, temperature=None):",
    ).replace(
        "            attn_weights = attn_weights + attention_mask\n",
        "            attn_weights = attn_weights + attention_mask\n        attn_weights = attn_weights * temperature\n",
    )
    state = check_noop(legacy, RouteAttention, diagnostics=True)
    [diagnostic] = state.diagnostics
    assert diagnostic.symbol == "FooAttention"
    assert "temperature" in diagnostic.message  # a factor, not an additive bias: nothing carries it
    assert "routed" not in state.facts


def test_diagnostic_without_head_transpose_after_the_math():
    legacy = LEGACY.replace("        attn_output = attn_output.transpose(1, 2).contiguous()\n", "")
    state = check_noop(legacy, RouteAttention, diagnostics=True)
    [diagnostic] = state.diagnostics
    assert "transpose(1, 2)" in diagnostic.message
    assert diagnostic.line is not None



def test_diagnostic_for_math_in_branches_chosen_at_run_time():
    # Two eager paths behind a run-time test of an input (a bias given or not): each arm is
    # routed on its own (attention_arms), so the refusal names the arm that cannot be: the
    # bias added in the mask's own expression is no position bias the interface passes.
    start = LEGACY.index("        attn_weights = torch.matmul(")
    end = LEGACY.index("        attn_output = attn_output.transpose(1, 2)")
    math_lines = LEGACY[start:end]
    branched = "".join("    " + line if line.strip() else line for line in math_lines.splitlines(keepends=True))
    legacy = LEGACY[:start] + "        if bias is None:\n" + branched + "        else:\n" + branched.replace(
        "attn_weights = attn_weights + attention_mask", "attn_weights = attn_weights + attention_mask + bias"
    ) + LEGACY[end:]
    legacy = legacy.replace("attention_mask=None, output_attentions=False)", "attention_mask=None, output_attentions=False, bias=None)")
    cst.parse_module(legacy)
    state = check_noop(legacy, RouteAttention, diagnostics=True)
    [diagnostic] = state.diagnostics
    assert diagnostic.symbol == "FooAttention"
    assert "attention math reads ['bias'], which the interface cannot pass" in diagnostic.message
    arm = legacy.index("        else:\n")  # the statement of the bias arm that adds it
    assert diagnostic.line == legacy[: legacy.index("if attention_mask is not None:", arm)].count("\n") + 1



def test_diagnostic_for_scores_reshaped_from_a_product_on_another_name():
    # The product assigns an intermediate name, which a view turns into the scores (heads
    # folded into the batch, operands given as keywords): both statements are named.
    legacy = LEGACY.replace(
        "        attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(self.head_dim)\n",
        "        # [batch * heads, q, kv]\n"
        "        matmul_result = torch.baddbmm(attention_mask, batch1=query_states, batch2=key_states, alpha=0.5)\n"
        "        attn_weights = matmul_result.view(bsz, self.num_heads, q_len, q_len)\n",
    )
    cst.parse_module(legacy)
    state = check_noop(legacy, RouteAttention, diagnostics=True)
    [diagnostic] = state.diagnostics
    assert "attn_weights is computed from `matmul_result`, which a product assigned (`matmul_result = torch.baddbmm(" in diagnostic.message
    assert "operands given as keywords ['alpha', 'batch1', 'batch2']" in diagnostic.message
    assert diagnostic.line == legacy[: legacy.index("attn_weights = matmul_result.view")].count("\n") + 1


def test_diagnostic_for_scores_reached_through_several_statements_names_the_first_reader():
    legacy = LEGACY.replace(
        "        attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(self.head_dim)\n",
        "        matmul_result = torch.baddbmm(attention_mask, batch1=query_states, batch2=key_states, alpha=0.5)\n"
        "        attn_weights = matmul_result.view(bsz, self.num_heads, q_len, q_len)\n"
        "        attn_weights = attn_weights.float()\n",
    )
    state = check_noop(legacy, RouteAttention, diagnostics=True)
    [diagnostic] = state.diagnostics
    assert "attn_weights is computed from `matmul_result`" in diagnostic.message
    assert diagnostic.line == legacy[: legacy.index("attn_weights = matmul_result.view")].count("\n") + 1


HELPER_LEGACY = '''\
import math

import torch
from torch import nn


class FooAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.head_dim = 4

    def _attn(self, query, key, value, attention_mask=None):
        attn_weights = torch.matmul(query, key.transpose(-1, -2))
        attn_weights = attn_weights / math.sqrt(self.head_dim)
        if attention_mask is not None:
            attn_weights = attn_weights + attention_mask
        attn_weights = nn.functional.softmax(attn_weights, dim=-1)
        attn_output = torch.matmul(attn_weights, value)
        return attn_output, attn_weights

    def _merge_heads(self, tensor):
        tensor = tensor.permute(0, 2, 1, 3).contiguous()
        return tensor.view(tensor.size()[:-2] + (-1,))

    def forward(self, query, key, value, attention_mask=None):
        attn_output, attn_weights = self._attn(query, key, value, attention_mask)
        attn_output = self._merge_heads(attn_output)
        return attn_output, attn_weights
'''


def test_math_in_a_helper_method_is_folded_and_computes_the_same():
    output, state = transformed(HELPER_LEGACY, RouteAttention)
    assert not state.diagnostics, state.diagnostics
    compile(output, FILENAME, "exec")
    assert "def _attn" not in output and output.count("ALL_ATTENTION_FUNCTIONS.get_interface(") == 1
    assert "self.scaling = 1 / math.sqrt(self.head_dim)" in output

    class Config:
        _attn_implementation = "eager"

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    mask = torch.zeros(2, 1, 5, 5)
    mask[1, :, :, :2] = torch.finfo(torch.float32).min
    results = []
    for source in (HELPER_LEGACY, output):
        namespace = {}
        exec(compile(source, FILENAME, "exec"), namespace)
        results.append(namespace["FooAttention"](Config())(q, k, v, mask)[0])
    assert results[1].shape == (2, 5, 12)
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=1e-6)


# -- behaviour ---------------------------------------------------------------------------
def _repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """An independent repeat_kv: [b, kv, s, d] -> [b, kv * n_rep, s, d]."""
    return torch.repeat_interleave(hidden_states, n_rep, dim=1)


def _legacy_math(query, key, value, mask, groups, head_dim):
    """The legacy forward's math, from repeat_kv to the head transpose."""
    key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)
    weights = torch.matmul(query, key.transpose(2, 3)) / math.sqrt(head_dim)
    if mask is not None:
        weights = weights + mask
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _causal_mask(batch: int, length: int) -> torch.Tensor:
    mask = torch.full((length, length), torch.finfo(torch.float32).min).triu(1)
    return mask[None, None].expand(batch, 1, length, length)


def _function_source(module_code: str, name: str) -> str:
    tree = cst.parse_module(module_code)
    [fn] = [s for s in tree.body if isinstance(s, cst.FunctionDef) and s.name.value == name]
    return tree.code_for_node(fn)


@pytest.mark.parametrize("with_mask", [True, False])
def test_eager_attention_forward_computes_the_legacy_math(with_mask):
    output, _ = transformed(LEGACY, RouteAttention)
    namespace = {"torch": torch, "math": math, "nn": nn, "repeat_kv": _repeat_kv}
    exec(_function_source(output, "eager_attention_forward"), namespace)
    eager_attention_forward = namespace["eager_attention_forward"]

    batch, heads, kv_heads, length, head_dim = 2, 4, 2, 5, 8
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(batch, heads, length, head_dim, generator=generator)
    key = torch.randn(batch, kv_heads, length, head_dim, generator=generator)
    value = torch.randn(batch, kv_heads, length, head_dim, generator=generator)
    mask = _causal_mask(batch, length) if with_mask else None
    module = SimpleNamespace(num_key_value_groups=heads // kv_heads, training=False)

    attn_output, attn_weights = eager_attention_forward(
        module, query, key, value, mask, scaling=1 / math.sqrt(head_dim), dropout=0.0
    )
    expected_output, expected_weights = _legacy_math(query, key, value, mask, heads // kv_heads, head_dim)
    assert attn_output.shape == (batch, length, heads, head_dim)
    assert torch.allclose(attn_output, expected_output, atol=1e-6)
    assert torch.allclose(attn_weights, expected_weights, atol=1e-6)


def _exec_module(code: str) -> dict:
    namespace: dict = {}
    exec(compile(code, FILENAME, "exec"), namespace)
    return namespace


def _legacy_and_ported_outputs(legacy_code: str, ported_code: str, implementation: str):
    config = SimpleNamespace(
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_dropout=0.0,
        _attn_implementation=implementation,
    )
    torch.manual_seed(0)
    legacy = _exec_module(legacy_code)["FooAttention"](config).eval()
    ported = _exec_module(ported_code)["FooAttention"](config).eval()
    ported.load_state_dict(legacy.state_dict())
    hidden_states = torch.randn(2, 5, 32)
    mask = _causal_mask(2, 5)
    with torch.no_grad():
        return legacy(hidden_states, mask)[0], ported(hidden_states, mask)[0]


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_ported_module_matches_legacy_module(implementation):
    output, _ = transformed(LEGACY, RouteAttention)
    expected, actual = _legacy_and_ported_outputs(LEGACY, output, implementation)
    assert actual.shape == expected.shape == (2, 5, 32)
    assert torch.allclose(actual, expected, atol=1e-5)


# -- known bugs ----------------------------------------------------------------------------
def test_scale_in_its_own_statement_reaches_every_kernel():
    legacy = LEGACY.replace(
        "        attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(self.head_dim)\n",
        "        attn_weights = torch.matmul(query_states, key_states.transpose(2, 3))\n"
        "        attn_weights = attn_weights / math.sqrt(self.head_dim)\n",
    )
    output, state = transformed(legacy, RouteAttention)
    if state.diagnostics:
        return  # refusing is an acceptable answer
    expected, actual = _legacy_and_ported_outputs(legacy, output, "sdpa")
    assert torch.allclose(actual, expected, atol=1e-5)


def test_interface_call_never_reads_an_unset_self_config():
    legacy = '''\
    import math

    import torch
    from torch import nn


    class FooAttention(nn.Module):
        def __init__(self, hidden_size, num_heads):
            super().__init__()
            self.head_dim = hidden_size // num_heads

        def forward(self, query_states, key_states, value_states):
            attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(self.head_dim)
            attn_weights = nn.functional.softmax(attn_weights, dim=-1)
            attn_output = torch.matmul(attn_weights, value_states)
            attn_output = attn_output.transpose(1, 2)
            return attn_output
    '''
    output, state = transformed(legacy, RouteAttention)
    assert state.diagnostics or "self.config = " in output


def test_attention_with_matmul_operator_is_routed_or_diagnosed():
    legacy = '''\
    import math

    from torch import nn


    class FooAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.head_dim = config.head_dim

        def forward(self, query_states, key_states, value_states, attention_mask=None):
            attn_weights = (query_states @ key_states.transpose(2, 3)) / math.sqrt(self.head_dim)
            attn_weights = nn.functional.softmax(attn_weights + attention_mask, dim=-1)
            attn_output = attn_weights @ value_states
            attn_output = attn_output.transpose(1, 2)
            return attn_output
    '''
    _, state = transformed(legacy, RouteAttention)
    assert state.changes or state.diagnostics


def test_extra_local_diagnostic_names_its_line():
    legacy = LEGACY.replace(
        "def forward(self, hidden_states, attention_mask=None, output_attentions=False):",
        "def forward(self, hidden_states, attention_mask=None, output_attentions=False, temperature=None):",
    ).replace(
        "            attn_weights = attn_weights + attention_mask\n",
        "            attn_weights = attn_weights + attention_mask\n        attn_weights = attn_weights * temperature\n",
    )
    _, state = transformed(legacy, RouteAttention)
    assert state.diagnostics[0].line is not None


def test_a_query_head_size_named_q_head_dim_becomes_head_dim():
    """Latent-attention code names the query/key head size `q_head_dim` (its value heads have
    another size) and has no `head_dim`: the interface's `head_dim` is the query's."""
    legacy = LEGACY.replace("self.head_dim", "self.q_head_dim")
    output, state = transformed(legacy, RouteAttention)
    assert "        self.head_dim = self.q_head_dim\n" in output and not state.diagnostics
    namespace: dict = {}
    exec(compile(output, FILENAME, "exec"), namespace)
    config = SimpleNamespace(hidden_size=16, num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.0,
                             _attn_implementation="eager")
    assert namespace["FooAttention"](config).head_dim == 4


def test_head_dim_assigned_by_the_code_is_kept():
    output, _ = transformed(LEGACY, RouteAttention)
    assert "self.head_dim = self.q_head_dim" not in output and output.count("self.head_dim = ") == 1


# -- key/value heads tiled with a tensor's own `.repeat` (head h reads key head h % kv_heads) ------
TILED = LEGACY.replace(
    "        self.num_key_value_groups = self.num_heads // self.num_key_value_heads\n",
    "        self.top_k = self.num_heads // self.num_key_value_heads\n",
).replace(
    "        key_states = repeat_kv(key_states, self.num_key_value_groups)\n"
    "        value_states = repeat_kv(value_states, self.num_key_value_groups)\n",
    "        key_states = key_states.repeat(1, self.top_k, 1, 1)\n"
    "        value_states = value_states.repeat(1, self.top_k, 1, 1)\n",
)


def test_tiled_heads_become_kernel_groups_with_the_query_heads_reordered():
    output, _ = transformed(TILED, RouteAttention)
    forward = output[output.index("def forward"):]
    assert ".repeat(" not in output
    assert "torch.repeat_interleave(key, module.top_k, dim=1)" in _function_source(output, "eager_attention_forward")
    assert "self.num_key_value_groups = self.top_k" in output
    reorder = "query_states = query_states.unflatten(1, (self.top_k, -1)).transpose(1, 2).flatten(1, 2)"
    restore = "attn_output = attn_output.unflatten(2, (-1, self.top_k)).transpose(2, 3).flatten(2, 3)"
    assert forward.index(reorder) < forward.index("attention_interface(") < forward.index(restore)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_tiled_heads_match_the_legacy_module(implementation):
    output, _ = transformed(TILED, RouteAttention)
    expected, actual = _legacy_and_ported_outputs(TILED, output, implementation)
    assert torch.allclose(actual, expected, atol=1e-5)


def test_tiled_heads_on_another_axis_are_refused():
    legacy = TILED.replace("key_states.repeat(1, self.top_k, 1, 1)", "key_states.repeat(1, 1, self.top_k, 1)")
    state = check_noop(legacy, RouteAttention, diagnostics=True)
    assert "other than the heads" in state.diagnostics[0].message


def test_tiled_heads_with_a_groups_attribute_are_refused():
    legacy = TILED.replace("        self.top_k = ", "        self.num_key_value_groups = self.top_k = ")
    state = check_noop(legacy, RouteAttention, diagnostics=True)
    [diagnostic] = state.diagnostics
    assert diagnostic.symbol == "FooAttention" and "tiled with `.repeat`" in diagnostic.message


def test_interleaved_repeat_is_still_moved_into_the_eager_function():
    output, _ = transformed(LEGACY, RouteAttention)
    assert "repeat_kv(key, module.num_key_value_groups)" in _function_source(output, "eager_attention_forward")


def test_is_causal_from_an_argument_defaulting_to_false_defaults_to_true_in_a_causal_model():
    """`self.is_causal = is_causal` with `is_causal=False` by default, the layers building it
    without the argument (BioGPT): a kernel given no mask attended both ways. The module is
    built from the ported code and run by sdpa without a mask: causal, as its eager math with
    the causal mask."""
    legacy = LEGACY.replace("def __init__(self, config):", "def __init__(self, config, is_causal: bool = False):").replace(
        "self.is_causal = True", "self.is_causal = is_causal"
    )
    output, state = transformed(legacy, RouteAttention)
    assert "def __init__(self, config, is_causal: bool = True):" in output
    assert any("`is_causal` defaults to True" in c.message for c in state.changes)
    namespace = {}
    exec(compile(output, FILENAME, "exec"), namespace)
    config = SimpleNamespace(hidden_size=8, num_attention_heads=2, num_key_value_heads=2, attention_dropout=0.0,
                             _attn_implementation="sdpa")
    torch.manual_seed(0)
    module = namespace["FooAttention"](config).eval()
    hidden = torch.randn(1, 5, 8)
    without_mask = module(hidden)[0]
    config._attn_implementation = "eager"
    causal = torch.triu(torch.full((5, 5), torch.finfo(torch.float32).min), 1)[None, None]
    torch.testing.assert_close(without_mask, module(hidden, causal)[0])
    # a builder passing False explicitly keeps it: the argument is still read
    assert namespace["FooAttention"](config, is_causal=False).is_causal is False
