"""Give attention math that folds heads into the batch the `[batch, heads, seq, head_dim]` layout.

Encoder-style attention of the BART/CLIP family reshapes q, k and v to
`(batch * heads, seq, head_dim)` with a shape tuple (`proj_shape = (bsz * self.num_heads,
-1, self.head_dim)`), multiplies with `bmm`, and views the scores back to four dimensions
around every mask addition. The interface takes four-dimensional tensors (CONTRACT B1), so
this rewrite, run before [attention_interface], undoes the folding in place:

- `x = x.view(*proj_shape)` statements and `.view(*proj_shape)` suffixes go, with the
  shape tuple; `bmm(q, k.transpose(1, 2))` becomes `matmul(q, k.transpose(2, 3))` and
  `bmm(p, v)` becomes `matmul(p, v)`; `.view(...)` calls on the scores (no-ops once they
  are four-dimensional) and the view of the output back to four dimensions go; a key
  length read as `key.size(1)` becomes `key.size(2)`;
- a query scaled where it is projected (`q = self.q_proj(h) * self.scale`) stays so: the
  scores then take no scale, `scaling` is 1.0, and eager stays bit-identical to the legacy
  math (moving the scale onto the scores changes the rounding);
- a second additive mask (`causal_attention_mask`) is summed into the attention mask
  before the math, as transformers 5's own CLIP does, since the interface takes one mask;
- a dropout written to a new name (`probs = dropout(weights)`) keeps the weights' name,
  and an `if output_attentions:` block between softmax and output moves after the heads
  are restored: neither is part of the math the eager function runs.

Anything of this family that does not fit these forms is left as it is; attention_interface
then reports it.
"""

from __future__ import annotations

import libcst as cst

from transforms.attention_math import SOFTMAX, has_call, is_guard
from transforms.base import Transform
from transforms.cst_utils import (
    SharingTransformer,
    assigned_names,
    call_name,
    code_of,
    dotted,
    function_defs,
    last_part,
    names_read,
    param_names,
    parse_stmts,
    single_assign,
    walk,
)
from transforms.folded_heads import unfold_reshaped_heads

RESHAPES = {"view", "reshape"}


class UnflattenHeads(Transform):
    name = "attention-layout"
    summary = "Undo heads folded into the batch (bmm on (batch*heads, seq, dim)) before routing attention."
    leaves_interface_code = True

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        targets = {n for n in analysis.attention if analysis.classes[n].file == self.filename}
        return self.rewrite_classes(tree, targets, self._rewrite_class) if targets else tree

    def _rewrite_class(self, cls: cst.ClassDef) -> cst.ClassDef:
        forward = function_defs(cls).get("forward")
        if forward is None:
            return cls
        body = list(forward.body.body)
        shape_index, shape_name = _folded_shape(body)
        if shape_index is None:
            body = unfold_reshaped_heads(body, function_defs(cls))  # one reshape per tensor
        else:
            body = _unfold(body, shape_index, shape_name)
        if body is None:
            return cls
        combined = _combine_masks(body, forward)
        takes_causal_mask = combined is not body
        body = _keep_weights_name(combined)
        new_forward = forward.with_changes(body=forward.body.with_changes(body=body))
        self.record(forward, f"{cls.name.value}.forward: heads kept apart from the batch ([batch, heads, seq, dim])")
        init = function_defs(cls).get("__init__")
        new_init = init
        if takes_causal_mask and init is not None and "self.is_causal" not in code_of(init):
            # Callers hand the module its causal structure as a mask: the module is not causal
            # by itself, and a kernel given no mask must not make it so (a vision tower).
            new_init = init.with_changes(body=init.body.with_changes(body=[*init.body.body, *parse_stmts("self.is_causal = False\n")]))
            self.record(init, f"{cls.name.value}.__init__: is_causal = False: causality arrives as a mask argument")
        swap = {forward: new_forward, init: new_init}
        members = [swap.get(m, m) for m in cls.body.body]
        return cls.with_changes(body=cls.body.with_changes(body=members))


# -- finding the folded layout ---------------------------------------------------------------
def _folded_shape(body) -> tuple[int | None, str | None]:
    """`shape = (a * b, -1, c)`: a shape tuple whose first entry folds two sizes together."""
    for index, stmt in enumerate(body):
        assign = single_assign(stmt)
        if not assign or not isinstance(assign[0][0], cst.Name) or not isinstance(assign[1], cst.Tuple):
            continue
        elements = assign[1].elements
        first = elements[0].value if elements else None
        if len(elements) == 3 and isinstance(first, cst.BinaryOperation) and isinstance(first.operator, cst.Multiply):
            return index, assign[0][0].value
    return None, None


def _is_folding_call(node: cst.CSTNode, shape_name: str) -> bool:
    """`x.view(*shape)` / `x.reshape(*shape)`."""
    return (
        isinstance(node, cst.Call)
        and isinstance(node.func, cst.Attribute)
        and node.func.attr.value in RESHAPES
        and len(node.args) == 1
        and node.args[0].star == "*"
        and dotted(node.args[0].value) == shape_name
    )


class _StripReshapes(SharingTransformer):
    """Drop `.view(*shape)` suffixes, and `.view(...)` on the names given (scores, output)."""

    def __init__(self, shape_name: str, viewed: set[str]):
        self.shape_name, self.viewed = shape_name, viewed

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        if _is_folding_call(updated, self.shape_name):
            return updated.func.value
        func = updated.func
        if isinstance(func, cst.Attribute) and func.attr.value == "view" and dotted(func.value) in self.viewed:
            return func.value
        return updated


class _FourDimProducts(SharingTransformer):
    """`bmm(q, k.transpose(1, 2))` -> `matmul(q, k.transpose(2, 3))`; `bmm(p, v)` -> `matmul(p, v)`."""

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        if last_part(call_name(updated)) != "bmm" or not isinstance(updated.func, cst.Attribute):
            return updated
        args = list(updated.args)
        second = args[1].value if len(args) == 2 else None
        if isinstance(second, cst.Call) and isinstance(second.func, cst.Attribute) and second.func.attr.value == "transpose":
            if [code_of(a.value) for a in second.args] == ["1", "2"]:
                swapped = second.with_changes(args=[a.with_changes(value=cst.Integer(v)) for a, v in zip(second.args, "23", strict=True)])
                args[1] = args[1].with_changes(value=swapped)
        return updated.with_changes(func=updated.func.with_changes(attr=cst.Name("matmul")), args=args)


class _DropSelfAssignments(SharingTransformer):
    """`w = w`, left inside a block where a view was stripped."""

    def leave_SimpleStatementLine(self, original, updated):
        return cst.RemoveFromParent() if _is_self_assignment(updated) else updated


def _is_self_assignment(stmt: cst.CSTNode) -> bool:
    assign = single_assign(stmt)
    return bool(assign) and code_of(assign[0][0]) == code_of(assign[1])


def _unfold(body, shape_index: int, shape_name: str):
    """The statements with the folding undone, or None when the math is not of this family."""
    softmax_index = next((i for i, s in enumerate(body) if has_call(s, SOFTMAX)), None)
    if softmax_index is None or softmax_index < shape_index:
        return None
    folded = {
        name
        for stmt in body
        for node in walk(stmt)
        if _is_folding_call(node, shape_name)
        for name in assigned_names(stmt)
    }
    products = [i for i, s in enumerate(body) if has_call(s, {"bmm"})]
    if len(products) != 2 or not products[0] < softmax_index < products[1]:
        return None
    scores = next(iter(assigned_names(body[products[0]])), None)
    output = next(iter(assigned_names(body[products[1]])), None)
    key = _key_of(body[products[0]])
    if not (scores and output and key in folded):
        return None
    weights = _softmax_target(body[softmax_index])
    stripper = _StripReshapes(shape_name, {scores, weights} | _views_of(body, weights))
    new_body = []
    for index, stmt in enumerate(body):
        if index == shape_index:
            continue
        if index > products[1] and _views_back(stmt, output):
            continue  # `out = out.view(bsz, heads, q_len, dim)`: already four-dimensional
        stmt = stmt.visit(stripper).visit(_FourDimProducts()) if not is_guard(stmt) else stmt
        stmt = _key_length(stmt, key)
        if _is_self_assignment(stmt):
            continue
        new_body.append(stmt.visit(_DropSelfAssignments()))
    return new_body


def _views_of(body, weights: str) -> set[str]:
    """Names that hold a view of the weights (`reshaped = weights.view(b, h, q, k)`)."""
    found = set()
    for stmt in body:
        for node in walk(stmt):
            if isinstance(node, cst.Assign) and isinstance(node.value, cst.Call) and isinstance(node.targets[0].target, cst.Name):
                func = node.value.func
                if isinstance(func, cst.Attribute) and func.attr.value == "view" and dotted(func.value) == weights:
                    found.add(node.targets[0].target.value)
    return found


def _key_of(stmt) -> str | None:
    call = next((c for c in walk(stmt) if isinstance(c, cst.Call) and last_part(call_name(c)) == "bmm"), None)
    if call is None or len(call.args) != 2:
        return None
    second = call.args[1].value
    if isinstance(second, cst.Call) and isinstance(second.func, cst.Attribute):
        return dotted(second.func.value)
    return None


def _views_back(stmt, output: str) -> bool:
    assign = single_assign(stmt)
    if not assign or dotted(assign[0][0]) != output or not isinstance(assign[1], cst.Call):
        return False
    func = assign[1].func
    return isinstance(func, cst.Attribute) and func.attr.value == "view" and dotted(func.value) == output and len(assign[1].args) == 4


def _key_length(stmt, key: str):
    """`src_len = key.size(1)`: the sequence is the third dimension once heads are apart."""
    assign = single_assign(stmt)
    if not assign or not isinstance(assign[1], cst.Call):
        return stmt
    call = assign[1]
    if call_name(call) == f"{key}.size" and [code_of(a.value) for a in call.args] == ["1"]:
        return stmt.deep_replace(call.args[0].value, cst.Integer("2"))
    return stmt


# -- one mask -----------------------------------------------------------------------------------
def _combine_masks(body, forward):
    """A second additive mask parameter is summed into the first before the math."""
    masks = [p for p in param_names(forward) if "mask" in p and "head" not in p and "encoder" not in p]
    if len(masks) < 2:
        return body
    main, others = masks[0], masks[1:]
    score_index = next((i for i, s in enumerate(body) if has_call(s, {"matmul"})), None)
    new_body, combined = [], []
    for index, stmt in enumerate(body):
        other = _adds_mask(stmt, others)
        if other and score_index is not None and index > score_index:
            combined.append(other)
            continue
        new_body.append(stmt)
    if not combined:
        return body
    code = "".join(
        f"if {other} is not None:\n"
        f"    {main} = {other} if {main} is None else {main} + {other}\n"
        for other in combined
    )
    insert_at = new_body.index(body[score_index])
    return [*new_body[:insert_at], *parse_stmts(code), *new_body[insert_at:]]


def _adds_mask(stmt, candidates: list[str]) -> str | None:
    """`if m is not None: ... w = w + m ...` for a mask `m` among the candidates."""
    if not isinstance(stmt, cst.If) or stmt.orelse is not None:
        return None
    test = code_of(stmt.test).replace(" ", "")
    for mask in candidates:
        if test == f"{mask}isnotNone" and any(
            isinstance(n, cst.BinaryOperation) and isinstance(n.operator, cst.Add) and mask in names_read(n)
            for n in walk(stmt.body)
        ):
            return mask
    return None


# -- dropout ----------------------------------------------------------------------------
def _keep_weights_name(body):
    """`p = dropout(w)` then `matmul(p, v)` -> `w = dropout(w)`, `matmul(w, v)`; an `if` block
    between softmax and the output that only reads the weights moves after the heads are restored."""
    softmax_index = next((i for i, s in enumerate(body) if has_call(s, SOFTMAX)), None)
    if softmax_index is None:
        return body
    weights = _softmax_target(body[softmax_index])
    output_index = next(
        (i for i in range(softmax_index + 1, len(body)) if has_call(body[i], {"matmul"}) and not isinstance(body[i], cst.If)),
        None,
    )
    if weights is None or output_index is None:
        return body
    body = list(body)
    for index in range(softmax_index + 1, output_index):
        assign = single_assign(body[index])
        if assign and isinstance(assign[0][0], cst.Name) and has_call(body[index], {"dropout"}) and weights in names_read(assign[1]):
            alias = assign[0][0].value
            if alias != weights:
                body[index] = body[index].deep_replace(assign[0][0], cst.Name(weights))
                product = body[output_index]
                for node in walk(product):
                    if isinstance(node, cst.Name) and node.value == alias:
                        product = product.deep_replace(node, cst.Name(weights))
                        break
                body[output_index] = product
    moved = [
        i for i in range(softmax_index + 1, output_index)
        if isinstance(body[i], cst.If) and not is_guard(body[i]) and not (_assigned_in(body[i]) & {weights} - _self_assigned(body[i]))
    ]
    if not moved:
        return body
    restore = next((i for i in range(output_index + 1, len(body)) if "transpose" in code_of(body[i])), None)
    if restore is None:
        return body
    kept = [s for i, s in enumerate(body) if i not in moved]
    at = kept.index(body[restore]) + 1
    return [*kept[:at], *(body[i] for i in moved), *kept[at:]]


def _softmax_target(stmt) -> str | None:
    """The name a softmax statement assigns; for an `if`/`else` that picks the softmax's dtype
    (an fp16 upcast), the one name both branches assign."""
    names = assigned_names(stmt) or (_assigned_in(stmt) if isinstance(stmt, cst.If) and stmt.orelse else set())
    return next(iter(names)) if len(names) == 1 else None


def _assigned_in(stmt) -> set[str]:
    return {name for node in walk(stmt) if isinstance(node, cst.SimpleStatementLine) for name in assigned_names(node)}


def _self_assigned(stmt) -> set[str]:
    """Names only ever re-assigned to another name in `stmt` (`w = w_reshaped`): no new value."""
    found = set()
    for node in walk(stmt):
        if isinstance(node, cst.SimpleStatementLine):
            assign = single_assign(node)
            if assign and isinstance(assign[0][0], cst.Name) and isinstance(assign[1], cst.Name):
                found.add(assign[0][0].value)
    return found
