"""RoPE settings as transformers 5 presents them (LEGACY_PATTERNS D, config behaviour).

transformers 5 fills `config.rope_scaling` with `{"rope_type": "default", ...}` where
legacy configs had `None`, and names the kind `rope_type` where legacy code reads
`["type"]`. Legacy tests keep their meaning:

- `X.rope_scaling is None`      -> `X.rope_scaling is None or <kind of X.rope_scaling> == "default"`
- `X.rope_scaling is not None`  -> the negation of that
- `X.rope_scaling["type"]`      -> `X.rope_scaling.get("type", X.rope_scaling.get("rope_type"))`
"""

from __future__ import annotations

import libcst as cst

from transforms.base import Transform
from transforms.cst_utils import code_of, parse_expr


def _kind(owner: str) -> str:
    return f'{owner}.get("type", {owner}.get("rope_type"))'


class RopeConfigAccess(Transform):
    name = "rope-config"
    summary = "Keep legacy rope_scaling tests meaningful under transformers 5's filled-in rope settings."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        return tree.visit(_RopeAccess(self))


class _RopeAccess(cst.CSTTransformer):
    def __init__(self, transform: Transform):
        self.transform = transform
        self.targets: set[int] = set()  # `x["type"] = ...` writes the key: left alone

    def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
        self.targets.add(id(node.target))

    def visit_BooleanOperation(self, node: cst.BooleanOperation) -> bool:
        # Already rewritten (`... is None or <kind> == "default"`): leave it alone.
        return '.get("rope_type")) == "default"' not in code_of(node)

    def leave_Comparison(self, original: cst.Comparison, updated: cst.Comparison) -> cst.BaseExpression:
        left = updated.left
        if not (isinstance(left, cst.Attribute) and left.attr.value == "rope_scaling" and len(updated.comparisons) == 1):
            return updated
        target = updated.comparisons[0]
        if code_of(target.comparator) != "None":
            return updated
        owner = code_of(left)
        absent = f'({owner} is None or {_kind(owner)} == "default")'
        if isinstance(target.operator, cst.Is):
            self.transform.record(original, f"`{owner} is None` also accepts the default rope settings")
            return parse_expr(absent)
        if isinstance(target.operator, cst.IsNot):
            self.transform.record(original, f"`{owner} is not None` ignores the default rope settings")
            return parse_expr(f"not {absent}")
        return updated

    def leave_Subscript(self, original: cst.Subscript, updated: cst.Subscript) -> cst.BaseExpression:
        value = updated.value
        if id(original) in self.targets:
            return updated
        if not (isinstance(value, cst.Attribute) and value.attr.value == "rope_scaling" and len(updated.slice) == 1):
            return updated
        index = updated.slice[0].slice
        if isinstance(index, cst.Index) and isinstance(index.value, cst.SimpleString):
            if index.value.evaluated_value == "type":
                owner = code_of(value)
                self.transform.record(original, f'{owner}["type"] -> also reads "rope_type"')
                return parse_expr(_kind(owner))
        return updated
