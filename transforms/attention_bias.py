"""Position biases computed inside the attention forward (T5-style relative buckets).

Legacy code often builds an additive bias between the q @ k^T product and the softmax:

    scores = torch.matmul(q, k.transpose(2, 3))
    position_bias = self.compute_bias(q_len, k_len, device=scores.device)
    scores = scores + position_bias

The bias does not depend on the scores' values, only on their device or dtype, so it can be
computed before the attention call and handed to the interface as `position_bias` (CONTRACT
B2), where sdpa and flex add it too. `hoist_position_bias` moves such statements in front
of the score product, reading the device and dtype from the query instead of the scores.
Statements that read the scores' values, or anything else the math computes, stay where
they are (and the port refuses them later, with their line).
"""

from __future__ import annotations

import libcst as cst

from transforms.attention_math import NotUnderstood, find_math
from transforms.cst_utils import SharingTransformer, assigned_names, dotted, names_read, walk

SCORE_METADATA = ("device", "dtype")


def hoist_position_bias(
    stmts: list[cst.BaseStatement], head_attr: str | None, mask: str | None = None
) -> list[cst.BaseStatement]:
    """`stmts` with bias-building statements between the scores and the softmax moved before the
    scores. `mask` names the attention mask parameter: the interface passes it to the math as it
    is, so a block that slices it stays in the math whole."""
    try:
        math = find_math(stmts, head_attr)
    except NotUnderstood:
        return stmts
    scores = assigned_names(stmts[math.score_index])
    split = _split_bias_blocks(stmts, math.score_index, math.softmax_index, scores, mask)
    if split is not stmts:
        hoisted_split = hoist_position_bias(split, head_attr, mask)
        # Splitting only helps when the bias-building half then moves; otherwise keep the block whole.
        return hoisted_split if hoisted_split is not split else stmts
    hoisted = _hoistable(stmts, math, scores)
    if not hoisted:
        return stmts
    query = math.query
    moved = [stmts[i].visit(_ReadFromQuery(scores, query)) for i in hoisted]
    kept = [s for i, s in enumerate(stmts) if i not in hoisted]
    at = math.score_index
    moved[0] = moved[0].with_changes(leading_lines=stmts[at].leading_lines)
    kept[at] = kept[at].with_changes(leading_lines=[])
    return [*kept[:at], *moved, *kept[at:]]


def _hoistable(stmts: list[cst.BaseStatement], math, scores: set[str]) -> list[int]:
    """Indices between the scores and the softmax that build what is added to the scores, with
    the statements that compute what they read (`k_len = ...` before a slice of the bias)."""
    region = range(math.score_index + 1, math.softmax_index)
    kept_out = scores | {math.query, math.key, math.value}
    written = {i: bound_names(stmts[i]) for i in region}
    hoisted: set[int] = set()
    changed = True
    while changed:  # grow: what feeds the scores, then what feeds a statement already taken
        changed = False
        for i in region:
            if i in hoisted or not written[i] or written[i] & kept_out:
                continue
            later = [stmts[j] for j in region if j > i]
            if _feeds_scores(written[i], later, scores) or any(written[i] & names_read(stmts[j]) for j in hoisted if j > i):
                hoisted.add(i)
                changed = True
    changed = True
    while changed:  # shrink: a moved statement may read nothing the math computes in place
        changed = False
        computed = set(scores)
        for i in region:
            if i not in hoisted:
                computed |= written[i]
            elif names_read(_without_metadata(stmts[i], scores)) & computed:
                hoisted.discard(i)
                changed = True
                break
    return sorted(hoisted)


def _split_bias_blocks(
    stmts: list[cst.BaseStatement], start: int, end: int, scores: set[str], mask: str | None
) -> list[cst.BaseStatement]:
    """`if bias is not None: <slice bias>; scores = scores + bias` between the scores and the
    softmax becomes two blocks under the same test, `if ...: <slice bias>` and
    `if ...: scores = scores + bias`, so that the first can move. The test must stay true
    across the first half: it is `name is not None` and the half rebinds `name` only to
    subscripts of itself (a slice of a tensor is never None)."""
    out = list(stmts)
    for index in range(start + 1, end):
        stmt = stmts[index]
        if not (isinstance(stmt, cst.If) and stmt.orelse is None and isinstance(stmt.body, cst.IndentedBlock)):
            continue
        *build, add = stmt.body.body
        if not build or not assigned_names(add) & scores or any(bound_names(s) & scores for s in build):
            continue
        if not _stays_not_none(stmt.test, build) or dotted(stmt.test.left) == mask:
            continue
        out[index : index + 1] = [
            stmt.with_changes(body=stmt.body.with_changes(body=build)),
            stmt.with_changes(body=stmt.body.with_changes(body=[add.with_changes(leading_lines=[])]), leading_lines=[]),
        ]
        return out
    return stmts


def _stays_not_none(test: cst.BaseExpression, build: list[cst.BaseStatement]) -> bool:
    if not (
        isinstance(test, cst.Comparison)
        and len(test.comparisons) == 1
        and isinstance(test.comparisons[0].operator, cst.IsNot)
        and isinstance(test.comparisons[0].comparator, cst.Name)
        and test.comparisons[0].comparator.value == "None"
        and isinstance(test.left, cst.Name)
    ):
        return False
    name = test.left.value
    for node in (n for s in build for n in walk(s) if isinstance(n, cst.Assign)):
        if name in assigned_names(cst.SimpleStatementLine(body=[node])):
            value = node.value
            if not (isinstance(value, cst.Subscript) and dotted(value.value) == name):
                return False
    return True


def bound_names(stmt: cst.CSTNode) -> set[str]:
    """Names a statement assigns, in its branches too (`if bias is None: bias = ...`)."""
    return set().union(set(), *(assigned_names(n) for n in walk(stmt) if isinstance(n, cst.SimpleStatementLine)))


def added_operands(stmt: cst.CSTNode):
    """The names on both sides of every `a + b` and `a += b` in `stmt`, one set per addition."""
    for node in walk(stmt):
        if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Add):
            yield {dotted(node.left), dotted(node.right)}
        elif isinstance(node, cst.AugAssign) and isinstance(node.operator, cst.AddAssign):
            yield {dotted(node.target), dotted(node.value)}


def _feeds_scores(written: set[str], later: list[cst.BaseStatement], scores: set[str]) -> bool:
    """Whether a later statement adds one of `written` to the scores."""
    return any(operands & scores and operands & written for stmt in later for operands in added_operands(stmt))


def _without_metadata(stmt: cst.CSTNode, scores: set[str]) -> cst.CSTNode:
    """`stmt` with `scores.device` / `scores.dtype` taken out, to see what else it reads."""
    return stmt.visit(_ReadFromQuery(scores, "_"))


class _ReadFromQuery(SharingTransformer):
    """`scores.device` -> `query.device`: the scores live where the query does, in its dtype."""

    def __init__(self, scores: set[str], query: str):
        self.scores, self.query = scores, query

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.BaseExpression:
        if dotted(updated.value) in self.scores and updated.attr.value in SCORE_METADATA:
            return updated.with_changes(value=cst.Name(self.query))
        return updated
