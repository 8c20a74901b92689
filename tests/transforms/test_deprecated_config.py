"""DeprecatedConfigReads: config.use_return_dict read as config.return_dict."""

from __future__ import annotations

import logging

import torch
from transformers import PretrainedConfig

from tests.transforms.helpers import check_idempotent, check_noop, check_transformed, run_transforms
from transforms.deprecated_config import DeprecatedConfigReads

LEGACY = '''\
import torch
from torch import nn


class TinyModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.proj = nn.Linear(4, 4)

    def forward(self, x, return_dict=None):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        hidden = self.proj(x)
        if not return_dict:
            return (hidden,)
        return {"last_hidden_state": hidden}
'''

PORTED = LEGACY.replace("self.config.use_return_dict", "self.config.return_dict")


def test_use_return_dict_is_read_as_return_dict():
    state = check_transformed(LEGACY, PORTED, DeprecatedConfigReads)
    assert [c.line for c in state.changes] == [12]
    assert "use_return_dict" in state.changes[0].message
    assert check_idempotent(LEGACY, DeprecatedConfigReads) == PORTED


def _run(source: str, return_dict: bool) -> tuple[object, list[str]]:
    """The model's output for a config with `return_dict`, and the warnings transformers logged."""
    namespace: dict = {}
    exec(compile(source, "modeling_test.py", "exec"), namespace)
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    library = logging.getLogger("transformers")
    logging.Logger.warning_once.cache_clear()  # transformers logs a deprecation once per process
    library.addHandler(handler)
    try:
        output = namespace["TinyModel"](PretrainedConfig(return_dict=return_dict))(torch.randn(2, 4))
    finally:
        library.removeHandler(handler)
    return output, messages


def test_the_ported_model_returns_what_the_setting_says_without_the_deprecation_warning():
    for return_dict, kind in ((True, dict), (False, tuple)):
        legacy, legacy_warnings = _run(LEGACY, return_dict)
        ported, ported_warnings = _run(PORTED, return_dict)
        assert isinstance(legacy, kind) and isinstance(ported, kind)
        assert any("use_return_dict" in m for m in legacy_warnings)  # what the rewrite removes
        assert not any("use_return_dict" in m for m in ported_warnings)


def test_code_that_sets_the_name_itself_keeps_it():
    check_noop(
        '''\
    class Settings:
        def __init__(self, flag):
            self.use_return_dict = flag

        def pick(self, value):
            return value if value is not None else self.use_return_dict
    ''',
        DeprecatedConfigReads,
    )
    check_noop(
        '''\
    class Settings:
        @property
        def use_return_dict(self):
            return False

        def pick(self):
            return self.use_return_dict
    ''',
        DeprecatedConfigReads,
    )


def test_a_definition_in_another_file_keeps_every_read():
    config = '''\
    from transformers import PretrainedConfig


    class TinyConfig(PretrainedConfig):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.use_return_dict = False
    '''
    files, state = run_transforms({"configuration_tiny.py": config, "modeling_tiny.py": LEGACY}, DeprecatedConfigReads)
    assert "self.config.use_return_dict" in files["modeling_tiny.py"]
    assert not state.changes


def test_other_attributes_are_left_alone():
    check_noop(
        '''\
    def pick(config, return_dict=None):
        return return_dict if return_dict is not None else config.return_dict
    ''',
        DeprecatedConfigReads,
    )
