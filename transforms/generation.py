"""Generation under transformers 5 (CONTRACT A3, C4).

`PreTrainedModel` no longer inherits `GenerationMixin`, so a generative class must name
it. Legacy `prepare_inputs_for_generation` overrides that only slice inputs by cache
length and derive positions from the mask use cache attributes that are gone
(`seen_tokens`, `get_max_length`); `GenerationMixin`'s own version does the same work
with the current Cache API, so such overrides are removed. An override that passes any
other input (pixel values, token types...) is kept. `_reorder_cache` is unused in 5.x.
"""

from __future__ import annotations

import libcst as cst
from libcst.codemod.visitors import AddImportsVisitor

from transforms.base import Transform
from transforms.cst_utils import code_of, function_defs, walk

STANDARD_GENERATION_INPUTS = {
    "input_ids",
    "inputs_embeds",
    "attention_mask",
    "position_ids",
    "past_key_values",
    "use_cache",
    "cache_position",
    "token_type_ids",  # GenerationMixin extends and slices these itself
}
GENERATIVE_OUTPUTS = ("CausalLMOutput", "Seq2SeqLMOutput", "MaskedLMOutput")


class GenerationSupport(Transform):
    name = "generation"
    summary = "Inherit GenerationMixin explicitly; drop standard prepare_inputs_for_generation/_reorder_cache."
    leaves_interface_code = True

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        return self.rewrite_classes(
            tree, set(analysis.heads), lambda cls: self._rewrite(cls) if self._is_generative(cls) else cls
        )

    @staticmethod
    def _is_generative(cls: cst.ClassDef) -> bool:
        methods = function_defs(cls)
        if "prepare_inputs_for_generation" in methods:
            return True
        text = code_of(methods["forward"]) if "forward" in methods else ""
        return any(kind in text for kind in GENERATIVE_OUTPUTS[:2])

    def _rewrite(self, cls: cst.ClassDef) -> cst.ClassDef:
        name = cls.name.value
        members = []
        for member in cls.body.body:
            if isinstance(member, cst.FunctionDef) and member.name.value == "_reorder_cache":
                self.record(member, f"{name}._reorder_cache removed: transformers 5 reorders Cache objects itself")
                continue
            if isinstance(member, cst.FunctionDef) and member.name.value == "prepare_inputs_for_generation":
                extra = _extra_inputs(member)
                if not extra:
                    self.record(member, f"{name}.prepare_inputs_for_generation removed: GenerationMixin's does the same")
                    continue
            members.append(member)
        cls = cls.with_changes(body=cls.body.with_changes(body=members))
        if not any(code_of(b.value).endswith("GenerationMixin") for b in cls.bases):
            AddImportsVisitor.add_needed_import(self.context, "transformers.generation", "GenerationMixin")
            bases = [*cls.bases, cst.Arg(value=cst.Name("GenerationMixin"))]
            cls = cls.with_changes(bases=bases)
            self.record(cls, f"{name} inherits GenerationMixin")
        return cls


def _passed_through(fn: cst.FunctionDef) -> set[str]:
    """Keyword parameters with a default that the override only passes on under their own
    name (`"output_router_logits": output_router_logits`) and reads nowhere else:
    GenerationMixin's version forwards every keyword given to `generate` the same way."""
    own = {p.name.value for p in [*fn.params.params, *fn.params.kwonly_params] if p.default is not None}
    passed = {
        node.value.value
        for node in walk(fn)
        if isinstance(node, cst.DictElement) and isinstance(node.key, cst.SimpleString)
        and isinstance(node.value, cst.Name) and node.value.value == node.key.evaluated_value
    }
    # Such a name occurs twice: as the parameter and as the value.
    return {n for n in passed & own if sum(isinstance(x, cst.Name) and x.value == n for x in walk(fn)) == 2}


def _extra_inputs(fn: cst.FunctionDef) -> set[str]:
    """Keys the override puts into the model inputs beyond the standard ones."""
    keys: set[str] = set()
    for node in walk(fn):
        if isinstance(node, cst.Dict):
            for element in node.elements:
                if isinstance(element, cst.DictElement) and isinstance(element.key, cst.SimpleString):
                    keys.add(element.key.evaluated_value)
        if isinstance(node, cst.Subscript) and code_of(node.value).endswith("model_inputs"):
            index = node.slice[0].slice
            if isinstance(index, cst.Index) and isinstance(index.value, cst.SimpleString):
                keys.add(index.value.evaluated_value)
    kwargs_passthrough = any(
        isinstance(n, cst.Call) and "update" in code_of(n.func) and any(a.star == "**" for a in n.args) for n in walk(fn)
    )
    # An override that calls GenerationMixin's own adds behaviour around it, not a copy of it.
    wraps_mixin = any(isinstance(n, cst.Call) and code_of(n.func).startswith("super()") for n in walk(fn))
    extra = keys - STANDARD_GENERATION_INPUTS - _passed_through(fn)
    return extra | ({"**kwargs"} if kwargs_passthrough else set()) | ({"super()"} if wraps_mixin else set())
