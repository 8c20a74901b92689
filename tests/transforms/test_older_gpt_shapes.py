"""Attention shapes of the older GPT families (GPT-J, CodeGen, GPT-Neo lineage): a scale
applied after a `torch.where` causal buffer and held as a tensor attribute, the softmax as
an `nn.Softmax` module, and a causal buffer narrowed to a window in `__init__` (a sliding
window where a switch chooses it, refused otherwise).
Each ported module is run against its legacy form."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import pytest
import torch

from tests.transforms.helpers import (
    FILENAME,
    check_idempotent,
    check_noop,
    check_transformed,
    run_transforms,
    transformed,
)
from transforms.attention_interface import RouteAttention

# `_attn` with a causal buffer, the scores masked by `torch.where` *before* being divided by
# a scale that __init__ keeps as a tensor.
WHERE_THEN_SCALE = textwrap.dedent("""\
    import torch
    from torch import nn


    class FooAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.head_dim = 4
            self.register_buffer("bias", torch.tril(torch.ones(8, 8, dtype=torch.bool)).view(1, 1, 8, 8), persistent=False)
            self.scale_attn = torch.sqrt(torch.tensor(self.head_dim, dtype=torch.float32))

        def _attn(self, query, key, value, attention_mask=None):
            query_length, key_length = query.size(-2), key.size(-2)
            causal_mask = self.bias[:, :, key_length - query_length : key_length, :key_length]
            attn_weights = torch.matmul(query, key.transpose(-1, -2))
            mask_value = torch.tensor(torch.finfo(attn_weights.dtype).min, dtype=attn_weights.dtype)
            attn_weights = torch.where(causal_mask, attn_weights, mask_value)
            attn_weights = attn_weights / self.scale_attn
            if attention_mask is not None:
                attn_weights = attn_weights + attention_mask
            attn_weights = nn.functional.softmax(attn_weights, dim=-1)
            attn_output = torch.matmul(attn_weights, value)
            return attn_output, attn_weights

        def forward(self, query, key, value, attention_mask=None):
            attn_output, attn_weights = self._attn(query, key, value, attention_mask)
            attn_output = attn_output.permute(0, 2, 1, 3).contiguous()
            return attn_output.view(attn_output.size()[:-2] + (-1,)), attn_weights
""")


def _run(source: str, implementation: str, q, k, v, mask):
    namespace = {}
    exec(compile(source, FILENAME, "exec"), namespace)
    module = namespace["FooAttention"](SimpleNamespace(_attn_implementation=implementation))
    return module, module(q, k, v, mask)[0]


def _inputs():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    mask = torch.triu(torch.full((5, 5), torch.finfo(torch.float32).min), 1)[None, None].repeat(2, 1, 1, 1)
    mask[1, :, 3:, :2] = torch.finfo(torch.float32).min  # no row fully masked: those differ by design
    return q, k, v, mask


def test_a_scale_after_a_where_mask_folds_into_scaling_read_from_the_tensor():
    output, state = transformed(WHERE_THEN_SCALE, RouteAttention)
    assert not state.diagnostics, [d.render() for d in state.diagnostics]
    assert "/ self.scale_attn" not in output.split("class FooAttention")[0]  # no second scale in the eager math
    assert "    def scaling(self) -> float:\n        return float(1 / self.scale_attn)\n" in output
    q, k, v, mask = _inputs()
    _, legacy = _run(WHERE_THEN_SCALE, "eager", q, k, v, mask)
    module, ported = _run(output, "eager", q, k, v, mask)
    torch.testing.assert_close(ported, legacy, rtol=0, atol=1e-6)
    assert isinstance(module.scaling, float) and module.scaling == 0.5
    # A kernel given `scaling` (sdpa here) computes what the legacy division did.
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=module.scaling)
    torch.testing.assert_close(expected.transpose(1, 2).reshape(2, 5, 12), legacy, rtol=0, atol=1e-5)


def test_a_scale_after_a_where_mask_is_ported_once():
    check_noop(check_idempotent(WHERE_THEN_SCALE, RouteAttention), RouteAttention)


SOFTMAX_MODULE = textwrap.dedent("""\
    import torch
    from torch import nn


    class FooAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.head_dim = 4
            self.softmax = nn.Softmax(dim=-1)

        def forward(self, query, key, value, attention_mask=None):
            scores = torch.matmul(query, key.transpose(-1, -2)) / 2.0
            if attention_mask is not None:
                scores = scores + attention_mask
            probs = SOFTMAX_CALL
            context = torch.matmul(probs, value)
            context = context.transpose(1, 2).contiguous()
            return context.reshape(*context.shape[:2], -1), probs
""")

SOFTMAX_MODULE_PORTED = textwrap.dedent("""\
    import torch
    from torch import nn
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


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
        scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = torch.nn.functional.softmax(scores, dim=-1)
        attn_output = torch.matmul(probs, value)
        attn_output = attn_output.transpose(1, 2).contiguous()
        return attn_output, probs


    class FooAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.head_dim = 4
            self.softmax = nn.Softmax(dim=-1)
            self.scaling = 1 / 2.0
            self.is_causal = True
            self.num_key_value_groups = 1

        def forward(self, query, key, value, attention_mask=None, **kwargs):

            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
            context, probs = attention_interface(
                self,
                query,
                key,
                value,
                attention_mask,
                dropout=0.0,
                scaling=self.scaling,
                **kwargs,
            )
            return context.reshape(*context.shape[:2], -1), probs
""")


@pytest.mark.parametrize("call", ["nn.Softmax(dim=-1)(scores)", "self.softmax(scores)", "nn.Softmax(-1)(scores)"])
def test_a_softmax_module_becomes_the_functional_softmax(call):
    legacy = SOFTMAX_MODULE.replace("SOFTMAX_CALL", call)
    check_transformed(legacy, SOFTMAX_MODULE_PORTED, RouteAttention)
    q, k, v, mask = _inputs()
    _, expected = _run(legacy, "eager", q, k, v, mask)
    _, ported = _run(SOFTMAX_MODULE_PORTED, "eager", q, k, v, mask)
    torch.testing.assert_close(ported, expected, rtol=0, atol=1e-6)


def test_a_softmax_module_without_a_dim_is_not_guessed():
    """`nn.Softmax()` picks its dimension from the input's rank: no softmax call is made up."""
    state = check_noop(SOFTMAX_MODULE.replace("SOFTMAX_CALL", "nn.Softmax()(scores)"), RouteAttention, diagnostics=True)
    assert "softmax" in state.diagnostics[0].message and state.diagnostics[0].line is not None


def test_a_module_holding_a_softmax_but_no_attention_is_left_alone():
    check_noop(
        """\
        import torch
        from torch import nn


        class Router(nn.Module):
            def __init__(self, config):
                super().__init__()
                self.config = config
                self.softmax = nn.Softmax(dim=-1)

            def forward(self, hidden_states):
                return self.softmax(hidden_states)
        """,
        RouteAttention,
    )


WINDOW_SWITCH = WHERE_THEN_SCALE.replace(
    '        self.register_buffer("bias", torch.tril(torch.ones(8, 8, dtype=torch.bool)).view(1, 1, 8, 8), persistent=False)\n',
    "        bias = torch.tril(torch.ones(8, 8, dtype=torch.bool)).view(1, 1, 8, 8)\n"
    "        if config.local:\n"
    "            bias = torch.bitwise_xor(bias, torch.tril(bias, -config.window_size))\n"
    '        self.register_buffer("bias", bias, persistent=False)\n',
)


@pytest.mark.parametrize("local", [True, False])
def test_a_causal_buffer_narrowed_to_a_band_by_a_switch_becomes_a_sliding_window(local):
    """GPT-Neo's local layers: `bitwise_xor(bias, tril(bias, -window))` keeps keys with
    0 <= q - k < window, which is masking_utils' sliding window. The ported module keeps the
    window as `self.sliding_window` and picks its mask from the base model's per-type dict."""
    output, state = transformed(WINDOW_SWITCH, RouteAttention)
    assert not state.diagnostics, [d.render() for d in state.diagnostics]
    assert "self.sliding_window = (config.window_size) if config.local else None" in output
    assert state.facts["window_switches"] == {"FooAttention": ("config.local", "config.window_size")}
    config = SimpleNamespace(_attn_implementation="eager", local=local, window_size=2)
    modules = []
    for source in (WINDOW_SWITCH, output):
        namespace = {}
        exec(compile(source, FILENAME, "exec"), namespace)
        modules.append(namespace["FooAttention"](config))
    legacy, ported = modules
    q, k, v, _ = _inputs()
    low = torch.finfo(torch.float32).min
    rows, cols = torch.arange(5)[:, None], torch.arange(5)[None, :]
    full = torch.where(cols <= rows, 0.0, low)[None, None]
    band = torch.where((cols <= rows) & (rows - cols < 2), 0.0, low)[None, None]
    expected = legacy(q, k, v, None)[0]
    torch.testing.assert_close(ported(q, k, v, {"full_attention": full, "sliding_attention": band})[0], expected)
    assert ported.sliding_window == (2 if local else None)


def test_a_causal_buffer_narrowed_without_a_switch_is_refused_where_it_is_built():
    legacy = WINDOW_SWITCH.replace("        if config.local:\n            bias = torch.bitwise_xor", "        bias = torch.bitwise_xor")
    state = check_noop(legacy, RouteAttention, diagnostics=True)
    [diagnostic] = state.diagnostics
    assert "causal buffer `self.bias` is narrowed" in diagnostic.message and "bitwise_xor" in diagnostic.message
    assert diagnostic.symbol == "FooAttention"
    assert diagnostic.line == legacy.splitlines().index("        bias = torch.bitwise_xor(bias, torch.tril(bias, -config.window_size))") + 1


def test_a_causal_buffer_with_an_offset_diagonal_is_refused():
    legacy = WHERE_THEN_SCALE.replace("torch.tril(torch.ones(8, 8, dtype=torch.bool))", "torch.tril(torch.ones(8, 8, dtype=torch.bool), -1)")
    [diagnostic] = check_noop(legacy, RouteAttention, diagnostics=True).diagnostics
    assert "narrowed" in diagnostic.message and "torch.tril" in diagnostic.message


# -- reshape helpers whose callers pass -1 (BART lineage: OPT, XGLM, BioGPT) ------------------
def test_a_reshape_helper_called_with_minus_one_reads_the_head_count_from_the_width():
    from tests.transforms.test_parallel_plans import MODELING, _files
    from transforms.head_shapes import HeadAgnosticShapes

    helper = MODELING.replace(
        "    def forward(self, x, mask=None):",
        "    def _shape(self, tensor, seq_len, bsz):\n"
        "        return tensor.view(bsz, seq_len, self.num_heads, self.head_dim).transpose(1, 2)\n\n"
        "    def forward(self, x, mask=None):",
    ).replace("v = self.gamma(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)", "v = self._shape(self.gamma(x), -1, b)")
    files, state = run_transforms(_files(modeling=helper), HeadAgnosticShapes)
    modeling = files["modeling_odd.py"]
    assert "tensor.view(bsz, seq_len, tensor.size(-1) // self.head_dim, self.head_dim)" in modeling
    assert modeling.count("view(b, t, -1, self.head_dim)") == 2  # forward's own locals: -1 as before
    namespace = {}
    attention = modeling[modeling.index("class OddAttention") : modeling.index("class OddFeedForward")]
    exec(compile("import torch\nfrom torch import nn\n" + attention, "m.py", "exec"), namespace)
    config = SimpleNamespace(hidden_size=16, num_heads=4)
    module = namespace["OddAttention"](config)
    width = 8  # half the heads, as one of two tensor-parallel ranks holds them
    assert module._shape(torch.zeros(2, 3, width), -1, 2).shape == (2, 2, 3, 4)


def test_a_reshape_helper_without_a_head_size_last_is_left_alone():
    from tests.transforms.test_parallel_plans import MODELING, _files
    from transforms.head_shapes import HeadAgnosticShapes

    helper = MODELING.replace(
        "    def forward(self, x, mask=None):",
        "    def _shape(self, tensor, seq_len, bsz):\n"
        "        return tensor.view(bsz, self.num_heads, seq_len, self.head_dim)\n\n"
        "    def forward(self, x, mask=None):",
    ).replace("v = self.gamma(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)", "v = self._shape(self.gamma(x), -1, b)")
    files, _ = run_transforms(_files(modeling=helper), HeadAgnosticShapes)
    assert "tensor.view(bsz, self.num_heads, seq_len, self.head_dim)" in files["modeling_odd.py"]


# -- a softmax chosen by dtype (BART lineage: OPT, XGLM) ---------------------------------------
SOFTMAX_BY_DTYPE = SOFTMAX_MODULE.replace(
    "        probs = SOFTMAX_CALL\n",
    "        if scores.dtype == torch.float16:\n"
    "            probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(torch.float16)\n"
    "        else:\n"
    "            probs = nn.functional.softmax(scores, dim=-1)\n",
)


def test_a_softmax_chosen_by_dtype_is_kept_whole_in_the_eager_function():
    assert "SOFTMAX_CALL" not in SOFTMAX_BY_DTYPE
    output, state = transformed(SOFTMAX_BY_DTYPE, RouteAttention)
    assert not state.diagnostics, [d.render() for d in state.diagnostics]
    eager = output.split("class FooAttention")[0]
    assert "    if scores.dtype == torch.float16:\n        probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32)" in eager
    assert "self.scaling = 1 / 2.0" in output
    q, k, v, mask = _inputs()
    for dtype in (torch.float32, torch.float16):
        args = [t.to(dtype) for t in (q, k, v, mask)]
        _, expected = _run(SOFTMAX_BY_DTYPE, "eager", *args)
        _, ported = _run(output, "eager", *args)
        torch.testing.assert_close(ported, expected, rtol=0, atol=0)
    check_noop(output, RouteAttention)


def test_branches_that_assign_different_names_are_not_a_softmax():
    legacy = SOFTMAX_BY_DTYPE.replace("            probs = nn.functional.softmax(scores, dim=-1)\n",
                                      "            other = nn.functional.softmax(scores, dim=-1)\n")
    assert legacy != SOFTMAX_BY_DTYPE
    [diagnostic] = check_noop(legacy, RouteAttention, diagnostics=True).diagnostics
    assert "softmax" in diagnostic.message and diagnostic.line is not None


# -- fused projections reshaped into blocks by a literal held in a local (CodeGen) ------------
@pytest.mark.parametrize(("bound", "layout"), [({"mp_num": "4"}, "concatenated"), ({}, "reshaped")])
def test_a_block_count_held_in_a_local_is_a_part_axis(bound, layout):
    import libcst as cst

    from porter.parallel import reshape_layout

    call = cst.parse_expression("qkv.reshape(qkv.shape[:-1] + (mp_num, -1))")
    sources = {name: cst.parse_expression(value) for name, value in bound.items()}
    assert reshape_layout(call, sources) == layout


# -- a decoder layer that slices the self-attention pair out of its cache tuple (XGLM) --------
LAYER_SLICE = """\
import torch
from torch import nn
from transformers import PreTrainedModel


class FooAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config

    def forward(self, hidden_states, past_key_value=None):
        key = value = hidden_states
        if past_key_value is not None:
            key = torch.cat([past_key_value[0], key], dim=2)
            value = torch.cat([past_key_value[1], value], dim=2)
        scores = torch.matmul(hidden_states, key.transpose(-1, -2))
        probs = nn.functional.softmax(scores, dim=-1)
        out = torch.matmul(probs, value)
        return out, (key, value)


class FooLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self_attn = FooAttention(config)

    def forward(self, hidden_states, past_key_value=None):
        self_attn_past_key_value = past_key_value[:2] if past_key_value is not None else None
        return self.self_attn(hidden_states, past_key_value=self_attn_past_key_value)


class FooModel(PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.layers = nn.ModuleList([FooLayer(config)])
"""


def test_the_self_attention_slice_of_a_layer_cache_becomes_the_cache_object():
    from transforms.tuple_cache import CacheObjects

    output, state = transformed(LAYER_SLICE, CacheObjects)
    assert "self_attn_past_key_value = past_key_value if past_key_value is not None else None" in output
    assert "FooLayer.forward: `past_key_value[:2]` -> the cache object" in [c.message for c in state.changes]
    compile(output, FILENAME, "exec")


def test_a_layer_without_the_slice_is_left_alone():
    from transforms.tuple_cache import CacheObjects

    layer_only = LAYER_SLICE.replace("past_key_value[:2] if", "past_key_value if")
    output, state = transformed(layer_only, CacheObjects)
    assert "self_attn_past_key_value = past_key_value if" in output
    assert not [c for c in state.changes if "FooLayer" in c.message]


# -- attention that takes `config=None`, built without it (BioGPT, transformers 4.4x BART) ----
OPTIONAL_CONFIG = """\
from torch import nn


class FooAttention(nn.Module):
    def __init__(self, embed_dim, num_heads, dropout=0.0, config=None):
        super().__init__()
        self.config = config

    def forward(self, hidden_states):
        return nn.functional.softmax(hidden_states @ hidden_states.transpose(-1, -2), dim=-1) @ hidden_states


class FooLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self_attn = FooAttention(embed_dim=config.hidden_size, num_heads=config.num_heads)
        self.other_attn = FooAttention(config.hidden_size, config.num_heads, 0.0, config)
"""


def test_attention_taking_an_optional_config_is_given_it_by_its_builders():
    from transforms.attention_config import ThreadAttentionConfig

    output, state = transformed(OPTIONAL_CONFIG, ThreadAttentionConfig)
    assert "FooAttention(embed_dim=config.hidden_size, num_heads=config.num_heads, config=config)" in output
    assert "FooAttention(config.hidden_size, config.num_heads, 0.0, config)" in output  # given positionally
    assert "def __init__(self, embed_dim, num_heads, dropout=0.0, config=None):" in output  # no second parameter
    assert [c.message for c in state.changes] == ["FooLayer.__init__ gives FooAttention the config"]
    check_noop(output, ThreadAttentionConfig)


# -- a query pre-scaled with the module's own `self.scaling` (BART lineage) -------------------
PRESCALED = textwrap.dedent("""\
    import torch
    from torch import nn


    class FooAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.head_dim = 4
            self.scaling = self.head_dim**-0.5
            self.q_proj = nn.Identity()

        def forward(self, query, key, value, attention_mask=None):
            query = self.q_proj(query) * self.scaling
            scores = torch.matmul(query, key.transpose(-1, -2))
            if attention_mask is not None:
                scores = scores + attention_mask
            probs = nn.functional.softmax(scores, dim=-1)
            context = torch.matmul(probs, value)
            context = context.transpose(1, 2).contiguous()
            return context.reshape(*context.shape[:2], -1), probs
""")


def test_a_query_scaled_by_the_modules_own_scaling_is_not_scaled_twice():
    output, state = transformed(PRESCALED, RouteAttention)
    assert not state.diagnostics, [d.render() for d in state.diagnostics]
    assert "self.query_scaling = self.head_dim**-0.5" in output and "self.scaling = 1.0" in output
    assert "query = self.q_proj(query) * self.query_scaling" in output and "scaling=self.scaling," in output
    q, k, v, mask = _inputs()
    _, legacy = _run(PRESCALED, "eager", q, k, v, mask)
    _, ported = _run(output, "eager", q, k, v, mask)
    torch.testing.assert_close(ported, legacy, rtol=0, atol=0)
    check_noop(output, RouteAttention)


def test_a_scaling_attribute_the_math_reads_itself_is_kept():
    legacy = PRESCALED.replace("query = self.q_proj(query) * self.scaling", "query = self.q_proj(query)").replace(
        "scores = torch.matmul(query, key.transpose(-1, -2))", "scores = torch.matmul(query, key.transpose(-1, -2)) * self.scaling"
    )
    output, _ = transformed(legacy, RouteAttention)
    assert "query_scaling" not in output and "self.scaling = self.head_dim**-0.5" in output
