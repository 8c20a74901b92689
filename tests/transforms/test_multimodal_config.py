"""MultimodalConfigNames: composite configs answer to image_token_id, text_config, vision_config."""

from __future__ import annotations

from tests.transforms.helpers import FILENAME, check_noop, check_transformed, transformed
from transforms.multimodal_config import MultimodalConfigNames

LEGACY = '''\
from transformers import PretrainedConfig


class TowerConfig(PretrainedConfig):
    model_type = "tower"

    def __init__(self, hidden_size=8, **kwargs):
        self.hidden_size = hidden_size
        super().__init__(**kwargs)


class ChatVisionConfig(PretrainedConfig):
    """A composite config."""

    model_type = "chat_vision"

    def __init__(self, visual_config=None, llm_config=None, image_token_index=5, **kwargs):
        self.visual_config = TowerConfig(**(visual_config or {}))
        self.llm_config = TowerConfig(**(llm_config or {}))
        self.image_token_index = image_token_index
        super().__init__(**kwargs)
'''

PORTED = LEGACY.replace(
    '    model_type = "chat_vision"\n',
    '    model_type = "chat_vision"\n'
    '    attribute_map = {"image_token_id": "image_token_index", "text_config": "llm_config", '
    '"vision_config": "visual_config"}\n',
)


def test_aliases_are_added_and_work():
    check_transformed(LEGACY, PORTED, MultimodalConfigNames)
    namespace: dict = {}
    exec(compile(PORTED, FILENAME, "exec"), namespace)
    config = namespace["ChatVisionConfig"](llm_config={"hidden_size": 16}, image_token_index=7)
    assert config.image_token_id == 7
    assert config.text_config.hidden_size == 16 and config.vision_config.hidden_size == 8


def test_existing_attribute_map_is_extended():
    before = LEGACY.replace('    model_type = "chat_vision"\n', '    model_type = "chat_vision"\n    attribute_map = {"n": "m"}\n')
    output, state = transformed(before, MultimodalConfigNames)
    assert '    attribute_map = {"n": "m", "image_token_id": "image_token_index",' in output
    assert output.count("attribute_map") == 1 and not state.diagnostics


def test_noop_on_current_names():
    current = (
        LEGACY.replace("visual_config", "vision_config").replace("llm_config", "text_config")
        .replace("image_token_index", "image_token_id")
    )
    check_noop(current, MultimodalConfigNames)


def test_noop_on_a_config_with_one_nested_config():
    check_noop(LEGACY.replace("        self.llm_config = TowerConfig(**(llm_config or {}))\n", ""), MultimodalConfigNames)


def test_nested_config_of_unknown_role_is_not_aliased():
    output, _ = transformed(LEGACY.replace("llm_config", "extra_config"), MultimodalConfigNames)
    assert '"text_config"' not in output and '"vision_config": "visual_config"' in output


def test_sub_configs_are_declared_so_the_kernel_reaches_every_tower():
    before = LEGACY.replace("TowerConfig(**(visual_config or {}))", "TowerConfig(**visual_config)").replace(
        "TowerConfig(**(llm_config or {}))", "TowerConfig(**llm_config)"
    ).replace("visual_config=None, llm_config=None", "visual_config={}, llm_config={}")
    output, state = transformed(before, MultimodalConfigNames)
    assert '    sub_configs = {"visual_config": TowerConfig, "llm_config": TowerConfig}\n' in output
    namespace: dict = {}
    exec(compile(output, FILENAME, "exec"), namespace)
    config = namespace["ChatVisionConfig"]()
    config._attn_implementation = "sdpa"
    assert config.visual_config._attn_implementation == "sdpa" == config.llm_config._attn_implementation
    again, state = transformed(output, MultimodalConfigNames)
    assert again == output and not state.changes
