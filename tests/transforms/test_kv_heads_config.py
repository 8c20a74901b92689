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


def _multi_query(modeling: str, kv_heads: str) -> str:
    """`modeling` with one key/value projection of `kv_heads` heads, broadcast in the math."""
    return modeling.replace(
        "self.k_proj = nn.Linear(self.hidden_size, self.num_heads * self.head_dim, bias=False)",
        f"self.k_proj = nn.Linear(self.hidden_size, {kv_heads} * self.head_dim, bias=False)",
    ).replace(
        "self.v_proj = nn.Linear(self.hidden_size, self.num_heads * self.head_dim, bias=False)",
        f"self.v_proj = nn.Linear(self.hidden_size, {kv_heads} * self.head_dim, bias=False)",
    ).replace(
        "key_states = self.k_proj(hidden_states).view(bsz, q_len, -1, self.head_dim)",
        f"key_states = self.k_proj(hidden_states).view(bsz, q_len, {kv_heads}, self.head_dim)",
    ).replace(
        "value_states = self.v_proj(hidden_states).view(bsz, q_len, -1, self.head_dim)",
        f"value_states = self.v_proj(hidden_states).view(bsz, q_len, {kv_heads}, self.head_dim)",
    ).replace(
        "query_states = self.q_proj(hidden_states).view(bsz, q_len, -1, self.head_dim)",
        "query_states = self.q_proj(hidden_states).view(bsz, q_len, self.num_heads, self.head_dim)",
    )


def test_multi_query_code_states_its_one_key_head():
    """Multi-query code keeps one key/value head without reading the config: the config says so,
    since engines and continuous batching size the cache from it (CONTRACT C5)."""
    files, state = _port(_multi_query(MHA_MODELING, "1"))
    assert state.facts["kv_groups"] == {"FooAttention": "self.num_heads // 1"}
    assert files["configuration_foo.py"] == CONFIG.replace(
        "        super().__init__(**kwargs)\n", "        super().__init__(**kwargs)\n        self.num_key_value_heads = 1\n"
    )
    assert state.facts["config_json_drop"] == ["num_key_value_heads"]


def test_key_heads_chosen_by_a_config_switch_are_stated_in_config_terms():
    """`self.num_kv_heads = 1 if self.multi_query else self.num_heads` in the attention: the
    config computes the same from its own attributes."""
    modeling = _multi_query(MHA_MODELING, "self.num_kv_heads").replace(
        "        self.head_dim = ",
        "        self.multi_query = config.multi_query\n"
        "        self.num_kv_heads = 1 if self.multi_query else self.num_heads\n        self.head_dim = ",
        1,
    )
    config = CONFIG.replace("num_attention_heads=4, **kwargs", "num_attention_heads=4, multi_query=True, **kwargs").replace(
        "        super().__init__(**kwargs)\n", "        self.multi_query = multi_query\n        super().__init__(**kwargs)\n"
    )
    files, state = run_transforms({"modeling_foo.py": modeling, "configuration_foo.py": config}, TRANSFORMS)
    assert "self.multi_query = config.multi_query" in modeling
    stated = "        self.num_key_value_heads = (1 if self.multi_query else self.num_attention_heads)\n"
    assert files["configuration_foo.py"] == config + stated
    namespace = {}
    exec(files["configuration_foo.py"], namespace)
    assert namespace["FooConfig"](num_key_value_heads=4).num_key_value_heads == 1
    assert namespace["FooConfig"](multi_query=False).num_key_value_heads == 4
    again, state = run_transforms(files, KeyValueHeadsInConfig)
    assert again == files and not state.changes
