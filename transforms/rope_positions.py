"""Rotary tables sized to cover every position asked for (CONTRACT C3, C5).

Legacy attention asks its rotary module for tables of the key length,
`self.rotary_emb(value_states, seq_len=kv_seq_len)`, then indexes them with
`position_ids`. That holds while positions never exceed the key length. Engines and
transformers' continuous batching break it: they keep the cache themselves, so a decode
step holds a few tokens at positions far past that length, and the lookup fails. The
length becomes `max(length, position_ids.max() + 1)`: the same tables wherever the legacy
code worked, and long enough everywhere else.
"""

from __future__ import annotations

import libcst as cst

from transforms.base import Transform
from transforms.cst_utils import (
    SharingTransformer,
    code_of,
    function_defs,
    is_self_attr,
    names_read,
    param_names,
    parse_expr,
)

COVERED = "max({length}, int(position_ids.max()) + 1) if position_ids is not None else {length}"


class RopePositions(Transform):
    name = "rope-positions"
    summary = "Size rotary tables by the largest position_id, not by the key length."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        names = {n for n in analysis.attention if analysis.classes[n].file == self.filename}
        return self.rewrite_classes(tree, names, self._rewrite_class) if names else tree

    def _rewrite_class(self, cls: cst.ClassDef) -> cst.ClassDef:
        # forward, or the helper it hands position_ids to (`_attn_projections_and_rope`)
        methods = {m: n for n, m in function_defs(cls).items() if "position_ids" in param_names(m)}
        if not methods:
            return cls
        body = [
            stmt.visit(_SizeByPositions(self, f"{cls.name.value}.{methods[stmt]}")) if stmt in methods else stmt
            for stmt in cls.body.body
        ]
        return cls.with_changes(body=cls.body.with_changes(body=body))


class _SizeByPositions(SharingTransformer):
    """`self.<module>(..., seq_len=L)` -> `self.<module>(..., seq_len=<L covering position_ids>)`."""

    def __init__(self, transform: RopePositions, owner: str):
        super().__init__()
        self.transform = transform
        self.owner = owner

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
        if not is_self_attr(updated.func):
            return updated
        args = list(updated.args)
        for i, arg in enumerate(args):
            if arg.keyword is None or arg.keyword.value != "seq_len" or "position_ids" in names_read(arg.value):
                continue
            length = code_of(arg.value)
            args[i] = arg.with_changes(value=parse_expr(COVERED.format(length=length)))
            self.transform.record(
                original, f"{self.owner}: {code_of(updated.func)} tables cover position_ids, not only {length}"
            )
            return updated.with_changes(args=args)
        return updated
