"""window-layers: a config's sliding_window that only the legacy flash kernel applied is
declared off for transformers' caches; a window the ported code applies is left alone."""

from __future__ import annotations

import textwrap

import pytest
from transformers import PretrainedConfig
from transformers.cache_utils import DynamicCache

from tests.transforms.helpers import check_noop, check_transformed, run_transforms
from transforms.window_layers import FullAttentionLayers

CONFIG = textwrap.dedent("""\
    from transformers import PretrainedConfig


    class BarConfig(PretrainedConfig):
        model_type = "bar"

        def __init__(self, num_hidden_layers=2, sliding_window=4, **kwargs):
            self.num_hidden_layers = num_hidden_layers
            self.sliding_window = sliding_window
            super().__init__(**kwargs)
""")

CONFIG_PORTED = CONFIG + (
    "\n"
    "    @property\n"
    "    def layer_types(self):\n"
    "        # The legacy eager attention never applied `sliding_window` (only its flash kernel did):\n"
    "        # every layer attends to the whole sequence, in transformers' caches too.\n"
    '        return ["full_attention"] * self.num_hidden_layers\n'
)

# The decoder layer only warns about the window; no ported attention reads it.
MODELING_WARNS = textwrap.dedent("""\
    import logging

    from torch import nn

    logger = logging.getLogger(__name__)


    class BarDecoderLayer(nn.Module):
        def __init__(self, config):
            super().__init__()
            if config.sliding_window and config._attn_implementation != "flash_attention_2":
                logger.warning("Sliding Window Attention is enabled but not implemented")
            self.mlp = nn.Linear(4, 4)
""")

# The ported attention passes the window to the interface: the window is applied.
MODELING_APPLIES = textwrap.dedent("""\
    from torch import nn


    class BarAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.sliding_window = getattr(config, "sliding_window", None)
""")


def test_a_window_only_a_message_reads_is_declared_full_attention():
    check_transformed(CONFIG, CONFIG_PORTED, FullAttentionLayers)
    files, state = run_transforms({"configuration_bar.py": CONFIG, "modeling_bar.py": MODELING_WARNS}, FullAttentionLayers)
    assert files["configuration_bar.py"] == CONFIG_PORTED and files["modeling_bar.py"] == MODELING_WARNS
    assert [c.file for c in state.changes] == ["configuration_bar.py"]


def test_the_declared_layers_keep_transformers_caches_whole():
    namespace: dict = {"PretrainedConfig": PretrainedConfig}
    exec(compile(CONFIG_PORTED.replace("model_type = \"bar\"", "model_type = \"bar_window_test\""), "c.py", "exec"), namespace)
    config = namespace["BarConfig"]()
    assert config.sliding_window == 4 and config.layer_types == ["full_attention", "full_attention"]
    assert "layer_types" not in config.to_dict()
    cache = DynamicCache(config=config)
    assert [type(layer).__name__ for layer in cache.layers] == ["DynamicLayer", "DynamicLayer"]


@pytest.mark.parametrize(
    "sources",
    [
        {"configuration_bar.py": CONFIG, "modeling_bar.py": MODELING_APPLIES},
        {"configuration_bar.py": CONFIG_PORTED},
        {"configuration_bar.py": CONFIG.replace("sliding_window=4, ", "").replace("        self.sliding_window = sliding_window\n", "")},
    ],
    ids=["window-applied", "already-declared", "no-window"],
)
def test_configs_left_alone(sources):
    files, state = run_transforms(sources, FullAttentionLayers)
    assert files == {name: textwrap.dedent(text) for name, text in sources.items()}
    assert not state.changes and not state.diagnostics


def test_a_config_without_a_layer_count_is_refused():
    source = CONFIG.replace("num_hidden_layers=2, ", "").replace("        self.num_hidden_layers = num_hidden_layers\n", "")
    state = check_noop(source, FullAttentionLayers, diagnostics=True)
    assert "no num_hidden_layers" in state.diagnostics[0].render()
