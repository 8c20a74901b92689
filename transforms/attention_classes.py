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
from transforms.cst_utils import SharingTransformer, dotted, names_read, single_assign


class CollapseBackendClasses(Transform):
    name = "attention-classes"
    summary = "Remove *FlashAttention2/*SdpaAttention variants and X_ATTENTION_CLASSES dicts."
    leaves_interface_code = True

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        variants = {
            v for v, _ in analysis.attention_variants.items() if analysis.classes[v].file == self.filename
        }
        dicts = set(analysis.attention_dicts)
        uses_dict = bool(names_read(tree) & dicts)
        if not variants and not uses_dict:
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
        tree = tree.visit(_DictLookupReplacer(self, analysis.attention_dicts))
        return tree.visit(_ImportPrimaryInstead(self, analysis.attention_dicts))

    @staticmethod
    def _defines_dict(stmt: cst.CSTNode, dicts: set[str]) -> bool:
        assign = single_assign(stmt)
        return bool(assign) and isinstance(assign[0][0], cst.Name) and assign[0][0].value in dicts


class _DictLookupReplacer(SharingTransformer):
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


class _ImportPrimaryInstead(SharingTransformer):
    """`from .modeling_x import X_ATTENTION_CLASSES` -> `from .modeling_x import XAttention`:
    the dict is gone from the file that defined it; the eager class is what the lookups became."""

    def __init__(self, transform: Transform, dicts: dict[str, dict[str, str]]):
        self.transform = transform
        self.dicts = dicts

    def leave_ImportFrom(self, original: cst.ImportFrom, updated: cst.ImportFrom):
        if isinstance(updated.names, cst.ImportStar):
            return updated
        imported = {dotted(a.name) for a in updated.names}
        names = []
        for alias in updated.names:
            name = dotted(alias.name)
            if name in self.dicts:
                primary = self.dicts[name]["eager"]
                self.transform.record(original, f"imports {primary} instead of the removed {name}")
                if primary in imported:
                    continue
                imported.add(primary)
                alias = alias.with_changes(name=cst.Name(primary), asname=None)
            names.append(alias)
        if len(names) == len(updated.names) and all(a is b for a, b in zip(names, updated.names, strict=True)):
            return updated
        if not names:
            return cst.RemoveFromParent()
        names[-1] = names[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
        return updated.with_changes(names=names)
