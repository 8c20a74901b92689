"""Heads folded into the batch statement by statement, undone for the attention interface.

Some legacy attention folds q, k and v into `(batch * heads, seq, head_dim)` with one
reshape per tensor rather than a shared shape tuple (the form `attention_layout` handles),
multiplies with `bmm` or `baddbmm`, and views the scores to four dimensions for the mask:

    q = q.reshape(batch * self.num_heads, -1, self.head_dim)
    k = k.reshape(batch * self.num_heads, -1, self.head_dim).transpose(1, 2)
    v = v.reshape(batch * self.num_heads, -1, self.head_dim)
    r = bias.baddbmm(batch1=q, batch2=k, beta=self.beta, alpha=self.inv_norm_factor)
    s = r.view(batch, self.num_heads, q_len, kv_len)
    ...softmax, mask...
    p2 = p.view(batch * self.num_heads, q_len, kv_len)
    out = torch.bmm(p2, v)
    out = self._merge_heads(out)

Rewritten, q, k and v stay `[batch, heads, seq, head_dim]` (the interface's layout, B1):
the folding reshapes go (a swap of axes before them, `x.transpose(1, 2).reshape(...)` from
`[batch, seq, heads, dim]`, stays); the scores become `torch.matmul(q, k.transpose(2, 3))`
times `alpha`; a bias given to `baddbmm` (`beta * bias + alpha * q k^T`, an ALiBi table in
`(batch * heads, rows, kv)`) is reshaped to `[batch, heads, rows, kv]` before the product
and added to the scores after it, so the interface can pass it as `position_bias`; a key
length named in the views becomes the key's own length; the views back and forth go, and a
merge of `(batch * heads, seq, dim)` into `(batch, seq, hidden)` becomes one of
`[batch, heads, seq, dim]`. A `baddbmm` whose `beta` is 0 ignores its input tensor.
Anything else is left as it is, for attention_interface to report.
"""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst

from transforms.cst_utils import (
    SharingTransformer,
    assigned_names,
    call_name,
    code_of,
    dotted,
    is_self_attr,
    last_part,
    names_loaded,
    names_read,
    parse_stmts,
    single_assign,
    walk,
)

RESHAPES = ("view", "reshape")
# Swaps that bring `[batch, seq, heads, dim]` to `[batch, heads, seq, dim]` (transposed=False)
# or to `[batch, heads, dim, seq]` (transposed=True), as (method, arguments without spaces).
TO_HEADS_FIRST = {("transpose", "(1,2)"): False, ("transpose", "(2,1)"): False, ("permute", "(0,2,1,3)"): False,
                  ("permute", "(0,2,3,1)"): True}
KEY_TRANSPOSES = {"(1,2)", "(2,1)", "(-1,-2)", "(-2,-1)"}
ZERO = {"0", "0.0"}
ONE = {"1", "1.0"}


@dataclass
class Folded:
    """A tensor folded to three dimensions: where, and in what layout it was before."""

    index: int
    heads_first: str  # the `[batch, heads, seq, dim]` expression the fold started from
    transposed: bool  # folded as `(batch * heads, dim, seq)` (a key ready for bmm)


def unfold_reshaped_heads(body: list[cst.BaseStatement], methods: dict[str, cst.FunctionDef]):
    """The forward statements with heads kept apart, or None when they are not of this shape."""
    folds = _folds(body)
    score = _score_product(body, folds)
    if score is None:
        return None
    score_index, query, key, bias, beta, alpha = score
    if not _folded_only_cached_or_measured(body, folds, score_index):
        return None
    view_index, scores, batch, heads, kv_len = _four_dim_view(body, score_index)
    if view_index is None:
        return None
    probs_index, probs, folded_probs = _folded_probs(body, view_index)
    if probs_index is None:
        return None
    output_index, output, value = _output_product(body, probs_index, folded_probs, folds)
    if output_index is None or value is None:
        return None
    merge_index = _merge_after(body, output_index, output, methods)
    if merge_index is None:
        return None
    product_target = next(iter(assigned_names(body[score_index])))
    reads_elsewhere = [i for i, s in enumerate(body) if i not in (score_index, view_index) and product_target in names_read(s)]
    if reads_elsewhere:
        return None

    new_body: list[cst.BaseStatement] = []
    key_length = f"{key}.shape[-2]"
    for index, stmt in enumerate(body):
        fold = next((f for f in folds.values() if f.index == index), None)
        if fold is not None and index < score_index:
            name = next(iter(assigned_names(stmt)))
            if fold.heads_first != name:
                new_body.append(stmt.with_deep_changes(stmt.body[0], value=cst.parse_expression(fold.heads_first)))
            continue
        if index == score_index:
            if bias is not None:
                scaled = "" if beta in ONE else f"{beta} * "
                # `(batch * heads, rows, kv)` or, built per query row, `[batch, heads, q, kv]` already
                unfolded = f"{bias}.reshape({batch}, {heads}, -1, {bias}.shape[-1])"
                new_body += _with_lines(parse_stmts(f"{bias} = {scaled}{unfolded}\n"), stmt)
                stmt = stmt.with_changes(leading_lines=[])
            product = f"torch.matmul({query}, {key}.transpose(2, 3))" + ("" if alpha in ONE else f" * {alpha}")
            line = f"{scores} = {product}\n" + (f"{scores} = {scores} + {bias}\n" if bias is not None else "")
            new_body += _with_lines(parse_stmts(line), stmt)
            continue
        if index in (view_index, probs_index):
            continue
        if index == output_index:
            new_body += _with_lines(parse_stmts(f"{output} = torch.matmul({probs}, {value})\n"), stmt)
            continue
        if index == merge_index:
            new_body += _with_lines(parse_stmts(f"{output} = {output}.transpose(1, 2).flatten(2)\n"), stmt)
            continue
        if score_index < index < probs_index and kv_len and kv_len in names_read(stmt):
            stmt = stmt.visit(_Replace(kv_len, key_length))
        new_body.append(stmt)
    return _without_key_length(new_body, kv_len)


def _with_lines(stmts: list[cst.BaseStatement], original: cst.BaseStatement) -> list[cst.BaseStatement]:
    """New statements that keep the comments and blank lines above the one they replace."""
    return [stmts[0].with_changes(leading_lines=original.leading_lines), *stmts[1:]]


# -- the folds ------------------------------------------------------------------------------
def _folds(body) -> dict[str, Folded]:
    """`x = <x, maybe axes swapped>.reshape(a * b, m, n)[.transpose(1, 2)]` statements."""
    found = {}
    for index, stmt in enumerate(body):
        assign = single_assign(stmt)
        if not assign or len(assign[0]) != 1 or not isinstance(assign[0][0], cst.Name):
            continue
        name = assign[0][0].value
        value, transposed = assign[1], False
        if _is_call(value, "transpose") and _args(value) in KEY_TRANSPOSES:
            value, transposed = value.func.value, True
        if not (isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute) and value.func.attr.value in RESHAPES):
            continue
        if len(value.args) != 3 or not _is_product(value.args[0].value):
            continue
        source = value.func.value
        if dotted(source) == name:
            found[name] = Folded(index, name, transposed)
            continue
        swap = (source.func.attr.value, _args(source)) if _is_call(source) else None
        if swap in TO_HEADS_FIRST and dotted(source.func.value) == name:
            # `[batch, seq, heads, dim]` -> `[batch, heads, seq, dim]` as the interface takes it
            found[name] = Folded(index, f"{name}.transpose(1, 2)", transposed != TO_HEADS_FIRST[swap])
    return found


def _folded_only_cached_or_measured(body, folds: dict[str, Folded], score_index: int) -> bool:
    """Between its fold and the scores, a folded tensor may only go through the Cache API
    (`k, v = cache.update(k, v, ...)`, unchanged by the layout) or have its shape read
    (`_, _, kv_len = k.shape`): anything else (a concatenation along a folded axis) would
    mean something else once the heads are apart."""
    fold_indices = {f.index for f in folds.values()}
    for name, fold in folds.items():
        for index in range(fold.index + 1, score_index):
            stmt = body[index]
            if name not in names_read(stmt) or index in fold_indices:
                continue
            updates = any(isinstance(c, cst.Call) and last_part(call_name(c)) == "update" for c in walk(stmt))
            assign = single_assign(stmt)
            measured = assign is not None and dotted(assign[1]) == f"{name}.shape"
            if not (updates or measured):
                return False
    return True


def _is_call(node, method: str | None = None) -> bool:
    return isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) and (method is None or node.func.attr.value == method)


def _args(call: cst.Call) -> str:
    return "(" + ",".join(code_of(a.value).replace(" ", "") for a in call.args) + ")"


def _is_product(node) -> bool:
    return isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Multiply)


# -- the math -------------------------------------------------------------------------------
def _keyword(call: cst.Call, name: str):
    return next((a.value for a in call.args if a.keyword and a.keyword.value == name), None)


def _score_product(body, folds: dict[str, Folded]):
    """(index, query, key, bias or None, beta, alpha) of `bmm`/`baddbmm` on folded q and k."""
    for index, stmt in enumerate(body):
        assign = single_assign(stmt)
        if not assign or len(assign[0]) != 1 or not isinstance(assign[0][0], cst.Name):
            continue
        call = assign[1]
        name = last_part(call_name(call)) if isinstance(call, cst.Call) else ""
        if name not in ("bmm", "baddbmm"):
            continue
        positional = [a.value for a in call.args if a.keyword is None]
        bias = None
        if name == "baddbmm":
            method = isinstance(call.func, cst.Attribute) and dotted(call.func.value) not in ("torch", None)
            bias = call.func.value if method else (positional.pop(0) if positional else _keyword(call, "input"))
        operands = positional + [v for v in (_keyword(call, "batch1"), _keyword(call, "batch2")) if v is not None]
        if len(operands) != 2:
            return None
        query, key = dotted(operands[0]), dotted(operands[1])
        if key is None and _is_call(operands[1], "transpose") and _args(operands[1]) in KEY_TRANSPOSES:
            key = dotted(operands[1].func.value)
            if key in folds and folds[key].transposed:
                return None
            folds = {**folds, key: Folded(folds[key].index, folds[key].heads_first, True)} if key in folds else folds
        if query not in folds or key not in folds or folds[query].transposed or not folds[key].transposed:
            return None
        beta = code_of(_keyword(call, "beta")) if _keyword(call, "beta") is not None else "1"
        alpha = code_of(_keyword(call, "alpha")) if _keyword(call, "alpha") is not None else "1"
        if bias is not None and beta in ZERO:
            bias = None
        if bias is not None and not isinstance(bias, cst.Name):
            return None
        return index, query, key, bias.value if bias is not None else None, beta, alpha
    return None


def _four_dim_view(body, score_index: int):
    """(index, scores, batch, heads, key length) of `s = r.view(batch, heads, q_len, kv_len)`."""
    target = next(iter(assigned_names(body[score_index])))
    for index in range(score_index + 1, len(body)):
        assign = single_assign(body[index])
        value = assign[1] if assign else None
        if _is_call(value) and value.func.attr.value in RESHAPES and dotted(value.func.value) == target and len(value.args) == 4:
            if len(assign[0]) == 1 and isinstance(assign[0][0], cst.Name):
                batch, heads, _, kv_len = (code_of(a.value) for a in value.args)
                return index, assign[0][0].value, batch, heads, kv_len if kv_len.isidentifier() else None
        if target in names_read(body[index]):
            break
    return None, None, None, None, None


def _folded_probs(body, after: int):
    """(index, probs, folded name) of `p2 = p.view(batch * heads, q_len, kv_len)` after the softmax."""
    for index in range(after + 1, len(body)):
        assign = single_assign(body[index])
        value = assign[1] if assign else None
        if _is_call(value) and value.func.attr.value in RESHAPES and len(value.args) == 3 and _is_product(value.args[0].value):
            if dotted(value.func.value) and len(assign[0]) == 1 and isinstance(assign[0][0], cst.Name):
                return index, dotted(value.func.value), assign[0][0].value
    return None, None, None


def _output_product(body, probs_index: int, folded_probs: str, folds: dict[str, Folded]):
    """(index, output, value) of `out = torch.bmm(p2, v)` with a folded v."""
    for index in range(probs_index + 1, len(body)):
        assign = single_assign(body[index])
        value = assign[1] if assign else None
        if isinstance(value, cst.Call) and last_part(call_name(value)) == "bmm" and len(value.args) == 2:
            probs, values = (dotted(a.value) for a in value.args)
            if probs == folded_probs and values in folds and not folds[values].transposed and isinstance(assign[0][0], cst.Name):
                return index, assign[0][0].value, values
            return None, None, None
    return None, None, None


def _merge_after(body, output_index: int, output: str, methods) -> int | None:
    """The statement after the product that merges `(batch * heads, seq, dim)` into
    `(batch, seq, hidden)`: a method that permutes the heads after the sequence."""
    if output_index + 1 >= len(body):
        return None
    assign = single_assign(body[output_index + 1])
    if not assign or dotted(assign[0][0]) != output or not isinstance(assign[1], cst.Call):
        return None
    func = assign[1].func
    if not is_self_attr(func) or func.attr.value not in methods or [dotted(a.value) for a in assign[1].args] != [output]:
        return None
    text = code_of(methods[func.attr.value]).replace(" ", "")
    return output_index + 1 if "permute(0,2,1,3)" in text or "transpose(1,2)" in text else None


def _without_key_length(body, kv_len: str | None):
    """The statements that assign the key length named in the views, once nothing reads it
    (`kv_len = cache_position[-1] + 1`, or `_, _, kv_len = key.shape` on the folded key,
    which would fail on four dimensions)."""
    if not kv_len or any(kv_len in names_loaded(s) for s in body):
        return body
    return [s for s in body if assigned_names(s) - {"_"} != {kv_len} or not single_assign(s)]


class _Replace(SharingTransformer):
    """Every read of a name replaced by an expression."""

    def __init__(self, name: str, code: str):
        self.name, self.expr = name, cst.parse_expression(code)

    def leave_Attribute(self, original, updated):
        return updated.with_changes(attr=original.attr)  # attribute names are not reads

    def leave_Name(self, original, updated):
        return self.expr if updated.value == self.name else updated
