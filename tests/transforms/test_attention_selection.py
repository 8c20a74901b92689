"""AttentionSelection: a config's own `attn_implementation` no longer shadows transformers'."""

from __future__ import annotations

import textwrap

from tests.transforms.helpers import check_noop, run_transforms
from transforms.attention_selection import AttentionSelection

CONFIG = textwrap.dedent("""\
    from transformers.configuration_utils import PretrainedConfig


    class FooConfig(PretrainedConfig):
        model_type = "foo"

        def __init__(self, hidden_size=32, attn_implementation=None, **kwargs):
            self.hidden_size = hidden_size
            self.attn_implementation = attn_implementation
            if self.attn_implementation is None:
                self.attn_implementation = "eager"
            super().__init__(**kwargs)
""")

MODELING = textwrap.dedent("""\
    class FooModel(FooPreTrainedModel):
        def _update_causal_mask(self, attention_mask):
            if self.config.attn_implementation == "flash_attention_2":
                return None
            return attention_mask
""")


def test_config_parameter_dropped_and_reads_use_the_internal_attribute():
    files, state = run_transforms({"configuration_foo.py": CONFIG, "modeling_foo.py": MODELING}, AttentionSelection)
    assert files["configuration_foo.py"] == CONFIG.replace(", attn_implementation=None", "").replace(
        "        self.attn_implementation = attn_implementation\n"
        "        if self.attn_implementation is None:\n"
        '            self.attn_implementation = "eager"\n',
        "",
    )
    assert files["modeling_foo.py"] == MODELING.replace(".attn_implementation", "._attn_implementation")
    for code in files.values():
        compile(code, "<ported>", "exec")
    assert not state.diagnostics and len(state.changes) == 2


def test_ported_config_hands_the_keyword_to_transformers():
    files, _ = run_transforms({"configuration_foo.py": CONFIG}, AttentionSelection)
    namespace: dict = {}
    exec(files["configuration_foo.py"], namespace)
    config = namespace["FooConfig"](attn_implementation="sdpa")
    assert config._attn_implementation == "sdpa"
    assert not hasattr(config, "attn_implementation") or config.attn_implementation != "eager"


def test_noop_without_a_shadowing_config():
    check_noop(MODELING, AttentionSelection)
    check_noop(CONFIG.replace("attn_implementation", "use_flash"), AttentionSelection)
