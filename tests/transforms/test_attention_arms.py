"""Attention math split over branches of forward (attention_arms): a fused-kernel arm gives
way to the eager math beside it; math chosen by an input (`if alibi is None: ... else: ...`)
is routed arm by arm, and an arm that cannot be routed is refused through the config switch
that selects it: when the module is built, and for the whole repo if its config selects it."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import pytest
import torch

from tests.transforms.helpers import check_noop, run_transforms
from transforms.attention_interface import RouteAttention

LEGACY = textwrap.dedent("""\
    import math

    import torch
    import torch.nn.functional as F
    from torch import nn
    from transformers import PreTrainedModel


    class BiasedAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.num_heads = config.num_attention_heads
            self.head_dim = config.hidden_size // self.num_heads
            self.inv_norm_factor = 1.0 / math.sqrt(self.head_dim)
            self._use_sdpa = config._attn_implementation == "sdpa"
            self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
            self.dense = nn.Linear(config.hidden_size, config.hidden_size)

        def forward(self, hidden_states, alibi, attention_mask):
            batch_size, query_length, _ = hidden_states.shape
            fused = self.query_key_value(hidden_states).view(batch_size, query_length, 3, self.num_heads, self.head_dim)
            query_layer = fused[:, :, 0].transpose(1, 2).reshape(batch_size, self.num_heads, query_length, self.head_dim)
            key_layer = fused[:, :, 1].transpose(1, 2).reshape(batch_size, self.num_heads, query_length, self.head_dim)
            value_layer = fused[:, :, 2].transpose(1, 2).reshape(batch_size, self.num_heads, query_length, self.head_dim)

            if alibi is None:
                if self._use_sdpa:
                    attn_output = F.scaled_dot_product_attention(query_layer, key_layer, value_layer, attn_mask=attention_mask)
                else:
                    attention_scores = query_layer @ key_layer.transpose(-1, -2)
                    attention_scores /= math.sqrt(self.head_dim)
                    attention_scores = F.softmax(attention_scores + attention_mask, dim=-1, dtype=hidden_states.dtype)
                    attn_output = attention_scores @ value_layer
                attn_output = attn_output.view(batch_size, self.num_heads, query_length, self.head_dim)
                attn_output = attn_output.permute(0, 2, 1, 3)
                attn_output = attn_output.reshape(batch_size, query_length, self.num_heads * self.head_dim)
                return self.dense(attn_output)
            else:
                scores = (query_layer @ key_layer.transpose(-1, -2)).view(batch_size, self.num_heads, query_length, -1)
                logits = (scores + alibi.view(batch_size, self.num_heads, 1, -1)) * self.inv_norm_factor
                probs = F.softmax(logits + attention_mask, dim=-1)
                attn_output = (probs @ value_layer).transpose(1, 2).reshape(batch_size, query_length, -1)
                return self.dense(attn_output)


    class BiasedLayer(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.self_attention = BiasedAttention(config)

        def forward(self, hidden_states, alibi, attention_mask):
            return hidden_states + self.self_attention(hidden_states, alibi=alibi, attention_mask=attention_mask)


    class BiasedModel(PreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.use_alibi = config.alibi
            self.h = nn.ModuleList([BiasedLayer(config) for _ in range(2)])

        def forward(self, hidden_states, attention_mask):
            if self.use_alibi:
                alibi = torch.ones(hidden_states.shape[0] * self.config.num_attention_heads, 1, hidden_states.shape[1])
            else:
                alibi = None
            for block in self.h:
                hidden_states = block(hidden_states, alibi=alibi, attention_mask=attention_mask)
            return hidden_states
""")

PORTED = textwrap.dedent("""\
    import math

    import torch
    import torch.nn.functional as F
    from torch import nn
    from transformers import PreTrainedModel
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
        attention_scores = (query @ key.transpose(-1, -2)) * scaling
        attention_scores = attention_scores + attention_mask
        attention_scores = F.softmax(attention_scores, dim=-1, dtype=query.dtype)
        attn_output = attention_scores @ value
        attn_output = attn_output.transpose(1, 2).contiguous()
        return attn_output, attention_scores


    class BiasedAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.num_heads = config.num_attention_heads
            self.head_dim = config.hidden_size // self.num_heads
            self.inv_norm_factor = 1.0 / math.sqrt(self.head_dim)
            self._use_sdpa = config._attn_implementation == "sdpa"
            self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
            self.dense = nn.Linear(config.hidden_size, config.hidden_size)
            self.scaling = 1 / math.sqrt(self.head_dim)
            self.is_causal = True
            self.num_key_value_groups = 1
            if config.alibi:
                raise NotImplementedError('BiasedAttention: the configuration selects `config.alibi`, which port-model did not port')

        def forward(self, hidden_states, alibi, attention_mask, **kwargs):
            batch_size, query_length, _ = hidden_states.shape
            fused = self.query_key_value(hidden_states).view(batch_size, query_length, 3, self.num_heads, self.head_dim)
            query_layer = fused[:, :, 0].transpose(1, 2).reshape(batch_size, self.num_heads, query_length, self.head_dim)
            key_layer = fused[:, :, 1].transpose(1, 2).reshape(batch_size, self.num_heads, query_length, self.head_dim)
            value_layer = fused[:, :, 2].transpose(1, 2).reshape(batch_size, self.num_heads, query_length, self.head_dim)

            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
            attn_output, attention_scores = attention_interface(
                self,
                query_layer,
                key_layer,
                value_layer,
                attention_mask,
                dropout=0.0,
                scaling=self.scaling,
                **kwargs,
            )
            attn_output = attn_output.reshape(batch_size, query_length, self.num_heads * self.head_dim)
            return self.dense(attn_output)


    class BiasedLayer(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.self_attention = BiasedAttention(config)

        def forward(self, hidden_states, alibi, attention_mask):
            return hidden_states + self.self_attention(hidden_states, alibi=alibi, attention_mask=attention_mask)


    class BiasedModel(PreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.use_alibi = config.alibi
            self.h = nn.ModuleList([BiasedLayer(config) for _ in range(2)])

        def forward(self, hidden_states, attention_mask):
            if self.use_alibi:
                alibi = torch.ones(hidden_states.shape[0] * self.config.num_attention_heads, 1, hidden_states.shape[1])
            else:
                alibi = None
            for block in self.h:
                hidden_states = block(hidden_states, alibi=alibi, attention_mask=attention_mask)
            return hidden_states
""")


def _port(source: str, config_json: dict):
    files, state = run_transforms(source, RouteAttention, facts={"config_json": config_json})
    return next(iter(files.values())), state


def test_the_arm_a_config_switch_selects_is_refused_the_other_routed():
    output, state = _port(LEGACY, {"alibi": False})
    assert output == PORTED
    compile(output, "modeling_test.py", "exec")
    assert not state.diagnostics
    assert any("the branch arm that `config.alibi` selects is not ported" in c.message for c in state.changes)


def test_a_repo_whose_config_selects_the_unrouted_arm_is_refused_with_its_line():
    _, state = _port(LEGACY, {"alibi": True})
    (diagnostic,) = state.diagnostics
    assert diagnostic.line == LEGACY.splitlines().index(
        "            probs = F.softmax(logits + attention_mask, dim=-1)") + 1
    assert "the branch arm that `config.alibi` selects (this repo's config) is not understood" in diagnostic.render()


def test_an_input_branch_not_tied_to_a_config_switch_is_refused():
    """The base model passes a bias it did not build under a switch: which arm runs is not known."""
    legacy = LEGACY.replace("        if self.use_alibi:\n            alibi = torch.ones(", "        alibi = torch.ones(")
    legacy = legacy.replace(
        "\n        else:\n            alibi = None\n        for block", "\n        for block")
    assert "alibi = None" not in legacy
    output, state = _port(legacy, {})
    assert output == legacy
    assert "softmax is not a plain" in state.diagnostics[0].render()


def test_ported_code_is_unchanged_by_a_second_run():
    check_noop(PORTED, RouteAttention)


def _exec(code: str) -> dict:
    namespace: dict = {}
    exec(compile(code, "modeling_test.py", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_the_routed_arm_computes_the_legacy_math(implementation):
    config = SimpleNamespace(hidden_size=32, num_attention_heads=4, alibi=False, _attn_implementation=implementation)
    torch.manual_seed(0)
    legacy = _exec(LEGACY)["BiasedAttention"](config).eval()
    ported = _exec(PORTED)["BiasedAttention"](config).eval()
    ported.load_state_dict(legacy.state_dict())
    blocked = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)
    mask = torch.zeros(5, 5).masked_fill(blocked, torch.finfo(torch.float32).min)[None, None].expand(2, 1, 5, 5)
    hidden = torch.randn(2, 5, 32)
    with torch.no_grad():
        expected, actual = legacy(hidden, None, mask), ported(hidden, None, mask)
    assert torch.allclose(actual, expected, atol=1e-5 if implementation == "sdpa" else 1e-6)


def test_the_refused_switch_stops_the_module_from_being_built():
    config = SimpleNamespace(hidden_size=32, num_attention_heads=4, alibi=True, _attn_implementation="eager")
    with pytest.raises(NotImplementedError, match="config.alibi"):
        _exec(PORTED)["BiasedAttention"](config)


KERNEL_BRANCH = textwrap.dedent("""\
    import torch
    import torch.nn.functional as F
    from torch import nn


    class KernelAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.num_heads = config.num_attention_heads
            self.head_dim = config.hidden_size // self.num_heads
            self.use_sdpa = config._attn_implementation == "sdpa"
            self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)

        def forward(self, hidden_states, attention_mask=None):
            b, n, _ = hidden_states.shape
            q, k, v = self.qkv(hidden_states).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            if self.use_sdpa:
                is_causal = attention_mask is None
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, is_causal=is_causal)
            else:
                scores = torch.matmul(q, k.transpose(-1, -2)) * self.head_dim**-0.5
                if attention_mask is not None:
                    scores = scores + attention_mask
                probs = scores.softmax(dim=-1)
                out = torch.matmul(probs, v)
            out = out.transpose(1, 2).reshape(b, n, -1)
            return out
""")


MATH_FIRST = KERNEL_BRANCH.replace("""\
        if self.use_sdpa:
            is_causal = attention_mask is None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, is_causal=is_causal)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) * self.head_dim**-0.5
            if attention_mask is not None:
                scores = scores + attention_mask
            probs = scores.softmax(dim=-1)
            out = torch.matmul(probs, v)
""", """\
        if not self.use_sdpa:
            scores = torch.matmul(q, k.transpose(-1, -2)) * self.head_dim**-0.5
            if attention_mask is not None:
                scores = scores + attention_mask
            probs = scores.softmax(dim=-1)
            out = torch.matmul(probs, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, is_causal=attention_mask is None)
""")
assert MATH_FIRST != KERNEL_BRANCH


@pytest.mark.parametrize("legacy_code", [KERNEL_BRANCH, MATH_FIRST], ids=["kernel-first", "math-first"])
def test_a_fused_kernel_arm_gives_way_to_the_eager_math(legacy_code):
    assert "scaled_dot_product_attention" in legacy_code and legacy_code.count("softmax") == 1
    output, state = _port(legacy_code, {})
    assert not state.diagnostics
    assert "scaled_dot_product_attention" not in output and "self.use_sdpa" not in output.split("def forward")[1]
    assert "probs = scores.softmax(dim=-1)" in output.split("class KernelAttention")[0]  # in the eager function
    config = SimpleNamespace(hidden_size=32, num_attention_heads=4, _attn_implementation="eager")
    torch.manual_seed(0)
    legacy = _exec(legacy_code)["KernelAttention"](config).eval()
    ported = _exec(output)["KernelAttention"](config).eval()
    ported.load_state_dict(legacy.state_dict())
    hidden = torch.randn(2, 5, 32)
    with torch.no_grad():
        assert torch.allclose(ported(hidden), legacy(hidden), atol=1e-6)


def test_a_kernel_arm_that_binds_what_later_code_reads_is_left_alone():
    legacy = KERNEL_BRANCH.replace("        return out\n", "        return out, is_causal\n")
    assert "return out, is_causal" in legacy
    output, state = _port(legacy, {})
    assert output == legacy
    assert state.diagnostics
