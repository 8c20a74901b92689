"""UseMaskingUtils: hand-built masks become masking_utils.create_causal_mask, or
create_bidirectional_mask where the model is an encoder."""

from __future__ import annotations

import textwrap

import torch

from tests.transforms.helpers import FILENAME, check_noop, check_transformed, transformed
from transforms.masks import UseMaskingUtils

PRELUDE = '''\
    import torch
    from torch import nn
    from transformers.modeling_attn_mask_utils import (
        _prepare_4d_causal_attention_mask,
        _prepare_4d_causal_attention_mask_for_sdpa,
    )
    from transformers.modeling_utils import PreTrainedModel
    {added}

    class FooAttention(nn.Module):
        def forward(self, query_states, key_states, value_states, attention_mask=None):
            attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) + attention_mask
            attn_weights = nn.functional.softmax(attn_weights, dim=-1)
            return torch.matmul(attn_weights, value_states)


    class FooDecoderLayer(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.self_attn = FooAttention()

        def forward(self, hidden_states, attention_mask=None):
            return self.self_attn(hidden_states, hidden_states, hidden_states, attention_mask)


    class FooPreTrainedModel(PreTrainedModel):
        pass


    class FooModel(FooPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
            self.layers = nn.ModuleList([FooDecoderLayer(config) for _ in range(config.num_hidden_layers)])
            self._use_flash_attention_2 = config._attn_implementation == "flash_attention_2"
            self._use_sdpa = config._attn_implementation == "sdpa"

        def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None):
            batch_size, seq_length = input_ids.shape
            past_key_values_length = 0 if past_key_values is None else past_key_values.get_seq_length()
            inputs_embeds = self.embed_tokens(input_ids)
    {mask}
            hidden_states = inputs_embeds
            for decoder_layer in self.layers:
                hidden_states = decoder_layer(hidden_states, attention_mask={mask_var})
            return hidden_states
'''


def module(mask: str, added: str = "", mask_var: str = "attention_mask") -> str:
    """The legacy file with `mask` (indented for forward's body) as the mask-building code."""
    text = textwrap.dedent(PRELUDE)
    mask = textwrap.indent(textwrap.dedent(mask).strip("\n"), " " * 8)
    return text.replace("{added}\n", added).replace("{mask}", mask).replace("{mask_var}", mask_var)


LEGACY_CHAIN = '''\
    if self._use_flash_attention_2:
        # 2d mask is passed through the layers
        attention_mask = attention_mask if (attention_mask is not None and 0 in attention_mask) else None
    elif self._use_sdpa:
        attention_mask = _prepare_4d_causal_attention_mask_for_sdpa(
            attention_mask, (batch_size, seq_length), inputs_embeds, past_key_values_length
        )
    else:
        # 4d mask is passed through the layers
        attention_mask = _prepare_4d_causal_attention_mask(
            attention_mask, (batch_size, seq_length), inputs_embeds, past_key_values_length
        )
'''

CREATE_CAUSAL_MASK = (
    "attention_mask = create_causal_mask(config=self.config, inputs_embeds=inputs_embeds, "
    "attention_mask=attention_mask, past_key_values=past_key_values, position_ids=position_ids)"
)


def test_helper_chain_becomes_one_create_causal_mask_call():
    state = check_transformed(
        module(LEGACY_CHAIN),
        module(CREATE_CAUSAL_MASK, added="from transformers.masking_utils import create_causal_mask\n"),
        UseMaskingUtils,
    )
    [change] = state.changes
    assert change.message == "FooModel.forward: mask built with masking_utils.create_causal_mask"


def test_sliding_window_helper_call_becomes_sliding_window_mask():
    legacy = '''\
    attention_mask = _prepare_4d_causal_attention_mask(
        attention_mask,
        (batch_size, seq_length),
        inputs_embeds,
        past_key_values_length,
        sliding_window=self.config.sliding_window,
    )
    '''
    check_transformed(module(legacy), SLIDING_OR_CAUSAL, UseMaskingUtils)


SLIDING_OR_CAUSAL = module(
    "attention_mask = (\n"
    f"    {CREATE_CAUSAL_MASK.split(' = ', 1)[1].replace('create_causal_mask', 'create_sliding_window_causal_mask')}\n"
    '    if getattr(self.config, "sliding_window", None) is not None\n'
    f"    else {CREATE_CAUSAL_MASK.split(' = ', 1)[1]}\n"
    ")",
    added="from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask\n",
)


def test_sliding_window_mask_falls_back_to_causal_without_a_window():
    """Legacy helpers read `sliding_window=None` as no window; so does the ported mask."""
    from transformers import PretrainedConfig

    namespace: dict = {}
    exec(compile(textwrap.dedent(SLIDING_OR_CAUSAL), FILENAME, "exec"), namespace)
    captured = []

    class Recorder(torch.nn.Module):
        def forward(self, hidden_states, attention_mask=None):
            captured.append(attention_mask)
            return hidden_states

    def masks(window):
        config = PretrainedConfig(vocab_size=8, hidden_size=4, num_hidden_layers=1, sliding_window=window)
        config._attn_implementation = "eager"
        model = namespace["FooModel"](config)
        model.layers = torch.nn.ModuleList([Recorder()])
        captured.clear()
        model(torch.tensor([[1, 2, 3, 4, 5]]), attention_mask=torch.ones(1, 5, dtype=torch.long))
        return captured[0][0, 0] == 0  # allowed positions

    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    assert torch.equal(masks(None), causal)
    assert torch.equal(masks(2), causal & torch.ones(5, 5, dtype=torch.bool).triu(-1))


def test_cache_argument_is_none_when_forward_has_no_cache():
    legacy = module(LEGACY_CHAIN).replace(", past_key_values=None):", "):").replace(
        "0 if past_key_values is None else past_key_values.get_seq_length()", "0"
    )
    output, state = transformed(legacy, UseMaskingUtils)
    compile(output, FILENAME, "exec")
    assert not state.diagnostics
    assert "past_key_values=None, position_ids=position_ids)" in output


HAND_BUILT_PADDING_MASK = '''\
    if attention_mask is not None:
        attention_mask = (1.0 - attention_mask[:, None, None, :]) * torch.finfo(inputs_embeds.dtype).min
    '''
def test_hand_built_padding_mask_of_a_causal_model_becomes_create_causal_mask():
    legacy = module(HAND_BUILT_PADDING_MASK).replace(
        "class FooAttention(nn.Module):\n",
        "class FooAttention(nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.register_buffer(\"bias\", torch.tril(torch.ones(8, 8, dtype=torch.bool)), persistent=False)\n\n",
    )
    output, state = transformed(legacy, UseMaskingUtils)
    compile(output, FILENAME, "exec")
    assert not state.diagnostics
    assert "attention_mask = create_causal_mask(" in output and "finfo" not in output


def test_hand_built_padding_mask_of_an_encoder_becomes_create_bidirectional_mask():
    """No triangular buffer, no causal helper: the legacy attention sees every position, so
    the mask must not become causal; eager gets the legacy additive mask, value for value."""
    import torch
    from transformers import LlamaConfig
    from transformers.masking_utils import create_bidirectional_mask

    output, state = transformed(module(HAND_BUILT_PADDING_MASK), UseMaskingUtils)
    compile(output, FILENAME, "exec")
    assert not state.diagnostics and "create_causal_mask" not in output and "finfo" not in output
    call = next(line.strip() for line in output.splitlines() if "create_bidirectional_mask(" in line)
    assert call.startswith("attention_mask = create_bidirectional_mask(config=self.config")

    config = LlamaConfig(hidden_size=8, num_attention_heads=2, num_hidden_layers=1, vocab_size=16)
    config._attn_implementation = "eager"
    padding = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    inputs_embeds = torch.zeros(2, 4, 8)
    scope = {"self": type("Model", (), {"config": config})(), "create_bidirectional_mask": create_bidirectional_mask,
             "torch": torch, "attention_mask": padding, "inputs_embeds": inputs_embeds,
             "past_key_values": None, "position_ids": None}
    exec(call, scope)
    legacy = (1.0 - padding[:, None, None, :].float()) * torch.finfo(torch.float32).min
    assert torch.equal(scope["attention_mask"], legacy.expand(2, 1, 4, 4))


ROUTABLE_ATTENTION = '''\
class FooAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.scaling = 0.125
        self.q_proj = nn.Linear(8, 8)
        self.k_proj = nn.Linear(8, 8)
        self.v_proj = nn.Linear(8, 8)
        self.o_proj = nn.Linear(8, 8)

    def forward(self, hidden_states, attention_mask=None):
        bsz, q_len, _ = hidden_states.size()
        query_states = self.q_proj(hidden_states).view(bsz, q_len, 2, 4).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(bsz, q_len, 2, 4).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(bsz, q_len, 2, 4).transpose(1, 2)
        attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) * self.scaling
        if attention_mask is not None:
            attn_weights = attn_weights + attention_mask
        attn_weights = nn.functional.softmax(attn_weights, dim=-1)
        attn_output = torch.matmul(attn_weights, value_states)
        attn_output = attn_output.transpose(1, 2).reshape(bsz, q_len, 8)
        return self.o_proj(attn_output)
'''


def test_an_encoder_with_a_hand_built_padding_mask_is_routed_as_non_causal():
    """The whole registry: the routed attention module says is_causal = False, so sdpa given
    no mask (no padding in the batch) does not make it causal."""
    legacy = module(HAND_BUILT_PADDING_MASK)
    start, end = legacy.index("class FooAttention"), legacy.index("class FooDecoderLayer")
    legacy = legacy[:start] + ROUTABLE_ATTENTION + "\n\n" + legacy[end:]
    legacy = legacy.replace("self.self_attn = FooAttention()", "self.self_attn = FooAttention(config)").replace(
        "self.self_attn(hidden_states, hidden_states, hidden_states, attention_mask)",
        "self.self_attn(hidden_states, attention_mask)",
    )
    output, state = transformed(legacy)
    compile(output, FILENAME, "exec")
    assert not state.diagnostics, state.diagnostics
    assert "ALL_ATTENTION_FUNCTIONS.get_interface(" in output
    assert "create_bidirectional_mask(" in output and "self.is_causal = False" in output, output
    with_buffer = legacy.replace(
        "        self.config = config\n",
        "        self.config = config\n"
        "        self.register_buffer(\"bias\", torch.tril(torch.ones(8, 8, dtype=torch.bool)), persistent=False)\n",
        1,
    )
    causal, _ = transformed(with_buffer)
    assert "create_causal_mask(" in causal and "self.is_causal = True" in causal


def test_noop_without_mask_code():
    check_noop(module("        pass\n"), UseMaskingUtils)


def test_noop_helper_outside_the_base_model():
    check_noop(
        '''\
    from transformers.modeling_attn_mask_utils import _prepare_4d_causal_attention_mask


    def build_mask(attention_mask, shape, inputs_embeds):
        return _prepare_4d_causal_attention_mask(attention_mask, shape, inputs_embeds, 0)
    ''',
        UseMaskingUtils,
    )


def test_diagnostic_when_the_helper_names_no_mask():
    legacy = '''\
    attention_mask = _prepare_4d_causal_attention_mask(
        input_shape=(batch_size, seq_length),
        inputs_embeds=inputs_embeds,
        past_key_values_length=past_key_values_length,
    )
    '''
    state = check_noop(module(legacy), UseMaskingUtils, diagnostics=True)
    assert state.diagnostics[0].symbol == "FooModel"


def test_mask_keeps_the_name_it_was_assigned_to():
    legacy = module(
        "causal_mask = self._update_causal_mask(attention_mask, inputs_embeds, past_key_values)",
        mask_var="causal_mask",
    )
    output, _ = transformed(legacy, UseMaskingUtils)
    assert "causal_mask = create_causal_mask(" in output


def test_padding_mask_reshape_before_the_builder_skips_prepared_4d_masks():
    """transformers 4.44's gpt2/gpt_neox flatten the padding mask before the helpers; engines
    and continuous batching pass a prepared 4D mask, which that `view` scrambles or refuses."""
    reshape = "attention_mask = attention_mask.view(batch_size, -1) if attention_mask is not None else None\n"
    guarded = (
        "attention_mask = attention_mask.view(batch_size, -1) if attention_mask is not None and "
        "attention_mask.ndim < 4 else attention_mask\n"
    )
    state = check_transformed(
        module(reshape + textwrap.dedent(LEGACY_CHAIN)),
        module(guarded + CREATE_CAUSAL_MASK, added="from transformers.masking_utils import create_causal_mask\n"),
        UseMaskingUtils,
    )
    assert "FooModel.forward: the padding-mask reshape skips prepared 4D masks" in [c.message for c in state.changes]


def test_guarded_reshape_keeps_2d_masks_and_passes_4d_masks():
    """The rewritten statement, run: a 2D mask is flattened as before, a non-contiguous 4D
    mask (what continuous batching hands the model) goes through untouched."""
    import torch

    output, _ = transformed(module(
        "attention_mask = attention_mask.reshape(batch_size, -1)\n" + textwrap.dedent(LEGACY_CHAIN)
    ), UseMaskingUtils)
    line = next(x.strip() for x in output.splitlines() if "attention_mask.reshape(" in x)
    two_d, four_d = torch.ones(2, 1, 5), torch.zeros(1, 1, 5, 7).transpose(2, 3)
    for mask, shape in ((two_d, (2, 5)), (four_d, (1, 1, 7, 5)), (None, None)):
        scope = {"attention_mask": mask, "batch_size": 2}
        exec(line, scope)
        assert (scope["attention_mask"] is None) if shape is None else tuple(scope["attention_mask"].shape) == shape
    assert line.endswith("if attention_mask is not None and attention_mask.ndim < 4 else attention_mask")


def test_noop_for_reshapes_of_other_tensors():
    output, _ = transformed(module("token_type_ids = token_type_ids.view(batch_size, -1)\n" + textwrap.dedent(LEGACY_CHAIN)), UseMaskingUtils)
    assert "token_type_ids = token_type_ids.view(batch_size, -1)\n" in output and "ndim < 4" not in output


def test_cast_to_bool_after_the_helper_applies_to_additive_masks_only():
    """MPT's shape: the helper's additive mask becomes "True where masked" for `masked_fill`.
    masking_utils gives eager an additive mask, sdpa a boolean one (True where attended) or None."""
    import torch

    legacy = module(textwrap.dedent(LEGACY_CHAIN) + "attention_mask = attention_mask.bool()\n")
    output, state = transformed(legacy, UseMaskingUtils)
    guarded = (
        "attention_mask = attention_mask.bool() if isinstance(attention_mask, torch.Tensor) and "
        'attention_mask.is_floating_point() and self.config._attn_implementation == "eager" else attention_mask'
    )
    assert "        " + guarded + "\n" in output
    assert "FooModel.forward: the mask's cast to bool applies to an additive mask only" in [c.message for c in state.changes]
    additive = torch.tensor([[0.0, torch.finfo(torch.float32).min]])
    attended = torch.tensor([[True, False]])
    cases = [("eager", additive, torch.tensor([[False, True]])), ("sdpa", attended, attended), ("sdpa", None, None),
             ("sdpa", additive, additive)]  # a prepared additive mask (continuous batching) is what sdpa adds
    for implementation, mask, expected in cases:
        config = type("Config", (), {"_attn_implementation": implementation})
        scope = {"attention_mask": mask, "torch": torch, "self": type("Model", (), {"config": config})}
        exec(guarded, scope)
        assert scope["attention_mask"] is None if expected is None else torch.equal(scope["attention_mask"], expected)
    check_noop(output, UseMaskingUtils)


def test_noop_for_casts_of_other_tensors_to_bool():
    output, _ = transformed(module(textwrap.dedent(LEGACY_CHAIN) + "token_type_ids = token_type_ids.bool()\n"), UseMaskingUtils)
    assert "        token_type_ids = token_type_ids.bool()\n" in output
