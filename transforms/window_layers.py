"""A sliding window that only a flash kernel applied is declared off (CONTRACT F2, C4, C5).

Legacy code of the transformers 4.36-4.44 era (and the remote code copied from it) often
kept `sliding_window` in its config for one backend only: the `*FlashAttention2` class
passed it to `flash_attn_func` (and sliced a tuple cache by it), while the eager and sdpa
classes, and the masks the base model built, attended to the whole sequence. The eager
math is the reference; once the flash class is gone, nothing in the port applies a window.

transformers 5 reads the window from the config itself: `DynamicCache(config=...)`, which
`generate` builds, keeps only the last `sliding_window` keys of every layer, and continuous
batching's paged cache and masks do the same, unless `config.layer_types` says otherwise.
Generation past the window would then differ from the legacy model. So when a config class
sets `sliding_window`, defines no `layer_types`, and no ported code outside the config
classes reads `sliding_window` (logging aside), the config class gains a read-only
`layer_types` property naming every layer `"full_attention"`.
"""

from __future__ import annotations

import libcst as cst

from transforms.base import Transform
from transforms.config_defaults import _is_config
from transforms.cst_utils import code_of, function_defs, parse_stmts, walk

WINDOW = "sliding_window"
LAYER_TYPES_PROPERTY = '''\
@property
def layer_types(self):
    # The legacy eager attention never applied `sliding_window` (only its flash kernel did):
    # every layer attends to the whole sequence, in transformers' caches too.
    return ["full_attention"] * self.num_hidden_layers
'''
LOGGING_CALLS = ("logger.", "logging.", "warnings.warn")


def _mentions(node: cst.CSTNode, name: str) -> bool:
    """`x.name`, `name=...`, the name itself, or the string "name" (getattr, dict keys)."""
    return any(
        (isinstance(n, cst.Attribute) and n.attr.value == name)
        or (isinstance(n, cst.Name) and n.value == name)
        or (isinstance(n, cst.SimpleString) and n.evaluated_value == name)
        for n in walk(node)
    )


def _only_logs(stmt: cst.CSTNode) -> bool:
    """`if <test>: logger.warning(...)`: a branch whose whole effect is a message."""
    if not isinstance(stmt, cst.If) or stmt.orelse is not None:
        return False
    return all(
        isinstance(s, cst.SimpleStatementLine)
        and all(isinstance(x, cst.Expr) and code_of(x.value).startswith(LOGGING_CALLS) for x in s.body)
        for s in stmt.body.body
    )


def _applies_window(module: cst.Module) -> bool:
    """Whether code outside config classes reads `sliding_window` for more than a message."""
    for stmt in module.body:
        if isinstance(stmt, cst.ClassDef) and _is_config(stmt):
            continue
        if _mentions(stmt, WINDOW) and _mentions(_without_logging(stmt), WINDOW):
            return True
    return False


def _without_logging(node: cst.CSTNode) -> cst.CSTNode:
    class _Strip(cst.CSTTransformer):
        def leave_If(self, original, updated):
            return cst.RemoveFromParent() if _only_logs(original) else updated

        def leave_IndentedBlock(self, original, updated):
            return updated if updated.body else updated.with_changes(body=[cst.SimpleStatementLine([cst.Pass()])])

    return node.visit(_Strip())


def _sets_window(cls: cst.ClassDef) -> bool:
    init = function_defs(cls).get("__init__")
    return init is not None and _mentions(init, WINDOW)


class FullAttentionLayers(Transform):
    name = "window-layers"
    summary = "Declare every layer full attention where the config's sliding_window only reached a flash kernel."
    leaves_interface_code = True

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        configs = [
            s for s in tree.body
            if isinstance(s, cst.ClassDef) and _is_config(s) and _sets_window(s) and not _mentions(s, "layer_types")
        ]
        if not configs:
            return tree
        modules = self.state.trees or self.state.analysis.modules
        if any(_applies_window(module) for module in modules.values()):
            return tree
        return self.rewrite_classes(tree, {c.name.value for c in configs}, self._declare_full_attention)

    def _declare_full_attention(self, cls: cst.ClassDef) -> cst.ClassDef:
        if not _mentions(cls, "num_hidden_layers"):
            self.refuse(
                cls,
                f"{cls.name.value} sets sliding_window, which no attention code applies, but no num_hidden_layers"
                " to declare its layers full attention by (expected `self.num_hidden_layers` in __init__)",
                cls.name.value,
            )
            return cls
        prop = parse_stmts(LAYER_TYPES_PROPERTY)[0].with_changes(leading_lines=[cst.EmptyLine(indent=False)])
        self.record(
            cls,
            f"{cls.name.value}: layer_types is every layer 'full_attention': sliding_window only reached the"
            " legacy flash kernel, and transformers' caches would otherwise slide it",
        )
        return cls.with_changes(body=cls.body.with_changes(body=[*cls.body.body, prop]))
