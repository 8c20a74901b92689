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


def hoist_position_bias(stmts: list[cst.BaseStatement], head_attr: str | None) -> list[cst.BaseStatement]:
    """`stmts` with bias-building statements between the scores and the softmax moved before the scores."""
    try:
        math = find_math(stmts, head_attr)
    except NotUnderstood:
        return stmts
    scores = assigned_names(stmts[math.score_index])
    computed = set(scores)  # names the math assigns up to the statement being looked at
    hoisted: list[int] = []
    for index in range(math.score_index + 1, math.softmax_index):
        stmt = stmts[index]
        written = bound_names(stmt)
        reads = names_read(_without_metadata(stmt, scores))
        if written and not written & (scores | {math.query, math.key, math.value}) and not reads & computed:
            if _feeds_scores(written, stmts[index + 1 : math.softmax_index], scores):
                hoisted.append(index)
                continue
        computed |= written
    if not hoisted:
        return stmts
    query = math.query
    moved = [stmts[i].visit(_ReadFromQuery(scores, query)) for i in hoisted]
    kept = [s for i, s in enumerate(stmts) if i not in hoisted]
    at = math.score_index
    moved[0] = moved[0].with_changes(leading_lines=stmts[at].leading_lines)
    kept[at] = kept[at].with_changes(leading_lines=[])
    return [*kept[:at], *moved, *kept[at:]]


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
