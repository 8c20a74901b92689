"""Compatibility shims: what transformers 5 removed and legacy remote code still uses.

Only for `--reference current`, where the legacy code runs under the installed
transformers because it cannot run in its own release. `runner.py` imports this file and
calls `install()` before any repo code is imported. Each shim restores one name or one
behaviour of transformers 4.x, and only when the running transformers lacks it; `install()`
returns the names of the shims it installed, which the report lists. A reference run
through shims is weaker than one in the code's own release: the shims are
reimplementations, not the code the model was written against.

Shims never guess a replacement for something that computes differently (`HybridCache`,
`SinkCache` and `OffloadedCache` import, but using one raises). The list is documented in
docs/reference-shims.md. This file runs inside the child, beside runner.py, so it imports
nothing from port-model. The restored functions follow transformers 4.x (Apache-2.0).
"""

import functools
import importlib
import sys
import types

SHIMS = []  # (name, what it restores, install function returning whether it installed)


def shim(name, restores):
    def register(function):
        SHIMS.append((name, restores, function))
        return function

    return register


def install():
    """Install every shim the running transformers needs; returns their names."""
    return [name for name, _, function in SHIMS if function()]


def _set_missing(module_names, name, value):
    """Set `name` on each module that lacks it; whether any did."""
    installed = False
    for module_name in module_names:
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            setattr(module, name, value)
            installed = True
    return installed


def _add_module(name, **attributes):
    """Register a module that no longer exists, with `attributes`; whether it was missing."""
    try:
        importlib.import_module(name)
        return False
    except ImportError:
        pass
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    setattr(importlib.import_module(parent), child, module)
    return True


# -- imports that are gone --------------------------------------------------------------------
@shim("is_torch_fx_available", "transformers.utils(.import_utils).is_torch_fx_available() -> True")
def _is_torch_fx_available():
    return _set_missing(("transformers.utils.import_utils", "transformers.utils"), "is_torch_fx_available", lambda: True)


@shim("is_torch_sdpa_available", "transformers.utils(.import_utils).is_torch_sdpa_available() -> True")
def _is_torch_sdpa_available():
    names = ("transformers.utils.import_utils", "transformers.utils")
    return _set_missing(names, "is_torch_sdpa_available", lambda: True)


class _ExportOnly:
    """Stands for an ONNX export config class: subclassing works, using one raises."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("transformers.onnx was removed in transformers 5 (shimmed for import only)")


@shim("transformers.onnx", "module transformers.onnx: OnnxConfig, OnnxConfigWithPast, OnnxSeq2SeqConfigWithPast, "
      "PatchingSpec (import only; using one raises)")
def _onnx():
    classes = {n: type(n, (_ExportOnly,), {}) for n in ("OnnxConfig", "OnnxConfigWithPast", "OnnxSeq2SeqConfigWithPast")}
    return _add_module("transformers.onnx", PatchingSpec=type("PatchingSpec", (), {}), **classes)


def assert_device_map(device_map, num_blocks):
    blocks = [b for sub in device_map.values() for b in sub]
    if sorted(blocks) != list(range(num_blocks)):
        raise ValueError(f"device_map must name each of the {num_blocks} blocks once, got {device_map}")


def get_device_map(n_layers, devices):
    per_device = -(-n_layers // len(devices))
    layers = list(range(n_layers))
    return dict(zip(devices, [layers[i : i + per_device] for i in range(0, n_layers, per_device)], strict=False))


@shim("model_parallel_utils", "module transformers.utils.model_parallel_utils: assert_device_map, get_device_map")
def _model_parallel_utils():
    return _add_module(
        "transformers.utils.model_parallel_utils", assert_device_map=assert_device_map, get_device_map=get_device_map
    )


def find_pruneable_heads_and_indices(heads, n_heads, head_size, already_pruned_heads):
    import torch

    mask = torch.ones(n_heads, head_size)
    heads = set(heads) - already_pruned_heads
    for head in heads:
        head = head - sum(1 if h < head else 0 for h in already_pruned_heads)
        mask[head] = 0
    mask = mask.view(-1).contiguous().eq(1)
    return heads, torch.arange(len(mask))[mask].long()


def prune_conv1d_layer(layer, index, dim=1):
    from transformers.pytorch_utils import Conv1D

    index = index.to(layer.weight.device)
    weight = layer.weight.index_select(dim, index).clone().detach()
    bias = layer.bias.clone().detach() if dim == 0 else layer.bias[index].clone().detach()
    size = list(layer.weight.size())
    size[dim] = len(index)
    new_layer = Conv1D(size[1], size[0]).to(layer.weight.device)
    new_layer.weight.requires_grad = False
    new_layer.weight.copy_(weight.contiguous())
    new_layer.weight.requires_grad = True
    new_layer.bias.requires_grad = False
    new_layer.bias.copy_(bias.contiguous())
    new_layer.bias.requires_grad = True
    return new_layer


@shim("pruning helpers", "transformers.pytorch_utils.find_pruneable_heads_and_indices, prune_conv1d_layer")
def _pruning():
    found = _set_missing(("transformers.pytorch_utils",), "find_pruneable_heads_and_indices",
                         find_pruneable_heads_and_indices)
    return _set_missing(("transformers.pytorch_utils",), "prune_conv1d_layer", prune_conv1d_layer) or found


def apply_chunking_to_forward(forward_fn, chunk_size, chunk_dim, *input_tensors):
    import torch

    if chunk_size > 0:
        chunks = input_tensors[0].shape[chunk_dim] // chunk_size
        pieces = zip(*(t.chunk(chunks, dim=chunk_dim) for t in input_tensors), strict=True)
        return torch.cat([forward_fn(*piece) for piece in pieces], dim=chunk_dim)
    return forward_fn(*input_tensors)


def _sequence_summary_class():
    from torch import nn

    class SequenceSummary(nn.Module):
        """A single vector from a sequence of hidden states (transformers 4.x `SequenceSummary`)."""

        def __init__(self, config):
            super().__init__()
            self.summary_type = getattr(config, "summary_type", "last")
            self.summary = nn.Identity()
            if getattr(config, "summary_use_proj", False):
                proj_to_labels = getattr(config, "summary_proj_to_labels", False) and config.num_labels > 0
                size = config.num_labels if proj_to_labels else config.hidden_size
                self.summary = nn.Linear(config.hidden_size, size)
            activation = getattr(config, "summary_activation", None)
            self.activation = nn.Tanh() if activation == "tanh" else nn.Identity()
            first = getattr(config, "summary_first_dropout", 0)
            last = getattr(config, "summary_last_dropout", 0)
            self.first_dropout = nn.Dropout(first) if first > 0 else nn.Identity()
            self.last_dropout = nn.Dropout(last) if last > 0 else nn.Identity()

        def forward(self, hidden_states, cls_index=None):
            if self.summary_type == "last":
                output = hidden_states[:, -1]
            elif self.summary_type == "first":
                output = hidden_states[:, 0]
            elif self.summary_type == "mean":
                output = hidden_states.mean(dim=1)
            elif self.summary_type == "cls_index":
                import torch

                if cls_index is None:
                    cls_index = torch.full_like(hidden_states[..., :1, :], hidden_states.shape[-2] - 1, dtype=torch.long)
                else:
                    cls_index = cls_index.unsqueeze(-1).unsqueeze(-1)
                    cls_index = cls_index.expand((-1,) * (cls_index.dim() - 1) + (hidden_states.size(-1),))
                output = hidden_states.gather(-2, cls_index).squeeze(-2)
            else:
                raise NotImplementedError(f"summary_type {self.summary_type!r}")
            output = self.first_dropout(output)
            output = self.summary(output)
            output = self.activation(output)
            return self.last_dropout(output)

    return SequenceSummary


@shim("modeling_utils helpers", "transformers.modeling_utils.apply_chunking_to_forward, SequenceSummary")
def _modeling_utils_helpers():
    found = _set_missing(("transformers.modeling_utils", "transformers.pytorch_utils"), "apply_chunking_to_forward",
                         apply_chunking_to_forward)
    return _set_missing(("transformers.modeling_utils",), "SequenceSummary", _sequence_summary_class()) or found


@shim("LossKwargs", "transformers(.utils).LossKwargs: an empty TypedDict, as in 4.x")
def _loss_kwargs():
    from typing import TypedDict

    class LossKwargs(TypedDict, total=False):
        pass

    return _set_missing(("transformers.utils.generic", "transformers.utils", "transformers"), "LossKwargs", LossKwargs)


@shim("removed cache classes", "transformers(.cache_utils).HybridCache, SinkCache, OffloadedCache "
      "(import only; creating one raises)")
def _removed_caches():
    installed = False
    for name in ("HybridCache", "SinkCache", "OffloadedCache"):

        def refuse(self, *args, _name=name, **kwargs):
            raise NotImplementedError(f"{_name} was removed in transformers 5 (shimmed for import only)")

        cls = type(name, (), {"__init__": refuse})
        installed = _set_missing(("transformers.cache_utils", "transformers"), name, cls) or installed
    return installed


# -- APIs that are gone -----------------------------------------------------------------------
@shim("GenerationMixin for legacy heads", "a model class that defines prepare_inputs_for_generation but does not "
      "inherit GenerationMixin gets it appended to its bases, as every PreTrainedModel had it in 4.x; its "
      "prepare_inputs_for_generation is not given the position_ids that generate makes since 5.x (4.x generate "
      "made none, and legacy code uses them unsliced)")
def _generation_mixin():
    from transformers import GenerationMixin, PreTrainedModel

    if issubclass(PreTrainedModel, GenerationMixin) or getattr(PreTrainedModel, "_port_model_shimmed", False):
        return False
    original = PreTrainedModel.__dict__["__init_subclass__"].__func__

    def __init_subclass__(cls, **kwargs):
        original(cls, **kwargs)
        legacy_prepare = cls.__dict__.get("prepare_inputs_for_generation")
        if legacy_prepare is None or issubclass(cls, GenerationMixin):
            return
        cls.__bases__ = (*cls.__bases__, GenerationMixin)

        @functools.wraps(legacy_prepare)  # generate validates its keywords against this signature
        def prepare_inputs_for_generation(self, *args, **kwargs):
            kwargs.pop("position_ids", None)
            return legacy_prepare(self, *args, **kwargs)

        cls.prepare_inputs_for_generation = prepare_inputs_for_generation
        if not getattr(cls, "_supports_cache_class", False):  # tuple caches: generate must not pass a Cache
            cls._supports_default_dynamic_cache = classmethod(lambda klass: False)

    PreTrainedModel.__init_subclass__ = classmethod(__init_subclass__)
    PreTrainedModel._port_model_shimmed = True
    return True


@shim("loaded weights kept from legacy _init_weights", "a legacy _init_weights that writes parameters directly "
      "(p.data.normal_(...)) no longer overwrites weights loaded from the checkpoint: 4.x initialised before "
      "loading, 5.x after")
def _keep_loaded_weights():
    from transformers import PreTrainedModel

    if getattr(PreTrainedModel, "_port_model_keeps_loaded", False):
        return False
    original = PreTrainedModel.__dict__["__init_subclass__"].__func__

    def __init_subclass__(cls, **kwargs):
        original(cls, **kwargs)
        legacy_init = cls.__dict__.get("_init_weights")
        if legacy_init is None:
            return

        @functools.wraps(legacy_init)
        def _init_weights(self, module):
            loaded = [(p, p.detach().clone()) for p in module.parameters() if getattr(p, "_is_hf_initialized", False)]
            legacy_init(self, module)
            for parameter, value in loaded:
                parameter.data.copy_(value)

        cls._init_weights = _init_weights

    PreTrainedModel.__init_subclass__ = classmethod(__init_subclass__)
    PreTrainedModel._port_model_keeps_loaded = True
    return True


def _rebuild_volatile_tensors(model):
    """Copy non-persistent buffers and tensors kept as plain attributes from a model built
    the 4.x way (its __init__ run on the CPU), since 5.x leaves them uninitialised."""
    import torch

    with torch.no_grad(), torch.device("cpu"):
        fresh = type(model)(model.config)
    for name, module in model.named_modules():
        source = fresh.get_submodule(name)
        for buffer in module._non_persistent_buffers_set:
            if module._buffers.get(buffer) is not None:
                module._buffers[buffer] = source._buffers[buffer].to(module._buffers[buffer].device)
        for attribute, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and value.is_meta:
                setattr(module, attribute, getattr(source, attribute))


@shim("non-persistent buffers as 4.x built them", "after from_pretrained, non-persistent buffers (rotary "
      "frequencies, cos/sin and causal-mask caches) and tensors kept as plain attributes are copied from the "
      "model built by its own __init__ on the CPU, as 4.x loading kept them; costs a second copy of the model")
def _volatile_tensors():
    from transformers import PreTrainedModel

    if getattr(PreTrainedModel, "_port_model_rebuilds", False):
        return False
    original = PreTrainedModel.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        result = original(cls, *args, **kwargs)
        _rebuild_volatile_tensors(result[0] if isinstance(result, tuple) else result)
        return result

    PreTrainedModel.from_pretrained = classmethod(from_pretrained)
    PreTrainedModel._port_model_rebuilds = True
    return True


def get_extended_attention_mask(self, attention_mask, input_shape, device=None, dtype=None):
    import torch

    dtype = dtype or self.dtype
    if attention_mask.dim() == 3:
        extended = attention_mask[:, None, :, :]
    elif attention_mask.dim() == 2 and getattr(self.config, "is_decoder", False):
        batch_size, seq_length = input_shape
        seq_ids = torch.arange(seq_length, device=attention_mask.device)
        causal = (seq_ids[None, None, :].repeat(batch_size, seq_length, 1) <= seq_ids[None, :, None]).to(
            attention_mask.dtype
        )
        if causal.shape[1] < attention_mask.shape[1]:
            prefix = torch.ones(
                (batch_size, seq_length, attention_mask.shape[1] - causal.shape[1]), dtype=causal.dtype,
                device=causal.device,
            )
            causal = torch.cat([prefix, causal], dim=-1)
        extended = causal[:, None, :, :] * attention_mask[:, None, None, :]
    elif attention_mask.dim() == 2:
        extended = attention_mask[:, None, None, :]
    else:
        raise ValueError(f"Wrong shape for input_ids (shape {input_shape}) or attention_mask ({attention_mask.shape})")
    extended = extended.to(dtype=dtype)
    return (1.0 - extended) * torch.finfo(dtype).min


def invert_attention_mask(self, encoder_attention_mask):
    import torch

    if encoder_attention_mask.dim() == 3:
        extended = encoder_attention_mask[:, None, :, :]
    else:
        extended = encoder_attention_mask[:, None, None, :]
    extended = extended.to(dtype=self.dtype)
    return (1.0 - extended) * torch.finfo(self.dtype).min


def get_head_mask(self, head_mask, num_hidden_layers, is_attention_chunked=False):
    if head_mask is None:
        return [None] * num_hidden_layers
    head_mask = self._convert_head_mask_to_5d(head_mask, num_hidden_layers)
    return head_mask.unsqueeze(-1) if is_attention_chunked else head_mask


def _convert_head_mask_to_5d(self, head_mask, num_hidden_layers):
    if head_mask.dim() == 1:
        head_mask = head_mask[None, None, :, None, None].expand(num_hidden_layers, -1, -1, -1, -1)
    elif head_mask.dim() == 2:
        head_mask = head_mask[:, None, :, None, None]
    if head_mask.dim() != 5:
        raise ValueError(f"head_mask.dim != 5, instead {head_mask.dim()}")
    return head_mask.to(dtype=self.dtype)


@shim("mask helpers", "PreTrainedModel.get_extended_attention_mask, invert_attention_mask, get_head_mask")
def _mask_helpers():
    from transformers.modeling_utils import ModuleUtilsMixin

    installed = False
    for function in (get_extended_attention_mask, invert_attention_mask, get_head_mask, _convert_head_mask_to_5d):
        if not hasattr(ModuleUtilsMixin, function.__name__):
            setattr(ModuleUtilsMixin, function.__name__, function)
            installed = True
    return installed


def _from_legacy_cache(cls, past_key_values=None):
    cache = cls()
    for layer_idx, (key, value) in enumerate(past_key_values or ()):
        cache.update(key, value, layer_idx)
    return cache


def _to_legacy_cache(self):
    return tuple((layer.keys, layer.values) for layer in self.layers)


@shim("DynamicCache legacy API", "DynamicCache.from_legacy_cache, to_legacy_cache, seen_tokens, get_usable_length, "
      "get_max_length (None, not -1, for no maximum), key_cache, value_cache (read-only lists)")
def _dynamic_cache():
    from transformers import DynamicCache

    methods = {
        "from_legacy_cache": classmethod(_from_legacy_cache),
        "to_legacy_cache": _to_legacy_cache,
        "seen_tokens": property(lambda self: self.get_seq_length()),
        "get_usable_length": lambda self, new_seq_length=0, layer_idx=0: self.get_seq_length(layer_idx),
        "key_cache": property(lambda self: [layer.keys for layer in self.layers]),
        "value_cache": property(lambda self: [layer.values for layer in self.layers]),
    }
    installed = False
    for name, value in methods.items():
        if not hasattr(DynamicCache, name):
            setattr(DynamicCache, name, value)
            installed = True
    import torch

    one_layer = DynamicCache()
    one_layer.update(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), 0)
    if one_layer.get_max_length() == -1:  # 5.x says -1 where 4.x said None: no maximum
        DynamicCache.get_max_length = lambda self: None
        installed = True
    return installed


def _default_rope(config, device=None, seq_len=None, **kwargs):
    import torch

    parameters = getattr(config, "rope_parameters", None) or {}
    base = parameters.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    factor = parameters.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dim = int(head_dim * factor)
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim
    return 1.0 / (base**exponents), 1.0


@shim("ROPE_INIT_FUNCTIONS['default']", "the 'default' entry of transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS")
def _default_rope_init():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if "default" in ROPE_INIT_FUNCTIONS:
        return False
    ROPE_INIT_FUNCTIONS["default"] = _default_rope
    return True


# -- config behaviour -------------------------------------------------------------------------
def _config_class():
    import transformers

    return getattr(transformers, "PreTrainedConfig", None) or transformers.PretrainedConfig


# Attributes every 4.x PretrainedConfig set in __init__ and legacy model code reads.
CONFIG_DEFAULTS = {
    "pad_token_id": None,
    "bos_token_id": None,
    "eos_token_id": None,
    "sep_token_id": None,
    "decoder_start_token_id": None,
    "is_decoder": False,
    "add_cross_attention": False,
    "cross_attention_hidden_size": None,
    "is_encoder_decoder": False,
    "tie_encoder_decoder": False,
    "chunk_size_feed_forward": 0,
    "torchscript": False,
    "use_bfloat16": False,
    "problem_type": None,
}


@shim("4.x config defaults", "PretrainedConfig attributes that 4.x always set (" + ", ".join(CONFIG_DEFAULTS)
      + ") read as their 4.x defaults when a config does not set them")
def _config_defaults():
    config_class = _config_class()
    probe = config_class()
    installed = False
    for name, default in CONFIG_DEFAULTS.items():
        if not hasattr(probe, name):
            setattr(config_class, name, default)
            installed = True
    return installed


@shim("rope_scaling reads as in 4.x", "config.rope_scaling is None for plain rotary settings and carries 'type' "
      "beside 'rope_type' otherwise (transformers 5 fills it with rope_parameters)")
def _rope_scaling():
    config_class = _config_class()
    current = config_class.__dict__.get("rope_scaling")
    if not isinstance(current, property) or getattr(current.fget, "_port_model_shim", False):
        return False

    def rope_scaling(self):
        value = current.fget(self)
        if not isinstance(value, dict) or "rope_type" not in value:
            return value
        scaling = {k: v for k, v in value.items() if k not in ("rope_theta", "partial_rotary_factor")}
        if scaling.get("rope_type") == "default" and set(scaling) == {"rope_type"}:
            return None
        return {"type": scaling["rope_type"], **scaling}

    rope_scaling._port_model_shim = True
    config_class.rope_scaling = property(rope_scaling, current.fset)
    return True
