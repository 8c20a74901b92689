"""Layers of an in-library model built or subclassed by remote code are refused at their use;
what keeps its call convention across releases is left alone."""

from __future__ import annotations

import textwrap

from tests.transforms.helpers import check_noop, transformed
from transforms.in_library_layers import RefuseInLibraryLayers

LEGACY = textwrap.dedent("""\
    from torch import nn
    from transformers.models.gemma2.modeling_gemma2 import Gemma2Attention, Gemma2DecoderLayer as Layer
    from transformers.models.gemma2.modeling_gemma2 import Gemma2MLP, Gemma2RMSNorm, repeat_kv


    class FooAttention(Gemma2Attention):
        pass


    class FooModel(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.layers = nn.ModuleList([Layer(config, i) for i in range(config.num_hidden_layers)])
            self.norm = Gemma2RMSNorm(config.hidden_size)
            self.mlp = Gemma2MLP(config)

        def forward(self, x):
            return repeat_kv(self.norm(x), 1)
""")


def test_built_and_subclassed_in_library_layers_are_refused_at_their_lines():
    output, state = transformed(LEGACY, RefuseInLibraryLayers)
    assert output == LEGACY
    found = [(d.line, d.symbol) for d in state.diagnostics]
    assert found == [(6, "FooAttention"), (13, "FooModel")]
    first, second = (d.render() for d in state.diagnostics)
    assert "subclasses `Gemma2Attention` from transformers.models.gemma2.modeling_gemma2" in first
    assert "builds `Layer` from transformers.models.gemma2.modeling_gemma2" in second


def test_norms_mlps_functions_and_isinstance_checks_are_left_alone():
    code = textwrap.dedent("""\
        from torch import nn
        from transformers.models.opt.modeling_opt import OPTForCausalLM
        from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm, rotate_half


        class FooBlock(nn.Module):
            def __init__(self, config):
                super().__init__()
                self.norm = LlamaRMSNorm(config.hidden_size)
                self.mlp = LlamaMLP(config)

            def forward(self, model, x):
                assert not isinstance(model, OPTForCausalLM)
                return self.mlp(rotate_half(self.norm(x)))
    """)
    check_noop(code, RefuseInLibraryLayers, diagnostics=False)


def test_repo_classes_and_other_packages_are_left_alone():
    for module in (".modeling_gemma2", "gemma_kernels.layers"):
        code = LEGACY.replace("transformers.models.gemma2.modeling_gemma2", module)
        check_noop(code, RefuseInLibraryLayers, diagnostics=False)
