"""Whether a causal-mask buffer that the attention math reads is plain causality.

Legacy code of the GPT-2 lineage masks the scores with a registered boolean buffer
(`torch.where(self.bias[..., k - q : k, :k], scores, min)`). The routing drops that buffer,
because the mask from `masking_utils` already holds causality. That is only faithful when
the buffer is a plain lower triangle; a buffer narrowed further in `__init__` (a band kept
with `bitwise_xor(bias, tril(bias, -window))` for local layers, a `triu`, an offset
diagonal) holds a window that the one causal mask would silently drop, so it is refused.
"""

from __future__ import annotations

import libcst as cst

from transforms.cst_utils import call_name, code_of, dotted, is_self_attr, last_part, single_assign, walk

# Calls that build or reshape a lower triangle of ones without changing which entries are set.
TRIANGLE_CALLS = {"tril", "ones", "ones_like", "full", "view", "reshape", "expand", "unsqueeze", "bool", "to", "type",
                  "byte", "int", "long", "float", "cuda", "cpu", "contiguous"}


WINDOW_SWITCHES = "window_switches"  # fact: attention class -> (test, window) of its narrowed buffer


def buffers_read_by_where(stmts: list[cst.BaseStatement]) -> set[str]:
    """Names `X` of the `self.X[...]` buffers that the math reads as a `torch.where` condition,
    directly or through a local (`causal_mask = self.bias[...]`)."""
    sources = {}
    for node in (n for s in stmts for n in walk(s)):
        assign = single_assign(node) if isinstance(node, cst.SimpleStatementLine) else None
        if assign and isinstance(assign[0][0], cst.Name):
            buffer = _self_buffer(assign[1])
            if buffer:
                sources[assign[0][0].value] = buffer
    found = set()
    for node in (n for s in stmts for n in walk(s)):
        if isinstance(node, cst.Call) and last_part(call_name(node)) == "where" and len(node.args) == 3:
            condition = node.args[0].value
            found |= {b for b in (_self_buffer(condition), sources.get(dotted(condition) or "")) if b}
    return found


def _self_buffer(node: cst.BaseExpression) -> str | None:
    while isinstance(node, cst.Subscript):
        node = node.value
    return node.attr.value if isinstance(node, cst.Attribute) and is_self_attr(node) else None


def narrowed_buffer_call(init: cst.FunctionDef, buffer: str) -> cst.Call | None:
    """The first call in what `__init__` registers as `buffer` that is not part of building a
    plain lower triangle (a `tril` with an offset counts); None when the buffer is plain."""
    registered = None
    for node in walk(init):
        if isinstance(node, cst.Call) and last_part(call_name(node)) == "register_buffer" and len(node.args) >= 2:
            name = node.args[0].value
            if isinstance(name, cst.SimpleString) and name.evaluated_value == buffer:
                registered = node.args[1].value
    if registered is None:
        return None
    sources = [registered]
    if isinstance(registered, cst.Name):  # built in a local first, maybe over several statements
        sources += [
            n.value for n in walk(init)
            if isinstance(n, cst.Assign) and any(code_of(t.target) == registered.value for t in n.targets)
        ]
    for source in sources:
        for call in (n for n in walk(source) if isinstance(n, cst.Call)):
            name = last_part(call_name(call))
            offset = name == "tril" and (len(call.args) > 1 or any(a.keyword for a in call.args))
            if name not in TRIANGLE_CALLS or offset:
                return call
    return None


def window_narrowing(init: cst.FunctionDef, call: cst.Call) -> tuple[str, str] | None:
    """(test, window) when the narrowing `call` is a sliding window chosen by a switch of
    `__init__`: `if <test>: bias = torch.bitwise_xor(bias, torch.tril(bias, -<window>))`.
    The band keeps the keys k with 0 <= q - k < window: masking_utils' sliding window."""
    if last_part(call_name(call)) != "bitwise_xor" or len(call.args) != 2:
        return None
    kept, lower = (a.value for a in call.args)
    if not (isinstance(lower, cst.Call) and last_part(call_name(lower)) == "tril" and len(lower.args) == 2):
        return None
    offset = lower.args[1].value
    if code_of(lower.args[0].value) != code_of(kept) or not (
        isinstance(offset, cst.UnaryOperation) and isinstance(offset.operator, cst.Minus)
    ):
        return None
    for node in walk(init):
        if isinstance(node, cst.If) and node.orelse is None and any(n is call for n in walk(node.body)):
            statements = node.body.body
            if len(statements) == 1 and any(n is call for n in walk(statements[0])):
                return code_of(node.test), code_of(offset.expression)
    return None
