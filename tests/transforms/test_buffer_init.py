"""RebuildBuffers: non-persistent buffers are recomputed by _init_weights after meta-device loading."""

from __future__ import annotations

import textwrap

import pytest
import torch

from tests.transforms.helpers import FILENAME, check_idempotent, check_noop, check_transformed, transformed
from transforms.buffer_init import HELPER_CODE, RebuildBuffers

ROTARY = '''\
    import torch
    from torch import nn
    from transformers.modeling_utils import PreTrainedModel


    class FooRotaryEmbedding(nn.Module):
        def __init__(self, dim, max_position_embeddings=16, base=10000, device=None):
            super().__init__()
            self.dim = dim
            inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float().to(device) / dim))
            self.register_buffer("inv_freq", inv_freq, persistent=False)
            self._set_cos_sin_cache(max_position_embeddings, device=self.inv_freq.device)

        def _set_cos_sin_cache(self, seq_len, device):
            t = torch.arange(seq_len, device=device, dtype=self.inv_freq.dtype)
            freqs = torch.outer(t, self.inv_freq)
            emb = torch.cat((freqs, freqs), dim=-1)
            self.register_buffer("cos_cached", emb.cos(), persistent=False)
            self.register_buffer("sin_cached", emb.sin(), persistent=False)


    class FooLinearScalingRotaryEmbedding(FooRotaryEmbedding):
        def __init__(self, dim, max_position_embeddings=16, base=10000, device=None, scaling_factor=1.0):
            self.scaling_factor = scaling_factor
            super().__init__(dim, max_position_embeddings, base, device)

        def _set_cos_sin_cache(self, seq_len, device):
            t = torch.arange(seq_len, device=device, dtype=self.inv_freq.dtype) / self.scaling_factor
            freqs = torch.outer(t, self.inv_freq)
            emb = torch.cat((freqs, freqs), dim=-1)
            self.register_buffer("cos_cached", emb.cos(), persistent=False)
            self.register_buffer("sin_cached", emb.sin(), persistent=False)
'''

ROOT = '''\


    class FooPreTrainedModel(PreTrainedModel):
        def _init_weights(self, module):
            if isinstance(module, nn.Linear):
                module.weight.data.normal_(mean=0.0, std=0.02)
'''

HELPER = "\n\n" + textwrap.indent(HELPER_CODE.lstrip("\n"), "    ")

PORTED = (
    ROTARY.replace(
        "        def __init__(self, dim, max_position_embeddings=16, base=10000, device=None):\n",
        "        def __init__(self, dim, max_position_embeddings=16, base=10000, device=None):\n"
        '            self.__dict__.setdefault("_legacy_init_args", ((dim, max_position_embeddings, base, device), {}))\n',
    ).replace(
        "        def __init__(self, dim, max_position_embeddings=16, base=10000, device=None, scaling_factor=1.0):\n",
        "        def __init__(self, dim, max_position_embeddings=16, base=10000, device=None, scaling_factor=1.0):\n"
        '            self.__dict__.setdefault("_legacy_init_args", ((dim, max_position_embeddings, base, device, scaling_factor), {}))\n',
    )
    + HELPER
    + ROOT.replace(
        "        def _init_weights(self, module):\n",
        "        def _init_weights(self, module):\n            _rebuild_non_persistent_buffers(module)\n"
        '            if all(getattr(p, "_is_hf_initialized", False) for p in module.parameters()):\n'
        "                return\n",
    )
)


def test_init_args_recorded_and_init_weights_rebuilds():
    state = check_transformed(ROTARY + ROOT, PORTED, RebuildBuffers)
    messages = [c.message for c in state.changes]
    assert "FooRotaryEmbedding.__init__ records its arguments to rebuild non-persistent buffers" in messages
    assert "FooLinearScalingRotaryEmbedding.__init__ records its arguments to rebuild non-persistent buffers" in messages
    assert "FooPreTrainedModel._init_weights rebuilds non-persistent buffers" in messages


def test_init_weights_added_when_the_root_has_none():
    root = '''\


    class FooPreTrainedModel(PreTrainedModel):
        config_class = None
    '''
    output, state = transformed(ROTARY + root, RebuildBuffers)
    assert not state.diagnostics
    compile(output, FILENAME, "exec")
    assert output.index("def _rebuild_non_persistent_buffers(") < output.index("class FooPreTrainedModel(")
    assert output.endswith(
        "    def _init_weights(self, module):\n"
        "        super()._init_weights(module)\n"
        "        _rebuild_non_persistent_buffers(module)\n"
    )


def test_keyword_only_and_star_parameters_are_recorded():
    source = '''\
    import torch
    from torch import nn


    class FooBuffers(nn.Module):
        def __init__(self, size, *shape, scale=1.0, **extra):
            super().__init__()
            self.register_buffer("table", torch.ones(size, *shape) * scale, persistent=False)
    '''
    output, _ = transformed(source, RebuildBuffers)
    assert 'self.__dict__.setdefault("_legacy_init_args", ((size, *shape), {"scale": scale, **extra}))\n' in output


def test_running_twice_changes_nothing():
    assert check_idempotent(ROTARY + ROOT, RebuildBuffers) == textwrap.dedent(PORTED)


def test_noop_without_non_persistent_buffers():
    check_noop(
        ROTARY.replace(", persistent=False", "") + ROOT,
        RebuildBuffers,
    )


def _materialised_on_meta(cls, *args, **kwargs):
    """What transformers 5 loading does: build on meta, then give every buffer uninitialised CPU memory."""
    with torch.device("meta"):
        module = cls(*args, **kwargs)
    for name, buffer in list(module._buffers.items()):
        assert buffer.is_meta
        module._buffers[name] = torch.empty_like(buffer, device="cpu")
    return module


@pytest.mark.parametrize(
    ("class_name", "kwargs"),
    [
        ("FooRotaryEmbedding", {"base": 500}),
        ("FooLinearScalingRotaryEmbedding", {"max_position_embeddings": 8, "scaling_factor": 4.0}),
    ],
)
def test_rebuilt_buffers_equal_a_normal_cpu_build(class_name, kwargs):
    output, _ = transformed(ROTARY + ROOT, RebuildBuffers)
    namespace: dict = {}
    exec(compile(output, FILENAME, "exec"), namespace)
    cls = namespace[class_name]

    module = _materialised_on_meta(cls, 8, **kwargs)
    namespace["_rebuild_non_persistent_buffers"](module)
    reference = cls(8, **kwargs)

    assert set(module._non_persistent_buffers_set) == {"inv_freq", "cos_cached", "sin_cached"}
    for name in module._non_persistent_buffers_set:
        assert module._buffers[name].device.type == "cpu"
        assert torch.equal(module._buffers[name], reference._buffers[name]), name


def test_rebound_parameter_is_recorded_as_passed():
    source = '''\
    import torch
    from torch import nn


    class FooNTKRotaryEmbedding(nn.Module):
        def __init__(self, dim, base=10000, scaling_factor=1.0):
            super().__init__()
            base = base * scaling_factor ** (dim / (dim - 2))
            inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
            self.register_buffer("inv_freq", inv_freq, persistent=False)
    '''
    output, _ = transformed(source, RebuildBuffers)
    namespace: dict = {}
    exec(compile(output, FILENAME, "exec"), namespace)
    cls = namespace["FooNTKRotaryEmbedding"]
    module = cls(8, scaling_factor=4.0)
    args, kwargs = module._legacy_init_args
    assert args == (8, 10000, 4.0)
    assert torch.equal(cls(*args, **kwargs).inv_freq, module.inv_freq)


INITIALISED_BY_THE_MODEL = '''\
    import torch
    from torch import nn
    from transformers import initialization as init
    from transformers.modeling_utils import PreTrainedModel


    class FooMixer(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.proj = nn.Linear(4, 4)

        def forward(self, x):
            return self.proj(x) * self.scale


    class FooPreTrainedModel(PreTrainedModel):
        def _init_weights(self, module):
            super()._init_weights(module)
            if isinstance(module, FooModel):
                for mixer in module.mixers:
                    init.copy_(mixer.scale, torch.full((4,), 2.0))


    class FooModel(FooPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.mixers = nn.ModuleList([FooMixer(config) for _ in range(2)])
            for mixer in self.mixers:
                mixer.register_buffer("scale", torch.full((4,), 2.0), persistent=False)
            self.post_init()

        def forward(self, x):
            for mixer in self.mixers:
                x = mixer(x)
            return x
'''


def test_noop_for_a_buffer_the_models_own_init_weights_fills():
    """transformers 5 calls `_init_weights` for buffers the checkpoint lacks: one it writes
    (`init.copy_(mixer.scale, ...)`) needs no rebuild."""
    check_noop(INITIALISED_BY_THE_MODEL, RebuildBuffers)


def test_a_buffer_init_weights_does_not_fill_is_still_rebuilt():
    legacy = INITIALISED_BY_THE_MODEL.replace("init.copy_(mixer.scale, torch.full((4,), 2.0))", "pass")
    _, state = transformed(legacy, RebuildBuffers)
    assert any("FooModel" in c.message for c in state.changes), [c.message for c in state.changes]


HELPER_OBJECT = '''\
    import torch
    from torch import nn


    class FooCacheLayer:
        """Not a module: built by a cache, never on the meta device."""

        def __init__(self, max_len):
            self.max_len = max_len
            self.cumulative_length = torch.tensor([0])

        def update(self, key):
            self.cumulative_length += key.shape[-2]
            return key
'''


def test_noop_for_tensor_attributes_of_a_class_with_no_forward():
    check_noop(HELPER_OBJECT, RebuildBuffers)


def test_tensor_attributes_of_a_module_with_a_forward_are_still_rebuilt():
    module = HELPER_OBJECT.replace("class FooCacheLayer:", "class FooCacheLayer(nn.Module):").replace(
        "            self.max_len = max_len\n", "            super().__init__()\n            self.max_len = max_len\n"
    ).replace("def update(self, key):", "def forward(self, key):")
    _, state = transformed(module, RebuildBuffers)
    assert state.changes and not state.diagnostics
