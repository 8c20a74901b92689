"""Attention math written with `torch.einsum` and a softmax of an expression: the scores get
their own statements (scale folded into `scaling`, mask added), and the einsum stays in the
eager function when its subscripts take q, k and v as `[batch, heads, seq, head_dim]`."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import pytest
import torch

from tests.transforms.helpers import FILENAME, check_noop, check_transformed, transformed
from transforms.attention_interface import RouteAttention

EINSUM_LEGACY = textwrap.dedent("""\
    import torch
    from torch import nn


    class EinAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.num_heads = config.num_attention_heads
            self.head_dim = config.hidden_size // self.num_heads
            self.scale = self.head_dim**-0.5
            self.to_qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
            self.to_out = nn.Linear(config.hidden_size, config.hidden_size)

        def forward(self, x, attention_mask=None):
            b, n, _ = x.shape
            q, k, v = self.to_qkv(x).chunk(3, dim=-1)
            q = q.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
            k = k.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
            v = v.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

            dots = torch.einsum("bhid,bhjd->bhij", q, k)
            attn = (dots * self.scale + attention_mask).softmax(dim=-1)
            out = torch.einsum("bhij,bhjd->bhid", attn, v)
            out = out.transpose(1, 2).reshape(b, n, -1)
            return self.to_out(out), attn
""")

EINSUM_PORTED = textwrap.dedent("""\
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
        dots = torch.einsum("bhid,bhjd->bhij", query, key) * scaling
        dots = dots + attention_mask
        attn = dots.softmax(dim=-1)
        attn_output = torch.einsum("bhij,bhjd->bhid", attn, value)
        attn_output = attn_output.transpose(1, 2).contiguous()
        return attn_output, attn


    class EinAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.num_heads = config.num_attention_heads
            self.head_dim = config.hidden_size // self.num_heads
            self.scale = self.head_dim**-0.5
            self.to_qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
            self.to_out = nn.Linear(config.hidden_size, config.hidden_size)
            self.scaling = self.scale
            self.is_causal = True
            self.num_key_value_groups = 1

        def forward(self, x, attention_mask=None, **kwargs):
            b, n, _ = x.shape
            q, k, v = self.to_qkv(x).chunk(3, dim=-1)
            q = q.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
            k = k.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
            v = v.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
            out, attn = attention_interface(
                self,
                q,
                k,
                v,
                attention_mask,
                dropout=0.0,
                scaling=self.scaling,
                **kwargs,
            )
            out = out.reshape(b, n, -1)
            return self.to_out(out), attn
""")


def _exec(code: str) -> dict:
    namespace: dict = {}
    exec(compile(code, FILENAME, "exec"), namespace)
    return namespace


def _config(implementation: str) -> SimpleNamespace:
    return SimpleNamespace(hidden_size=32, num_attention_heads=4, _attn_implementation=implementation)


def _causal_mask(batch: int, length: int) -> torch.Tensor:
    blocked = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
    mask = torch.zeros(length, length).masked_fill(blocked, torch.finfo(torch.float32).min)
    return mask[None, None].expand(batch, 1, length, length)


def _same_output(legacy_code: str, ported_code: str, implementation: str, cls: str = "EinAttention") -> bool:
    torch.manual_seed(0)
    legacy = _exec(legacy_code)[cls](_config("eager")).eval()
    ported = _exec(ported_code)[cls](_config(implementation)).eval()
    ported.load_state_dict(legacy.state_dict())
    hidden, mask = torch.randn(2, 6, 32), _causal_mask(2, 6)
    with torch.no_grad():
        expected, actual = legacy(hidden, mask)[0], ported(hidden, mask)[0]
    return torch.allclose(actual, expected, atol=1e-5 if implementation == "sdpa" else 1e-6)


def test_einsum_scores_and_softmax_expression_are_routed():
    check_transformed(EINSUM_LEGACY, EINSUM_PORTED, RouteAttention)


def test_einsum_ported_code_is_unchanged_by_a_second_run():
    check_noop(EINSUM_PORTED, RouteAttention)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_einsum_module_computes_the_legacy_math(implementation):
    assert _same_output(EINSUM_LEGACY, EINSUM_PORTED, implementation)


@pytest.mark.parametrize(
    "subscripts",
    ['"...id,...jd->...ij", q, k)', '"bhqd, bhkd -> bhqk", q, k)'],
)
def test_other_spellings_of_the_same_product_are_routed(subscripts):
    legacy = EINSUM_LEGACY.replace('"bhid,bhjd->bhij", q, k)', subscripts)
    output, state = transformed(legacy, RouteAttention)
    assert not state.diagnostics, [d.render() for d in state.diagnostics]
    assert "attention_interface(" in output


def test_einsum_with_heads_after_the_sequence_is_refused_with_its_line():
    """`bqhd` operands are not the interface's layout: refused, never guessed."""
    legacy = EINSUM_LEGACY.replace('"bhid,bhjd->bhij", q, k)', '"bihd,bjhd->bhij", q, k)')
    output, state = transformed(legacy, RouteAttention)
    assert output == legacy
    assert [d.line for d in state.diagnostics] == [22]
    assert "einsum 'bihd,bjhd->bhij' is not the attention product the interface takes" in state.diagnostics[0].render()


# -- softmax of an expression -------------------------------------------------------------
MATMUL_LEGACY = EINSUM_LEGACY.replace(
    '        dots = torch.einsum("bhid,bhjd->bhij", q, k)\n'
    "        attn = (dots * self.scale + attention_mask).softmax(dim=-1)\n",
    "        dots = torch.matmul(q, k.transpose(-1, -2))\n"
    "        if attention_mask is not None:\n"
    "            dots = dots + attention_mask\n"
    "        attn = torch.softmax(dots / (self.head_dim**0.5), dim=-1)\n",
).replace('out = torch.einsum("bhij,bhjd->bhid", attn, v)', "out = attn @ v")


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_a_scale_inside_the_softmax_after_the_mask_folds_into_scaling(implementation):
    """A mask commutes with a rescale (its blocked entries stay blocked), so sdpa gets the scale."""
    output, state = transformed(MATMUL_LEGACY, RouteAttention)
    assert not state.diagnostics
    assert "        self.scaling = 1 / (self.head_dim**0.5)\n" in output
    assert "    dots = dots / " not in output
    assert _same_output(MATMUL_LEGACY, output, implementation)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_a_softmax_of_the_whole_product_is_split(implementation):
    legacy = EINSUM_LEGACY.replace(
        '        dots = torch.einsum("bhid,bhjd->bhij", q, k)\n'
        "        attn = (dots * self.scale + attention_mask).softmax(dim=-1)\n",
        "        attn = torch.softmax(q @ k.transpose(-2, -1) * self.scale + attention_mask, dim=-1, dtype=torch.float32)\n",
    )
    output, state = transformed(legacy, RouteAttention)
    assert not state.diagnostics
    assert "    attn = (query @ key.transpose(-2, -1)) * scaling\n    attn = attn + attention_mask\n" in output
    assert _same_output(legacy, output, implementation)


def test_scores_read_again_after_a_softmax_of_an_expression_are_refused():
    """Rebinding the scores to the biased ones would change what the later read sees."""
    legacy = EINSUM_LEGACY.replace("        return self.to_out(out), attn\n", "        return self.to_out(out), dots\n")
    output, state = transformed(legacy, RouteAttention)
    assert output == legacy
    assert "softmax of an expression whose scores `dots` are read again after it" in state.diagnostics[0].render()


def test_a_plain_softmax_is_not_split():
    """Already a `name = softmax(name)` statement (a dtype cast included): nothing is added."""
    legacy = MATMUL_LEGACY.replace(
        "        attn = torch.softmax(dots / (self.head_dim**0.5), dim=-1)\n",
        "        attn = torch.softmax(dots.float(), dim=-1).type_as(dots)\n",
    )
    output, state = transformed(legacy, RouteAttention)
    assert not state.diagnostics
    assert "    attn = torch.softmax(dots.float(), dim=-1).type_as(dots)\n" in output
    assert "    dots = dots.float()" not in output
