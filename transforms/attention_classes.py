"""Collapse class-per-backend attention into the one eager class.

Legacy code of the transformers 4.36-4.47 era ships `XAttention` plus
`XFlashAttention2(XAttention)` / `XSdpaAttention(XAttention)` and picks one through
`X_ATTENTION_CLASSES[config._attn_implementation]`. Once the eager class routes through
the attention interface, the variants are dead weight: every backend is reached through
`ALL_ATTENTION_FUNCTIONS`, so the variants and the dict are removed.
"""

from __future__ import annotations

import libcst as cst

from transforms.base import Transform
from transforms.cst_utils import dotted, single_assign


class CollapseBackendClasses(Transform):
    name = "attention-classes"
    summary = "Remove *FlashAttention2/*SdpaAttention variants and X_ATTENTION_CLASSES dicts."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        variants = {
            v for v, _ in analysis.attention_variants.items() if analysis.classes[v].file == self.filename
        }
        dicts = set(analysis.attention_dicts)
        if not variants and not any(self._defines_dict(s, dicts) for s in tree.body):
            return tree
        body = []
        for stmt in tree.body:
            if isinstance(stmt, cst.ClassDef) and stmt.name.value in variants:
                primary = analysis.attention_variants[stmt.name.value]
                self.record(stmt, f"removed {stmt.name.value}: its backend is reached through {primary}")
                continue
            if self._defines_dict(stmt, dicts):
                self.record(stmt, f"removed the backend dict {single_assign(stmt)[0][0].value}")
                continue
            body.append(stmt)
        tree = tree.with_changes(body=body)
        return tree.visit(_DictLookupReplacer(self, analysis.attention_dicts))

    @staticmethod
    def _defines_dict(stmt: cst.CSTNode, dicts: set[str]) -> bool:
        assign = single_assign(stmt)
        return bool(assign) and isinstance(assign[0][0], cst.Name) and assign[0][0].value in dicts


class _DictLookupReplacer(cst.CSTTransformer):
    """`X_ATTENTION_CLASSES[config._attn_implementation]` -> `XAttention`, called or not."""

    def __init__(self, transform: Transform, dicts: dict[str, dict[str, str]]):
        self.transform = transform
        self.dicts = dicts

    def leave_Subscript(self, original: cst.Subscript, updated: cst.Subscript) -> cst.BaseExpression:
        if dotted(updated.value) in self.dicts:
            primary = self.dicts[dotted(updated.value)]["eager"]
            self.transform.record(original, f"{dotted(updated.value)}[...] -> {primary}")
            return cst.Name(primary)
        return updated
