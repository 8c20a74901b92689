"""split-fused: a concatenated [q|k|v] projection becomes one nn.Linear per part, found by data flow."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from porter.weights import convert_checkpoint
from tests.transforms.helpers import run_transforms
from transforms.parallel_plans import WriteParallelPlans
from transforms.split_fused import SplitFusedProjections

CONFIG = '''
from transformers import PretrainedConfig


class MixConfig(PretrainedConfig):
    model_type = "mix_test"

    def __init__(self, vocab_size=64, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                 num_hidden_layers=2, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.num_hidden_layers = num_hidden_layers
        super().__init__(**kwargs)
'''

# Names on no list; grouped-query sizes (q wider than k and v) computed in the forward.
MODELING = '''
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from .configuration_mix import MixConfig


class Mixer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.mix = nn.Linear(config.hidden_size, (self.n_head + 2 * self.n_kv) * self.head_dim)
        self.merge = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x):
        b, t, _ = x.shape
        fused = self.mix(x)
        kv_width = self.n_kv * self.head_dim
        q, k, v = fused.split([self.n_head * self.head_dim, kv_width, kv_width], dim=-1)
        q = q.view(b, t, -1, self.head_dim).transpose(1, 2)
        k = k.view(b, t, -1, self.head_dim).transpose(1, 2).repeat_interleave(self.n_head // self.n_kv, dim=1)
        v = v.view(b, t, -1, self.head_dim).transpose(1, 2).repeat_interleave(self.n_head // self.n_kv, dim=1)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.merge(out.transpose(1, 2).reshape(b, t, -1))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_size)
        self.attn = Mixer(config)

    def forward(self, x):
        return x + self.attn(self.norm(x))


class MixModel(PreTrainedModel):
    config_class = MixConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.num_hidden_layers)])
        self.post_init()

    def forward(self, input_ids, **kwargs):
        hidden_states = self.embed(input_ids)
        for block in self.blocks:
            hidden_states = block(hidden_states)
        return BaseModelOutput(last_hidden_state=hidden_states)
'''

CONFIG_JSON = {"vocab_size": 64, "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
               "num_hidden_layers": 2}


def _split(modeling: str, facts: dict | None = None):
    facts = {"config_json": CONFIG_JSON} if facts is None else facts
    files, state = run_transforms({"configuration_mix.py": CONFIG, "modeling_mix.py": modeling},
                                  [SplitFusedProjections, WriteParallelPlans], facts)
    return files["modeling_mix.py"], state


def _mixer(source: str) -> str:
    return source[source.index("class Mixer"): source.index("class Block")]


def test_grouped_query_split_with_its_sizes_becomes_three_projections():
    after, state = _split(MODELING)
    assert _mixer(after) == textwrap.dedent('''\
        class Mixer(nn.Module):
            def __init__(self, config):
                super().__init__()
                self.n_head = config.num_attention_heads
                self.n_kv = config.num_key_value_heads
                self.head_dim = config.hidden_size // config.num_attention_heads
                self.q_proj = nn.Linear(config.hidden_size, self.n_head * self.head_dim)
                self.k_proj = nn.Linear(config.hidden_size, self.n_kv * self.head_dim)
                self.v_proj = nn.Linear(config.hidden_size, self.n_kv * self.head_dim)
                self.merge = nn.Linear(config.hidden_size, config.hidden_size)

            def forward(self, x):
                b, t, _ = x.shape
                kv_width = self.n_kv * self.head_dim
                q = self.q_proj(x)
                k = self.k_proj(x)
                v = self.v_proj(x)
        ''') + _mixer(MODELING).split("kv_width, kv_width], dim=-1)\n", 1)[1]
    compile(after, "modeling_mix.py", "exec")
    [op] = state.weight_ops
    assert (op.kind, op.sizes, op.dim) == ("split", (32, 16, 16), 0)
    plan = state.facts["parallel"]["tp_plan"]
    assert plan == {"blocks.*.attn.q_proj": "colwise", "blocks.*.attn.k_proj": "colwise",
                    "blocks.*.attn.v_proj": "colwise", "blocks.*.attn.merge": "rowwise"}
    assert [c.transform for c in state.changes] == ["split-fused", "parallel-plans"] and not state.diagnostics


def test_chunk_of_the_call_itself_splits_into_equal_parts_without_a_config():
    chunked = MODELING.replace(
        "self.mix = nn.Linear(config.hidden_size, (self.n_head + 2 * self.n_kv) * self.head_dim)",
        "self.mix = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)",
    ).replace(
        """        fused = self.mix(x)
        kv_width = self.n_kv * self.head_dim
        q, k, v = fused.split([self.n_head * self.head_dim, kv_width, kv_width], dim=-1)""",
        "        query, key_states, value = torch.chunk(self.mix(x), 3, dim=-1)",
    ).replace("q = q.view", "q = query.view").replace("k = k.view", "k = key_states.view").replace(
        "v = v.view", "v = value.view")
    after, state = _split(chunked, facts={})
    assert "self.query_proj = nn.Linear(config.hidden_size, (3 * config.hidden_size) // 3, bias=False)" in after
    assert "self.key_proj = nn.Linear(config.hidden_size, (3 * config.hidden_size) // 3, bias=False)" in after
    assert "        query = self.query_proj(x)\n        key_states = self.key_proj(x)\n        value = self.value_proj(x)\n" in after
    assert "self.mix" not in after
    assert state.weight_ops[0].sizes is None  # equal parts: the conversion cuts evenly and checks it


@pytest.mark.parametrize(
    "edit, reason",
    [
        # per-head interleaved: viewed to heads before the split, column-parallel already
        (lambda s: s.replace("q, k, v = fused.split([self.n_head * self.head_dim, kv_width, kv_width], dim=-1)",
                             "q, k, v = fused.view(b, t, -1, 3, self.head_dim).unbind(3)"), None),
        (lambda s: s.replace("kv_width], dim=-1)", "kv_width], dim=0)"), "dimension other than -1"),
        (lambda s: s.replace("        kv_width = self.n_kv", "        print(fused)\n        kv_width = self.n_kv"),
         "read besides one split"),
        (lambda s: s.replace("fused = self.mix(x)", "fused = self.mix(x * 2)"), "input is an expression"),
        (lambda s: s.replace("q, k, v = fused.split([self.n_head * self.head_dim, kv_width, kv_width], dim=-1)",
                             "q, k, v = fused[..., :32], fused[..., 32:48], fused[..., 48:]"), "read besides one split"),
    ],
)
def test_shapes_left_fused(edit, reason):
    before = edit(MODELING)
    after, state = _split(before)
    assert after.split("class MixConfig")[0] == before.split("class MixConfig")[0] and _mixer(after) == _mixer(before)
    assert not state.weight_ops and not [c for c in state.changes if c.transform == "split-fused"]
    notes = " ".join(state.facts["parallel"]["notes"])
    if reason is None:
        assert state.facts["parallel"]["tp_plan"]["blocks.*.attn.mix"] == "colwise"
    else:
        assert reason in notes and state.facts["parallel"]["tp_plan"]["blocks.*.attn.mix"] == "colwise_rep"


def test_sizes_that_config_json_cannot_give_leave_it_fused():
    after, state = _split(MODELING, facts={"config_json": {"hidden_size": 32}})  # head counts from defaults
    assert "self.q_proj" in after and state.weight_ops[0].sizes == (32, 16, 16)
    unknown = MODELING.replace("num_key_value_heads=2,\n", "num_key_value_heads=None,\n")
    _, state = _split(unknown.replace("self.n_kv = config.num_key_value_heads",
                                      "self.n_kv = config.num_key_value_heads or 1"), facts={})
    assert not state.weight_ops and "cannot be computed from config.json" in " ".join(state.facts["parallel"]["notes"])


def test_replicate_fused_keeps_the_code_and_replicates_it():
    after, state = _split(MODELING, facts={"config_json": CONFIG_JSON, "replicate_fused": True})
    assert _mixer(after) == _mixer(MODELING) and not state.weight_ops
    plans = state.facts["parallel"]
    assert plans["tp_plan"]["blocks.*.attn.mix"] == "replicate" and plans["tp_plan"]["blocks.*.attn.merge"] == "rowwise_rep"
    assert "--replicate-fused-qkv" in plans["replicated"]["blocks.*.attn.mix"]
    [change] = [c for c in state.changes if c.transform == "split-fused"]  # in the report without the proof too
    assert "kept fused" in change.message and change.line == 10  # class Mixer


def _import(folder, name):
    sys.path.insert(0, str(folder.parent))
    try:
        for module in [m for m in sys.modules if m == folder.name or m.startswith(folder.name + ".")]:
            del sys.modules[module]
        return importlib.import_module(f"{folder.name}.modeling_mix")
    finally:
        sys.path.remove(str(folder.parent))


def test_split_model_runs_equal_on_weights_split_bit_for_bit(tmp_path):
    after, state = _split(MODELING)
    legacy_dir, ported_dir = tmp_path / "mix_legacy", tmp_path / "mix_ported"
    for folder, modeling in ((legacy_dir, MODELING), (ported_dir, after)):
        folder.mkdir()
        (folder / "__init__.py").write_text("")
        (folder / "configuration_mix.py").write_text(textwrap.dedent(CONFIG))
        (folder / "modeling_mix.py").write_text(textwrap.dedent(modeling))
    legacy_module, ported_module = _import(legacy_dir, "mix"), _import(ported_dir, "mix")
    config = legacy_module.MixConfig(**CONFIG_JSON)
    torch.manual_seed(0)
    legacy = legacy_module.MixModel(config).eval()
    save_file({k: v.contiguous() for k, v in legacy.state_dict().items()}, str(tmp_path / "model.safetensors"))
    out = tmp_path / "converted"
    out.mkdir()
    report = convert_checkpoint([tmp_path / "model.safetensors"], out, ops=state.weight_ops)
    assert report.verified and len(report.split) == 4  # weight and bias of both layers
    converted = load_file(str(out / "model.safetensors"))
    for i in range(2):
        for kind in ("weight", "bias"):
            fused = legacy.state_dict()[f"blocks.{i}.attn.mix.{kind}"]
            for part, rows in zip(("q", "k", "v"), (slice(0, 32), slice(32, 48), slice(48, 64)), strict=True):
                assert torch.equal(converted[f"blocks.{i}.attn.{part}_proj.{kind}"], fused[rows])
    ported = ported_module.MixModel(ported_module.MixConfig(**CONFIG_JSON)).eval()
    missing, unexpected = ported.load_state_dict(converted, strict=True), None
    assert not missing.missing_keys and not missing.unexpected_keys and unexpected is None
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ported(ids).last_hidden_state, legacy(ids).last_hidden_state, rtol=0, atol=1e-5)


def test_cli_option_replicates_instead_of_splitting(tmp_path):
    from click.testing import CliRunner

    from porter.cli import main
    from tests.patterns.builder import build

    repo = build("fused_qkv", tmp_path / "fused_qkv")
    kept = CliRunner().invoke(main, [str(repo), "--diff", "--replicate-fused-qkv"])
    assert kept.exit_code == 0, kept.output
    assert "query_proj" not in kept.output and '"layers.*.self_attn.qkv_proj": "replicate"' in kept.output
    assert '"layers.*.self_attn.o_proj": "rowwise_rep"' in kept.output


def test_an_elementwise_op_between_projection_and_split_keeps_it_concatenated():
    # `fused = fused.clamp(...)` (a clipped qkv) leaves the features where they were: the split
    # after it still cuts [q|k|v], so the projection must not be column-split
    clipped = MODELING.replace("        fused = self.mix(x)\n",
                               "        fused = self.mix(x)\n        if self.n_head:\n"
                               "            fused = fused.clamp(min=-8.0, max=8.0)\n")
    _, state = _split(clipped)
    assert state.facts["parallel"]["tp_plan"]["blocks.*.attn.mix"] == "colwise_rep"
    assert not state.weight_ops  # the split itself reads a rebound name: kept fused, gathered
