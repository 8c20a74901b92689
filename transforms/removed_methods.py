"""`PreTrainedModel` methods that transformers 5 removed, replaced by what they did.

- `self.get_head_mask(head_mask, num_layers)` -> `_expand_head_mask(head_mask, num_layers)`, a
  module-level copy of the legacy behaviour (one mask, or None, per layer).
"""

from __future__ import annotations

import libcst as cst

from transforms.base import Transform
from transforms.cst_utils import SharingTransformer, code_of, module_code, parse_expr, parse_stmts, spaced

HEAD_MASK_HELPER = "_expand_head_mask"
HEAD_MASK_CODE = f'''
def {HEAD_MASK_HELPER}(head_mask, num_hidden_layers):
    """What PreTrainedModel.get_head_mask did before transformers 5: one head mask per layer."""
    if head_mask is None:
        return [None] * num_hidden_layers
    if head_mask.dim() == 1:
        head_mask = head_mask[None, None, :, None, None].expand(num_hidden_layers, -1, -1, -1, -1)
    elif head_mask.dim() == 2:
        head_mask = head_mask[:, None, :, None, None]
    return head_mask
'''


class RemovedModelMethods(Transform):
    name = "removed-methods"
    summary = "Replace PreTrainedModel methods that transformers 5 removed (get_head_mask)."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        from transformers import PreTrainedModel

        if hasattr(PreTrainedModel, "get_head_mask") or "self.get_head_mask(" not in module_code(tree):
            return tree
        tree = tree.visit(_HeadMaskCalls(self))
        if any(isinstance(s, cst.FunctionDef) and s.name.value == HEAD_MASK_HELPER for s in tree.body):
            return tree
        body = list(tree.body)
        first_class = next((i for i, s in enumerate(body) if isinstance(s, cst.ClassDef)), len(body))
        body.insert(first_class, spaced(parse_stmts(HEAD_MASK_CODE)[0]))
        return tree.with_changes(body=body)


class _HeadMaskCalls(SharingTransformer):
    def __init__(self, transform: Transform):
        self.transform = transform

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        if code_of(updated.func) == "self.get_head_mask" and len(updated.args) >= 2:
            self.transform.record(original, f"self.get_head_mask(...) -> {HEAD_MASK_HELPER}(...)")
            args = ", ".join(code_of(a.value) for a in updated.args[:2])
            return parse_expr(f"{HEAD_MASK_HELPER}({args})")
        return updated
