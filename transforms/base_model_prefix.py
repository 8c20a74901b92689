"""The base-model prefix names the attribute that holds the base model (CONTRACT C3, D2).

transformers finds a head's base model through `base_model_prefix`: `AutoModel` loading a
head's checkpoint strips that prefix from the weight names, and `model.base_model` reads
that attribute. Legacy code sometimes names an attribute that no class has (a prefix copied
from another model: `"transformer"` while every head holds `self.model`); the legacy model
ran because nothing read it, but an engine that loads the base model with `AutoModel` then
matches no weight and runs uninitialised parameters. When every head holds its base model
under one attribute and the declared prefix names none, the prefix becomes that attribute.
"""

from __future__ import annotations

import libcst as cst

from transforms.base import Transform
from transforms.cst_utils import code_of


class BaseModelPrefix(Transform):
    name = "base-model-prefix"
    summary = "Point base_model_prefix at the attribute every head holds its base model in."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        return self.rewrite_classes(tree, set(analysis.pretrained), self._rewrite)

    def _rewrite(self, cls: cst.ClassDef) -> cst.ClassDef:
        analysis = self.state.analysis
        heads = {h: a for h, a in analysis.heads.items() if h == cls.name.value or analysis.is_a(h, cls.name.value)}
        held = set(heads.values())
        if len(held) != 1:
            return cls
        [attribute] = held
        members = []
        for member in cls.body.body:
            declared = _declared_prefix(member)
            named_nowhere = declared is not None and not any(
                declared in analysis.classes[h].children for h in heads
            )
            if declared not in (None, attribute) and named_nowhere:
                self.record(member, f"{cls.name.value}.base_model_prefix: {declared!r} names no attribute; "
                            f"every head holds its base model as {attribute!r}")
                member = member.with_changes(body=[member.body[0].with_changes(value=cst.SimpleString(f'"{attribute}"'))])
            members.append(member)
        return cls.with_changes(body=cls.body.with_changes(body=members))


def _declared_prefix(member: cst.CSTNode) -> str | None:
    """`base_model_prefix = "x"` as a class-body statement."""
    if not isinstance(member, cst.SimpleStatementLine) or len(member.body) != 1:
        return None
    assign = member.body[0]
    if (isinstance(assign, cst.Assign) and len(assign.targets) == 1
            and code_of(assign.targets[0].target) == "base_model_prefix" and isinstance(assign.value, cst.SimpleString)):
        return assign.value.evaluated_value
    return None
