"""Cache methods that transformers 5 removed, replaced by their current equivalents (C4).

- `cache.get_usable_length(n[, layer])`  -> `cache.get_seq_length([layer])`
- `DynamicCache.from_legacy_cache(x)`    -> `x if isinstance(x, Cache) else DynamicCache(config=self.config)`
- `cache.to_legacy_cache()`              -> `cache` (the Cache object is what callers get now)
- `cache.seen_tokens`                    -> `cache.get_seq_length()`
"""

from __future__ import annotations

import libcst as cst
from libcst.codemod.visitors import AddImportsVisitor

from transforms.base import Transform
from transforms.cst_utils import SharingTransformer, code_of, dotted, parse_expr


class ModernCacheAPI(Transform):
    name = "cache-api"
    summary = "Replace removed Cache methods (get_usable_length, from/to_legacy_cache, seen_tokens)."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        return tree.visit(_CacheCalls(self))


class _CacheCalls(SharingTransformer):
    def __init__(self, transform: Transform):
        self.transform = transform
        self.targets: set[int] = set()  # assignment targets are written, never rewritten

    def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
        self.targets.add(id(node.target))

    def visit_AugAssign(self, node: cst.AugAssign) -> None:
        self.targets.add(id(node.target))

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        func = updated.func
        if not isinstance(func, cst.Attribute):
            return updated
        method = func.attr.value
        owner = code_of(func.value)
        if method == "get_usable_length":
            layer = [a for a in updated.args[1:2]]
            args = f"{code_of(layer[0].value)}" if layer else ""
            self.transform.record(original, f"{owner}.get_usable_length(...) -> get_seq_length({args})")
            return parse_expr(f"{owner}.get_seq_length({args})")
        if method == "from_legacy_cache" and updated.args:
            legacy = code_of(updated.args[0].value)
            AddImportsVisitor.add_needed_import(self.transform.context, "transformers.cache_utils", "Cache")
            self.transform.record(original, f"{owner}.from_legacy_cache({legacy}) -> a {owner} built for the config")
            return parse_expr(f"({legacy} if isinstance({legacy}, Cache) else {owner}(config=self.config))")
        if method == "to_legacy_cache" and not updated.args:
            self.transform.record(original, f"{owner}.to_legacy_cache() -> {owner}")
            return func.value
        return updated

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.BaseExpression:
        if id(original) in self.targets:
            return updated
        if updated.attr.value == "seen_tokens" and dotted(updated.value) not in (None, "self"):
            self.transform.record(original, f"{code_of(updated.value)}.seen_tokens -> get_seq_length()")
            return parse_expr(f"{code_of(updated.value)}.get_seq_length()")
        return updated
