"""Config properties that transformers 5 keeps only as deprecated aliases, read by their name now.

- `config.use_return_dict` -> `config.return_dict`

In transformers 5 the property returns `return_dict` and logs a deprecation warning (in 4.x
it also folded in `torchscript`, which transformers 5 removed), so the read is the same
value without the warning, and keeps working once the alias goes. Only reads are
rewritten. Code that defines such a name itself (`self.use_return_dict = ...`, a method or
property of that name) keeps every use of it: the name is then the code's own.
"""

from __future__ import annotations

import re

import libcst as cst

from transforms.base import Transform
from transforms.cst_utils import SharingTransformer, code_of, module_code, walk

# deprecated config property -> the attribute it returns in transformers 5
DEPRECATED_READS = {"use_return_dict": "return_dict"}


class DeprecatedConfigReads(Transform):
    name = "deprecated-config-reads"
    summary = "Read config.return_dict instead of its deprecated alias use_return_dict."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        sources = list(self.state.original_code.values()) or [module_code(t) for t in self.state.trees.values()]
        names = {name for name in DEPRECATED_READS if any(name in source for source in sources)}
        if names and any(_may_define(name, source) for name in names for source in sources):
            names -= _defined_by_the_code(self.state.trees)
        body = [self._rewrite(stmt, names) for stmt in tree.body] if names else tree.body
        return tree if all(new is old for new, old in zip(body, tree.body, strict=True)) else tree.with_changes(body=body)

    def _rewrite(self, node: cst.CSTNode, names: set[str]) -> cst.CSTNode:
        """Only the statements (a class: the members) that read a name are visited: a pass
        over every attribute of the module would cost more than all the reads are worth."""
        if isinstance(node, cst.ClassDef):
            members = [self._rewrite(member, names) for member in node.body.body]
            if all(new is old for new, old in zip(members, node.body.body, strict=True)):
                return node
            return node.with_changes(body=node.body.with_changes(body=members))
        if any(isinstance(n, cst.Attribute) and n.attr.value in names for n in walk(node)):
            return node.visit(_Reads(self, names))
        return node


def _may_define(name: str, source: str) -> bool:
    """The text could assign or define `name` (checked on the trees only then)."""
    return re.search(rf"(def\s+{name}\b|\.{name}\s*(:|[-+*/]?=(?!=)))", source) is not None


def _defined_by_the_code(trees: dict[str, cst.Module]) -> set[str]:
    """Deprecated names that some code file assigns as an attribute or defines as a function."""
    defined = set()
    for tree in trees.values():
        for node in walk(tree):
            if isinstance(node, cst.FunctionDef) and node.name.value in DEPRECATED_READS:
                defined.add(node.name.value)
            targets = node.targets if isinstance(node, cst.Assign) else (
                [node] if isinstance(node, (cst.AnnAssign, cst.AugAssign)) else [])
            for target in targets:
                if isinstance(target.target, cst.Attribute) and target.target.attr.value in DEPRECATED_READS:
                    defined.add(target.target.attr.value)
    return defined


class _Reads(SharingTransformer):
    def __init__(self, transform: Transform, names: set[str]):
        self.transform = transform
        self.names = names

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.BaseExpression:
        deprecated = updated.attr.value
        if deprecated not in self.names:
            return updated
        current = DEPRECATED_READS[deprecated]
        self.transform.record(original, f"{code_of(original)} -> .{current}: a deprecated alias in transformers 5")
        return updated.with_changes(attr=cst.Name(current))
