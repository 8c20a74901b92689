"""Learned positions counted from the padding mask (`cumsum(attention_mask)`, OPT / BioGPT
lineage) take `position_ids`; heads that hold the base model through a pretrained wrapper
(`ForCausalLM.model` -> `Model.decoder`) are heads, and `**kwargs` follows their dotted calls."""

from __future__ import annotations

import textwrap

import pytest
import torch

from porter.analysis import analyse
from tests.transforms.helpers import FILENAME, check_noop, check_transformed, run_transforms
from transforms.kwargs_threading import ThreadKwargs
from transforms.mask_positions import MaskCountedPositions

COUNTED = textwrap.dedent('''\
    import torch
    from torch import nn


    class FooPositions(nn.Embedding):
        def __init__(self, num, dim):
            self.offset = 2
            super().__init__(num + self.offset, dim)

        def forward(self, attention_mask, past_key_values_length: int = 0):
            """Positions from the mask."""
            attention_mask = attention_mask.long()
            positions = (torch.cumsum(attention_mask, dim=1).type_as(attention_mask) * attention_mask).long() - 1
            positions = positions[:, past_key_values_length:]
            return super().forward(positions + self.offset)


    class FooModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(16, 4)
            self.embed_positions = FooPositions(32, 4)

        def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, past_length=0):
            if inputs_embeds is None:
                inputs_embeds = self.embed_tokens(input_ids)
            if attention_mask is not None and attention_mask.shape[1] != past_length + input_ids.shape[1]:
                raise ValueError("bad mask")
            positions = self.embed_positions(attention_mask, past_length)
            return inputs_embeds + positions
''')

PORTED = textwrap.dedent('''\
    import torch
    from torch import nn


    class FooPositions(nn.Embedding):
        def __init__(self, num, dim):
            self.offset = 2
            super().__init__(num + self.offset, dim)

        def forward(self, attention_mask, past_key_values_length: int = 0, position_ids=None):
            """Positions from the mask."""
            if position_ids is None:
                attention_mask = attention_mask.long()
                positions = (torch.cumsum(attention_mask, dim=1).type_as(attention_mask) * attention_mask).long() - 1
                positions = positions[:, past_key_values_length:]
            else:
                positions = position_ids
            return super().forward(positions + self.offset)


    class FooModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(16, 4)
            self.embed_positions = FooPositions(32, 4)

        def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, past_length=0, position_ids=None):
            if inputs_embeds is None:
                inputs_embeds = self.embed_tokens(input_ids)
            if attention_mask is not None and attention_mask.ndim == 2 and attention_mask.shape[1] != past_length + input_ids.shape[1]:
                raise ValueError("bad mask")
            if position_ids is None and attention_mask is None:
                position_ids = torch.arange(past_length, past_length + inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0)
            positions = self.embed_positions(attention_mask, past_length, position_ids=position_ids)
            return inputs_embeds + positions
''')


def _model(source: str):
    namespace = {}
    exec(compile(source, FILENAME, "exec"), namespace)
    torch.manual_seed(0)
    legacy = namespace["FooModel"]()
    return legacy


def test_positions_counted_from_the_mask_take_position_ids_and_keep_the_count():
    check_transformed(COUNTED, PORTED, MaskCountedPositions)
    legacy, ported = _model(COUNTED), _model(PORTED)
    ids = torch.tensor([[3, 4, 5, 6], [0, 0, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    expected = legacy(ids, mask)
    assert torch.equal(ported(ids, mask), expected)  # no position_ids: the legacy count
    assert torch.equal(ported(ids, None), legacy(ids, torch.ones_like(mask)))  # no mask: counted as all ones
    # positions given (packed sequences, a prepared mask): they win over the mask
    positions = torch.tensor([[0, 1, 0, 1]])
    packed = ported(ids[:1], torch.zeros(1, 1, 4, 4), position_ids=positions)
    assert torch.equal(packed[0, 2], legacy(ids[:1, 2:], torch.ones(1, 2, dtype=torch.long))[0, 0])


ARANGE = textwrap.dedent("""\
    import torch
    from torch import nn


    class FooPositions(nn.Embedding):
        def forward(self, shape, past_key_values_length: int = 0):
            seq_len = shape[1]
            positions = torch.arange(past_key_values_length, past_key_values_length + seq_len)
            return super().forward(positions)


    class FooEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_positions = FooPositions(32, 4)

        def forward(self, hidden_states, past_length=0):
            table = self.embed_positions(hidden_states.shape[:-1], past_length)[None, None, :, :]
            return hidden_states[:, None] * table
""")


def test_a_table_looked_up_by_arange_takes_one_row_of_position_ids():
    output, state = run_transforms(ARANGE, MaskCountedPositions)
    ported = output[FILENAME]
    assert not state.diagnostics
    assert "def forward(self, hidden_states, past_length=0, position_ids=None):" in ported
    assert "self.embed_positions(hidden_states.shape[:-1], past_length, position_ids=position_ids)" in ported
    modules = []
    for source in (ARANGE, ported):
        namespace = {}
        exec(compile(source, FILENAME, "exec"), namespace)
        torch.manual_seed(0)
        modules.append(namespace["FooEncoder"]())
    legacy, encoder = modules
    hidden = torch.randn(2, 3, 4)
    assert torch.equal(encoder(hidden), legacy(hidden))
    assert torch.equal(encoder(hidden, position_ids=torch.tensor([[2, 3, 4]])), legacy(hidden, past_length=2))
    with pytest.raises(ValueError, match="rows of position_ids must be equal"):
        encoder(hidden, position_ids=torch.tensor([[0, 1, 2], [1, 2, 3]]))


def test_positions_given_to_the_module_are_left_alone():
    check_noop('''\
        import torch
        from torch import nn


        class FooPositions(nn.Embedding):
            def forward(self, position_ids, past_key_values_length: int = 0):
                shifted = position_ids + 2
                return super().forward(shifted)
    ''', MaskCountedPositions)


def test_a_count_without_embeddings_to_size_it_is_refused():
    source = COUNTED.replace("inputs_embeds", "embeds_in")
    files, state = run_transforms(source, MaskCountedPositions)
    assert [d.symbol for d in state.diagnostics] == ["FooModel"]
    assert "to size them without a mask" in state.diagnostics[0].render()


WRAPPED = textwrap.dedent('''\
    import torch
    from torch import nn
    from transformers import PreTrainedModel


    class FooAttention(nn.Module):
        def forward(self, q, k, v):
            return torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)), dim=-1), v)


    class FooPreTrainedModel(PreTrainedModel):
        base_model_prefix = "model"


    class FooDecoder(FooPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.layers = nn.ModuleList([FooAttention() for _ in range(2)])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x, x, x)
            return x


    class FooModel(FooPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.decoder = FooDecoder(config)

        def forward(self, x):
            return self.decoder(x)


    class FooForCausalLM(FooPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.model = FooModel(config)

        def forward(self, x):
            return self.model.decoder(x)
''')


def test_a_head_holding_the_base_model_through_a_pretrained_wrapper_is_a_head():
    import libcst as cst

    analysis = analyse({FILENAME: cst.parse_module(WRAPPED)})
    assert analysis.base_models == {"FooDecoder"}
    assert analysis.heads == {"FooModel": "decoder", "FooForCausalLM": "model"}


def test_kwargs_follow_a_call_through_the_wrapper():
    files, state = run_transforms(WRAPPED, ThreadKwargs)
    assert "return self.model.decoder(x, **kwargs)" in files[FILENAME]
    assert "return self.decoder(x, **kwargs)" in files[FILENAME]
    compile(files[FILENAME], FILENAME, "exec")


def test_a_model_holding_an_encoder_and_a_decoder_is_not_a_wrapper():
    import libcst as cst

    source = WRAPPED.replace(
        "        self.decoder = FooDecoder(config)\n",
        "        self.encoder = FooDecoder(config)\n        self.decoder = FooDecoder(config)\n",
    )
    assert source != WRAPPED
    analysis = analyse({FILENAME: cst.parse_module(source)})
    assert set(analysis.heads) == {"FooModel"}  # as before: its holder is no head


def test_a_composite_holding_a_head_beside_another_pretrained_model_is_not_a_wrapper():
    """LLaVA's shape: `language_model` (a head) beside `vision_tower` (another pretrained
    model): the composite is a model of its own, split by the multimodal transform."""
    import libcst as cst

    source = WRAPPED + textwrap.dedent('''\


        class FooVision(FooPreTrainedModel):
            def __init__(self, config):
                super().__init__(config)
                self.proj = nn.Linear(4, 4)


        class FooForConditionalGeneration(FooPreTrainedModel):
            def __init__(self, config):
                super().__init__(config)
                self.vision_tower = FooVision(config)
                self.language_model = FooForCausalLM(config)
    ''')
    analysis = analyse({FILENAME: cst.parse_module(source)})
    assert analysis.heads["FooForCausalLM"] == "model"
    assert "FooForConditionalGeneration" not in analysis.heads
    alone = source.replace("        self.vision_tower = FooVision(config)\n", "")
    assert alone != source
    assert analyse({FILENAME: cst.parse_module(alone)}).heads["FooForConditionalGeneration"] == "language_model"
