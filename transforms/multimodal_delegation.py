"""Composite models stop delegating what transformers 5 does for nested models itself.

A legacy vision-language class wraps complete models (a text model with its head, a
vision model) and forwards some `PreTrainedModel` hooks to one of them:
`def tie_weights(self): return self.language_model.tie_weights()`. transformers 5 ties
the weights of every nested model from the outer one and calls the hook with arguments
(`tie_weights(recompute_mapping=False)`) the narrow override does not take, so loading
fails. Such an override, whose whole body calls the same method of a child module with
no arguments, is removed; the inherited method covers the child.
"""

from __future__ import annotations

import libcst as cst

from transforms.base import Transform
from transforms.cst_utils import function_defs, is_self_attr, param_names

NESTED_HOOKS = {"tie_weights"}  # PreTrainedModel methods transformers 5 applies to nested models


class DropTowerDelegations(Transform):
    name = "multimodal-delegation"
    summary = "Remove tie_weights overrides that only forward to a nested model."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        owners = {n for n in analysis.pretrained if analysis.classes[n].file == self.filename}
        targets = {n for n in owners if any(_delegates(fn) for fn in function_defs(analysis.classes[n].node).values())}
        return self.rewrite_classes(tree, targets, self._rewrite) if targets else tree

    def _rewrite(self, cls: cst.ClassDef) -> cst.ClassDef:
        members = []
        for member in cls.body.body:
            if isinstance(member, cst.FunctionDef) and _delegates(member):
                self.record(member, f"{cls.name.value}.{member.name.value} removed: transformers 5 applies it to nested models")
                continue
            members.append(member)
        return cls.with_changes(body=cls.body.with_changes(body=members))


def _delegates(fn: cst.FunctionDef) -> bool:
    """`def hook(self): [return] self.<child>.hook()` for a hook of NESTED_HOOKS."""
    name = fn.name.value
    if name not in NESTED_HOOKS or param_names(fn) != ["self"] or len(fn.body.body) != 1:
        return False
    line = fn.body.body[0]
    if not isinstance(line, cst.SimpleStatementLine) or len(line.body) != 1:
        return False
    small = line.body[0]
    call = small.value if isinstance(small, (cst.Return, cst.Expr)) else None
    return (
        isinstance(call, cst.Call)
        and not call.args
        and isinstance(call.func, cst.Attribute)
        and call.func.attr.value == name
        and is_self_attr(call.func.value)
    )
