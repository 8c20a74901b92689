"""KeyValueHeadsInConfig: the config states the key/value heads the attention computes."""

from __future__ import annotations

from tests.transforms.helpers import run_transforms
from tests.transforms.test_attention_interface import LEGACY as GQA_MODELING
from transforms.attention_interface import RouteAttention
from transforms.kv_heads_config import KeyValueHeadsInConfig

# Written before grouped-query attention: one key/value head per query head, and
# num_key_value_heads never read (transformers 4.30's llama).
MHA_MODELING = (
    GQA_MODELING.replace("        self.num_key_value_heads = config.num_key_value_heads\n", "")
    .replace("        self.num_key_value_groups = self.num_heads // self.num_key_value_heads\n", "")
    .replace("self.num_key_value_heads * self.head_dim", "self.num_heads * self.head_dim")
    .replace("        key_states = repeat_kv(key_states, self.num_key_value_groups)\n", "")
    .replace("        value_states = repeat_kv(value_states, self.num_key_value_groups)\n", "")
)

CONFIG = '''\
from transformers import PretrainedConfig


class FooConfig(PretrainedConfig):
    model_type = "foo"

    def __init__(self, hidden_size=16, num_attention_heads=4, **kwargs):
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        super().__init__(**kwargs)
'''
FOLLOWS = '''\
        super().__init__(**kwargs)
        self.num_key_value_heads = self.num_attention_heads
'''
TRANSFORMS = (RouteAttention, KeyValueHeadsInConfig)


def _port(modeling: str):
    return run_transforms({"modeling_foo.py": modeling, "configuration_foo.py": CONFIG}, TRANSFORMS)


def test_config_of_mha_code_states_its_kv_heads():
    files, state = _port(MHA_MODELING)
    assert files["configuration_foo.py"] == CONFIG.replace("        super().__init__(**kwargs)\n", FOLLOWS)
    assert state.facts["config_json_drop"] == ["num_key_value_heads"]
    [change] = [c for c in state.changes if c.transform == "kv-heads-config"]
    assert change.file == "configuration_foo.py" and change.line == 7
    # The ported config, loaded from a config.json that says 2, describes the 4 heads the code builds.
    namespace = {}
    exec(files["configuration_foo.py"], namespace)
    assert namespace["FooConfig"](num_key_value_heads=2).num_key_value_heads == 4
    again, state = run_transforms(files, KeyValueHeadsInConfig)
    assert again == files and not state.changes


def test_noop_when_the_code_reads_num_key_value_heads():
    files, state = _port(GQA_MODELING)
    assert files["configuration_foo.py"] == CONFIG
    assert not [c for c in state.changes if c.transform == "kv-heads-config"]
    assert "config_json_drop" not in state.facts


def test_noop_when_the_code_broadcasts_fewer_key_heads():
    """Multi-query code keeps one key/value head without reading the config: no claim is made."""
    multi_query = MHA_MODELING.replace(
        "self.k_proj = nn.Linear(self.hidden_size, self.num_heads * self.head_dim, bias=False)",
        "self.k_proj = nn.Linear(self.hidden_size, self.head_dim, bias=False)",
    ).replace(
        "self.v_proj = nn.Linear(self.hidden_size, self.num_heads * self.head_dim, bias=False)",
        "self.v_proj = nn.Linear(self.hidden_size, self.head_dim, bias=False)",
    ).replace(
        "key_states = self.k_proj(hidden_states).view(bsz, q_len, -1, self.head_dim)",
        "key_states = self.k_proj(hidden_states).view(bsz, q_len, 1, self.head_dim)",
    ).replace(
        "value_states = self.v_proj(hidden_states).view(bsz, q_len, -1, self.head_dim)",
        "value_states = self.v_proj(hidden_states).view(bsz, q_len, 1, self.head_dim)",
    ).replace(
        "query_states = self.q_proj(hidden_states).view(bsz, q_len, -1, self.head_dim)",
        "query_states = self.q_proj(hidden_states).view(bsz, q_len, self.num_heads, self.head_dim)",
    )
    files, state = _port(multi_query)
    assert files["configuration_foo.py"] == CONFIG, state.facts.get("kv_groups")
    assert state.facts["kv_groups"] == {"FooAttention": "self.num_heads // 1"}
