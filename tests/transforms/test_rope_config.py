"""RopeConfigAccess: legacy rope_scaling tests keep their meaning under transformers 5."""

from __future__ import annotations

import pytest

from tests.transforms.helpers import check_noop, check_transformed, transformed
from transforms.rope_config import RopeConfigAccess


def test_is_none_is_not_none_and_type_subscript():
    state = check_transformed(
        '''\
    from torch import nn


    class FooAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            if config.rope_scaling is None:
                self.rotary_emb = FooRotaryEmbedding(config.head_dim)
            else:
                scaling_type = self.config.rope_scaling["type"]
                factor = config.rope_scaling["factor"]
                self.rotary_emb = FooScaledRotaryEmbedding(config.head_dim, scaling_type, factor)
            self.use_scaling = config.rope_scaling is not None
    ''',
        '''\
    from torch import nn


    class FooAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            if (config.rope_scaling is None or config.rope_scaling.get("type", config.rope_scaling.get("rope_type")) == "default"):
                self.rotary_emb = FooRotaryEmbedding(config.head_dim)
            else:
                scaling_type = self.config.rope_scaling.get("type", self.config.rope_scaling.get("rope_type"))
                factor = config.rope_scaling["factor"]
                self.rotary_emb = FooScaledRotaryEmbedding(config.head_dim, scaling_type, factor)
            self.use_scaling = not (config.rope_scaling is None or config.rope_scaling.get("type", config.rope_scaling.get("rope_type")) == "default")
    ''',
        RopeConfigAccess,
    )
    assert len(state.changes) == 3


@pytest.mark.parametrize(
    ("rope_scaling", "legacy_absent"),
    [
        (None, True),
        ({"rope_type": "default", "rope_theta": 10000.0}, True),  # what transformers 5 fills in
        ({"type": "linear", "factor": 2.0}, False),
        ({"rope_type": "dynamic", "factor": 2.0}, False),
    ],
)
def test_rewritten_tests_evaluate_like_legacy_configs(rope_scaling, legacy_absent):
    output, _ = transformed(
        "absent = config.rope_scaling is None\npresent = config.rope_scaling is not None\n", RopeConfigAccess
    )
    namespace = {"config": type("Config", (), {"rope_scaling": rope_scaling})()}
    exec(output, namespace)
    assert namespace["absent"] is legacy_absent
    assert namespace["present"] is (not legacy_absent)


def test_type_subscript_reads_rope_type():
    output, _ = transformed('kind = config.rope_scaling["type"]\n', RopeConfigAccess)
    namespace = {"config": type("Config", (), {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})()}
    exec(output, namespace)
    assert namespace["kind"] == "yarn"


def test_noop():
    check_noop(
        '''\
    def rope_kind(config):
        if config.rope_scaling == {}:
            return None
        factor = config.rope_scaling["factor"]
        theta = config.rope_theta if config.rope_theta is not None else 10000.0
        return config.rope_scaling.get("rope_type", "default"), factor, theta
    ''',
        RopeConfigAccess,
    )


def test_type_subscript_assignment_still_compiles():
    output, _ = transformed('config.rope_scaling["type"] = config.rope_scaling["rope_type"]\n', RopeConfigAccess)
    compile(output, "configuration_test.py", "exec")
