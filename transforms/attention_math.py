"""Find and clean the eager attention math in a list of statements.

Used on a forward body (math inline) and on a helper method's body (`_attn`). The math is
found by data flow: the softmax, the q @ k^T product (matmul or baddbmm) that produced its
input, any separate rescaling of the scores, and the product of the probabilities with
the values. Cleaning prepares it for `eager_attention_forward`:

- the scale moves into one `scaling` factor (the interface passes `scaling=self.scaling`);
- a causal-mask buffer (`torch.where(self.bias[...], scores, min)`) is dropped: the mask
  from `masking_utils` already holds causality, and adding both would overflow to -inf;
- shape guards (`if ...: raise`) are dropped: they check locals the function lacks.

Scores may come from `torch.einsum` when its subscripts take q, k and v as
`[batch, heads, seq, head_dim]` (`"bhqd,bhkd->bhqk"`, `"...id,...jd->...ij"`); a softmax of an
expression (`softmax(s + bias)`, `(s / t).softmax(-1)`) is first split so that the scores
get their own statement (`split_softmax_argument`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import libcst as cst

from transforms.cst_utils import (
    SharingTransformer,
    assigned_names,
    call_name,
    code_of,
    dotted,
    is_self_attr,
    keyword_arg,
    last_part,
    names_loaded,
    names_read,
    parse_expr,
    parse_stmts,
    single_assign,
    walk,
)

SOFTMAX = {"softmax", ".softmax"}
SCORE_PRODUCTS = {"matmul", "bmm", "baddbmm", "einsum"}
OUTPUT_PRODUCTS = {"matmul", ".matmul", "bmm", "einsum"}
# Calls on the softmax input that only change its dtype: they stay in the softmax statement.
SOFTMAX_OWNERS = {"torch", "F", "functional", "nn", "special"}  # `F.softmax(x)`, not the method `x.softmax()`
DTYPE_CASTS = {"float", "double", "half", "to", "type", "type_as"}
# the size of a query head; `q_head_dim` where value heads have another size (latent attention)
HEAD_SIZE_ATTRIBUTES = ("head_dim", "head_size", "attention_head_size", "attn_head_size", "q_head_dim", "qk_head_dim")


class NotUnderstood(Exception):
    """The math has a shape this module does not handle; `node` says where."""

    def __init__(self, node: cst.CSTNode | None, message: str):
        super().__init__(message)
        self.node = node


@dataclass
class Math:
    """The attention math found in `stmts`, with names as the statements use them."""

    query: str
    key: str
    value: str
    weights: str
    output: str
    score_index: int
    softmax_index: int
    output_index: int
    scaling_code: str  # in terms of `self`, for `__init__`
    rescale_indices: list[int] = field(default_factory=list)


def has_call(stmt: cst.CSTNode, names: set[str]) -> bool:
    return any(
        last_part(call_name(c)) in names or call_name(c) in names for c in walk(stmt) if isinstance(c, cst.Call)
    )


def _matmul_operators(stmt: cst.CSTNode) -> list[cst.BinaryOperation]:
    return [n for n in walk(stmt) if isinstance(n, cst.BinaryOperation) and isinstance(n.operator, cst.MatrixMultiply)]


def has_product(stmt: cst.CSTNode, names: set[str]) -> bool:
    """A call to one of `names`, or the `@` operator."""
    return has_call(stmt, names) or bool(_matmul_operators(stmt))


def _unwrap(node: cst.BaseExpression) -> cst.BaseExpression:
    return node.with_changes(lpar=[], rpar=[]) if getattr(node, "lpar", None) else node


def _refuse_branched_math(stmt: cst.BaseStatement) -> None:
    """Math inside `if`/`for`/`with`/`try` is chosen or repeated at run time: which branch is
    the model's eager path depends on its inputs, so it cannot be moved into one function."""
    if not isinstance(stmt, (cst.If, cst.For, cst.While, cst.With, cst.Try)):
        return
    softmaxes = sum(1 for c in walk(stmt) if isinstance(c, cst.Call) and last_part(call_name(c)) in SOFTMAX)
    head = f"if {code_of(stmt.test)}:" if isinstance(stmt, cst.If) else type(stmt).__name__.lower()
    raise NotUnderstood(
        stmt,
        f"the attention math is inside `{head}` ({softmaxes} softmax call(s) in its branches, each chosen at run "
        "time); expected one eager path among the top-level statements of forward",
    )


def _refuse_indirect_scores(stmts: list[cst.BaseStatement], softmax_index: int, scores: str) -> None:
    """Scores that reach the softmax through other names from a product that assigned another
    one (`r = product`, `s = r.view(...)`, `s = masked_fill(s, ...)`): name the product and
    the statement that reads its result, so the diagnostic shows what lies between."""
    readers = {scores: softmax_index}  # name -> index of the statement on the way that reads it
    for i in range(softmax_index - 1, -1, -1):
        written = assigned_names(stmts[i]) & set(readers)
        if not written:
            continue
        if has_product(stmts[i], SCORE_PRODUCTS) and readers[min(written)] != softmax_index:
            product = next(
                (c for c in walk(stmts[i]) if isinstance(c, cst.Call) and last_part(call_name(c)) in SCORE_PRODUCTS), None
            )
            keywords = sorted(a.keyword.value for a in product.args if a.keyword) if product is not None else []
            raise NotUnderstood(
                stmts[readers[min(written)]],
                f"{scores} is computed from `{min(written)}`, which a product assigned "
                f"(`{code_of(stmts[i].with_changes(leading_lines=[])).strip().splitlines()[0][:100]}`"
                + (f", operands given as keywords {keywords}" if keywords else "")
                + "); expected the q @ k^T product (matmul, bmm, baddbmm, einsum or `@`) to assign "
                f"{scores} itself",
            )
        for name in names_read(stmts[i]):
            readers.setdefault(name, i)


def find_math(stmts: list[cst.BaseStatement], head_size_attr: str | None) -> Math:
    """Locate softmax(q k^T * s) v in `stmts`; raise NotUnderstood with the place if absent."""
    softmax_index = next((i for i, s in enumerate(stmts) if has_call(s, SOFTMAX)), None)
    if softmax_index is None:
        raise NotUnderstood(None, "no softmax in the attention code")
    assign = single_assign(stmts[softmax_index]) or _softmax_in_both_branches(stmts[softmax_index])
    if assign is None:
        _refuse_branched_math(stmts[softmax_index])
    softmax_call = next(c for c in walk(stmts[softmax_index]) if isinstance(c, cst.Call) and last_part(call_name(c)) in SOFTMAX)
    scores = _softmax_input(softmax_call)
    if assign is None or scores is None or not isinstance(assign[0][0], cst.Name):
        raise NotUnderstood(stmts[softmax_index], "softmax is not a plain `name = softmax(name, ...)` assignment")
    weights = assign[0][0].value

    score_index = next(
        (i for i in range(softmax_index, -1, -1) if scores in assigned_names(stmts[i]) and has_product(stmts[i], SCORE_PRODUCTS)),
        None,
    )
    if score_index is None:
        _refuse_indirect_scores(stmts, softmax_index, scores)
        raise NotUnderstood(stmts[softmax_index], f"could not find the q @ k^T product that computes {scores}")
    product, base_scale = _score_product(single_assign(stmts[score_index]), stmts[score_index])
    query, key = _query_and_key(product, stmts[score_index])

    factors = [base_scale] if base_scale != "1.0" else []
    rescale_indices = []
    for i in range(score_index + 1, softmax_index):
        factor = rescale_factor(stmts[i], scores)
        if factor is not None:
            factors.append(factor)
            rescale_indices.append(i)
        elif _writes(stmts[i], scores) and not _adds_mask(stmts[i], scores) and not _fills_masked(stmts[i], scores):
            # Anything else that changes the scores (a tanh cap, a bias) ends the rescales
            # that fold into `scaling`: a factor after it does not commute with it. A mask
            # does: its blocked entries stay far below every score once rescaled.
            break
    factors = [_head_size_as_attribute(f, {query, key}, head_size_attr, stmts[score_index]) for f in factors]
    for factor in factors:
        if not _computable_in_init(parse_expr(factor)):
            raise NotUnderstood(stmts[score_index], f"the scale `{factor}` reads values that __init__ does not have")
    if len(factors) > 1:
        factors = [f"({f})" if " " in f and not f.startswith("(") else f for f in factors]
    scaling = " * ".join(factors) if factors else "1.0"

    output_index = next(
        (
            i
            for i in range(softmax_index + 1, len(stmts))
            if has_product(stmts[i], OUTPUT_PRODUCTS) and weights in names_read(stmts[i])
        ),
        None,
    )
    if output_index is None:
        raise NotUnderstood(stmts[softmax_index], f"could not find the product of {weights} with the values")
    out_assign = single_assign(stmts[output_index])
    out_call = _unwrap(out_assign[1]) if out_assign else None
    if isinstance(out_call, cst.BinaryOperation) and isinstance(out_call.operator, cst.MatrixMultiply):
        value = dotted(out_call.right)
    elif isinstance(out_call, cst.Call) and last_part(call_name(out_call)) == "einsum":
        value = dotted(_einsum_operands(out_call, stmts[output_index], "probs")[1])
    elif isinstance(out_call, cst.Call) and len(out_call.args) == 2:
        value = dotted(out_call.args[1].value)
    else:
        value = None
    if not out_assign or not isinstance(out_assign[0][0], cst.Name) or value is None and out_call is None:
        raise NotUnderstood(stmts[output_index], "the probs @ v statement is not `out = matmul(probs, v)`")
    if not value or "." in value:
        raise NotUnderstood(stmts[output_index], "the values in the probs @ v product are not a plain variable")
    return Math(
        query=query,
        key=key,
        value=value,
        weights=weights,
        output=out_assign[0][0].value,
        score_index=score_index,
        softmax_index=softmax_index,
        output_index=output_index,
        scaling_code=scaling,
        rescale_indices=rescale_indices,
    )


def _softmax_in_both_branches(stmt: cst.BaseStatement):
    """`if s.dtype == torch.float16: w = softmax(s, dtype=float32).half() else: w = softmax(s)`:
    the assignment of the `else` branch, when both branches assign the same name the softmax of
    the same scores (an fp16 upcast chosen by dtype). The statement stays whole in the eager
    function; only where its weights and scores are is read from it."""
    if not isinstance(stmt, cst.If) or not isinstance(stmt.orelse, cst.Else):
        return None
    branches = [stmt.body.body, stmt.orelse.body.body]
    if any(len(b) != 1 or single_assign(b[0]) is None for b in branches):
        return None
    assigns = [single_assign(b[0]) for b in branches]
    calls = [[c for c in walk(b[0]) if isinstance(c, cst.Call) and last_part(call_name(c)) in SOFTMAX] for b in branches]
    if any(len(c) != 1 for c in calls) or len({code_of(a[0][0]) for a in assigns} | {code_of(a[0][0]) for a in assigns}) != 1:
        return None
    if len({_softmax_input(c[0]) for c in calls}) != 1:
        return None
    return assigns[1]


def softmax_modules_as_calls(stmts: list[cst.BaseStatement], init: cst.FunctionDef | None) -> list[cst.BaseStatement]:
    """`nn.Softmax(dim=d)(x)`, and `self.sm(x)` where __init__ holds `self.sm = nn.Softmax(dim=d)`,
    -> `torch.nn.functional.softmax(x, dim=d)`: the softmax as a call, the form the math is found in."""
    modules = {}
    for node in walk(init) if init is not None else ():
        if isinstance(node, cst.Assign) and len(node.targets) == 1 and is_self_attr(node.targets[0].target):
            dim = _softmax_module_dim(node.value)
            if dim is not None:
                modules[code_of(node.targets[0].target)] = dim
    rewriter = _SoftmaxModuleCalls(modules)
    # Only statements that change are rebuilt: the others keep their place for diagnostics.
    return [stmt.visit(rewriter) if any(rewriter.matches(c) for c in walk(stmt) if isinstance(c, cst.Call)) else stmt
            for stmt in stmts]


def _softmax_module_dim(node: cst.BaseExpression) -> str | None:
    """`d` for `nn.Softmax(dim=d)` / `nn.Softmax(d)`; None for anything else (an implicit dim too)."""
    if not isinstance(node, cst.Call) or last_part(call_name(node)) != "Softmax" or len(node.args) != 1:
        return None
    arg = node.args[0]
    return code_of(arg.value) if arg.keyword is None or arg.keyword.value == "dim" else None


class _SoftmaxModuleCalls(SharingTransformer):
    def __init__(self, modules: dict[str, str]):
        self.modules = modules

    def _dim(self, call: cst.Call) -> str | None:
        if len(call.args) != 1 or call.args[0].keyword is not None:
            return None
        return _softmax_module_dim(call.func) if isinstance(call.func, cst.Call) else self.modules.get(code_of(call.func))

    def matches(self, call: cst.Call) -> bool:
        return self._dim(call) is not None

    def leave_Call(self, original, updated):
        dim = self._dim(updated)
        if dim is None:
            return updated
        return parse_expr(f"torch.nn.functional.softmax({code_of(updated.args[0].value)}, dim={dim})")


def split_softmax_argument(stmts: list[cst.BaseStatement]) -> list[cst.BaseStatement]:
    """`w = softmax(s * c + bias, -1)` -> `s = s * c`, `s = s + bias`, `w = softmax(s, -1)`.

    The scores are the name in the expression that a q @ k^T product assigned earlier, or,
    for `softmax(q @ k.T * c)`, the softmax target itself, first assigned the product. Each
    rescale and each added term gets its own statement, so the usual analysis folds the
    scale into `scaling` and sees a bias or a mask. Rebinding the scores is only safe when
    nothing reads them after the softmax; otherwise the port stops here."""
    index = next((i for i, s in enumerate(stmts) if has_call(s, SOFTMAX)), None)
    assign = single_assign(stmts[index]) if index is not None else None
    if assign is None or not isinstance(assign[0][0], cst.Name):
        return stmts
    stmt = stmts[index]
    call = next(c for c in walk(stmt) if isinstance(c, cst.Call) and last_part(call_name(c)) in SOFTMAX)
    argument = _without_casts(_softmax_argument(call))
    if argument is None or dotted(argument):
        return stmts
    scores = next(
        (
            name
            for i in range(index - 1, -1, -1)
            for name in sorted(assigned_names(stmts[i]) & names_read(argument))
            if has_product(stmts[i], SCORE_PRODUCTS)
        ),
        None,
    )
    base: cst.BaseExpression | None = None
    if scores is None:
        base = _product_in(argument)
        if base is None:
            return stmts
        scores = assign[0][0].value
    rest = stmt.deep_replace(argument, cst.Name(scores))
    later = set().union(set(), *(names_read(s) for s in stmts[index + 1 :]))
    target = assign[0][0].value
    if base is None and scores != target and (scores in later or code_of(rest).count(scores) > 1):
        raise NotUnderstood(stmt, f"softmax of an expression whose scores `{scores}` are read again after it")
    lines = _score_steps(_unwrap(argument), scores, base)
    split = parse_stmts("".join(f"{line}\n" for line in lines))
    split[0] = split[0].with_changes(leading_lines=stmt.leading_lines)
    return [*stmts[:index], *split, rest.with_changes(leading_lines=[]), *stmts[index + 1 :]]


def mask_scores_in_place(stmts: list[cst.BaseStatement]) -> list[cst.BaseStatement]:
    """`w = torch.masked_fill(s, mask, fill)` (or `s.masked_fill(mask, fill)`, `s + mask`) and
    then `softmax(w)`: the masked scores get the scores' own name, `s = masked_fill(s, ...)`,
    `softmax(s)`, the form in which the math is found. Only when nothing else reads `w`, and
    nothing reads `s` after the mask: then the renaming changes no value."""
    index = next((i for i, s in enumerate(stmts) if has_call(s, SOFTMAX)), None)
    if index is None:
        return stmts
    call = next(c for c in walk(stmts[index]) if isinstance(c, cst.Call) and last_part(call_name(c)) in SOFTMAX)
    masked = _softmax_input(call)
    at = next((i for i in range(index - 1, -1, -1) if masked in assigned_names(stmts[i])), None)
    assign = single_assign(stmts[at]) if at is not None else None
    scores = _masked_operand(assign[1]) if assign and len(assign[0]) == 1 else None
    if scores is None or scores == masked or not any(scores in assigned_names(s) for s in stmts[:at]):
        return stmts
    if any(masked in names_read(s) for i, s in enumerate(stmts) if i not in (at, index)):
        return stmts
    if any(scores in names_read(s) for s in stmts[at + 1 :]):
        return stmts
    renamed = [_RenameName(masked, scores).visit_stmt(stmts[i]) for i in (at, index)]
    return [*stmts[:at], renamed[0], *stmts[at + 1 : index], renamed[1], *stmts[index + 1 :]]


def _masked_operand(value: cst.BaseExpression) -> str | None:
    """`s` in `torch.masked_fill(s, m, v)`, `s.masked_fill(m, v)` and `s + mask` / `mask + s`."""
    if isinstance(value, cst.Call) and last_part(call_name(value)) == "masked_fill":
        if isinstance(value.func, cst.Attribute) and dotted(value.func.value) not in ("torch", None):
            return dotted(value.func.value)
        return dotted(value.args[0].value) if len(value.args) == 3 else None
    if isinstance(value, cst.BinaryOperation) and isinstance(value.operator, cst.Add):
        left, right = dotted(value.left), dotted(value.right)
        if left and right and ("mask" in left) != ("mask" in right):
            return right if "mask" in left else left
    return None


class _RenameName(SharingTransformer):
    def __init__(self, old: str, new: str):
        self.old, self.new = old, new

    def visit_stmt(self, stmt: cst.BaseStatement) -> cst.BaseStatement:
        return stmt.visit(self)

    def leave_Attribute(self, original, updated):
        return updated.with_changes(attr=original.attr)

    def leave_Arg(self, original, updated):
        return updated.with_changes(keyword=original.keyword)

    def leave_Name(self, original, updated):
        return updated.with_changes(value=self.new) if updated.value == self.old else updated


def split_output_product(stmts: list[cst.BaseStatement]) -> list[cst.BaseStatement]:
    """`o = torch.matmul(p, v).transpose(1, 2).reshape(...)` -> `o = torch.matmul(p, v)` and
    `o = o.transpose(1, 2).reshape(...)`: the product of the probabilities with the values
    gets its own statement, and what restores the heads stays in forward."""
    index = next((i for i, s in enumerate(stmts) if has_call(s, SOFTMAX)), None)
    assign = single_assign(stmts[index]) if index is not None else None
    if assign is None or not isinstance(assign[0][0], cst.Name):
        return stmts
    weights = assign[0][0].value
    for i in range(index + 1, len(stmts)):
        out = single_assign(stmts[i])
        if out is None or not isinstance(out[0][0], cst.Name) or weights not in names_read(stmts[i]):
            continue
        receiver = out[1]
        while isinstance(receiver, cst.Call) and isinstance(receiver.func, cst.Attribute) and not _is_output_product(receiver):
            receiver = receiver.func.value
        if receiver is out[1] or not _is_output_product(receiver) or weights not in names_read(receiver):
            return stmts
        target = out[0][0].value
        product = parse_stmts(f"{target} = {code_of(_unwrap(receiver))}\n")[0].with_changes(leading_lines=stmts[i].leading_lines)
        rest = stmts[i].deep_replace(receiver, cst.Name(target)).with_changes(leading_lines=[])
        return [*stmts[:i], product, rest, *stmts[i + 1 :]]
    return stmts


def _is_output_product(node: cst.BaseExpression) -> bool:
    node = _unwrap(node)
    if isinstance(node, cst.BinaryOperation):
        return isinstance(node.operator, cst.MatrixMultiply)
    return isinstance(node, cst.Call) and last_part(call_name(node)) in OUTPUT_PRODUCTS


def _product_in(node: cst.BaseExpression) -> cst.BaseExpression | None:
    """The q @ k^T product inside an expression (`q @ k.T * c + m` -> `q @ k.T`)."""
    for sub in walk(node):
        is_call = isinstance(sub, cst.Call) and last_part(call_name(sub)) in SCORE_PRODUCTS
        if is_call or isinstance(sub, cst.BinaryOperation) and isinstance(sub.operator, cst.MatrixMultiply):
            return sub
    return None


def _score_steps(expr: cst.BaseExpression, scores: str, base: cst.BaseExpression | None) -> list[str]:
    """One statement per rescale or added term of `expr`, applied to `scores` in order."""
    expr = _unwrap(expr)
    if base is not None and expr.deep_equals(_unwrap(base)):
        return [f"{scores} = {code_of(expr)}"]
    if base is None and dotted(expr) == scores:
        return []
    if isinstance(expr, cst.BinaryOperation):
        left, right = _unwrap(expr.left), _unwrap(expr.right)
        holds = [_holds_scores(side, scores, base) for side in (left, right)]
        operator = {cst.Add: "+", cst.Subtract: "-", cst.Multiply: "*", cst.Divide: "/"}.get(type(expr.operator))
        if operator and holds == [True, False]:
            return [*_score_steps(left, scores, base), f"{scores} = {scores} {operator} {code_of(expr.right)}"]
        if operator in ("+", "*") and holds == [False, True]:
            return [*_score_steps(right, scores, base), f"{scores} = {scores} {operator} {code_of(expr.left)}"]
    return [f"{scores} = {code_of(expr)}"]


def _holds_scores(node: cst.BaseExpression, scores: str, base: cst.BaseExpression | None) -> bool:
    if base is not None:
        return any(sub.deep_equals(base) for sub in walk(node))
    return scores in names_read(node)


def clean_math(stmts: list[cst.BaseStatement], math: Math) -> list[cst.BaseStatement]:
    """The statements as the eager function runs them (scale folded, buffer and guards gone)."""
    kept = []
    for i, stmt in enumerate(stmts):
        if i in math.rescale_indices or is_guard(stmt):
            continue
        if i == math.score_index:
            stmt = _scaled_product(stmt)
        kept.append(stmt.visit(GuardStripper()))
    kept = _drop_causal_buffer(kept)
    return _drop_dead_assignments(kept, keep={math.output, math.weights})


# -- scores ---------------------------------------------------------------------------------
def _softmax_argument(call: cst.Call) -> cst.BaseExpression | None:
    """What the softmax normalises: `softmax(x, ...)` or `x.softmax(...)`."""
    owner = dotted(call.func.value) if isinstance(call.func, cst.Attribute) else None
    if isinstance(call.func, cst.Attribute) and last_part(owner) not in SOFTMAX_OWNERS:
        return call.func.value
    return call.args[0].value if call.args else None


def _without_casts(node: cst.BaseExpression | None) -> cst.BaseExpression | None:
    """`s.float()` / `s.to(torch.float32)` -> `s`: a cast of the scores, not another tensor."""
    while isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) and node.func.attr.value in DTYPE_CASTS:
        node = node.func.value
    return node


def _softmax_input(call: cst.Call) -> str | None:
    return dotted(_without_casts(_softmax_argument(call)))


def _score_product(assign, stmt) -> tuple[cst.Call, str]:
    """(the product call, its scale) for `s = matmul(q, kT) [* or /] x` and `s = baddbmm(..., alpha=x)`."""
    if assign is None:
        raise NotUnderstood(stmt, "the q @ k^T product is not a plain assignment")
    value = _unwrap(assign[1])
    if isinstance(value, cst.BinaryOperation) and isinstance(value.operator, cst.MatrixMultiply):
        return value, "1.0"
    if isinstance(value, cst.Call) and last_part(call_name(value)) == "baddbmm":
        alpha = next((a for a in value.args if a.keyword and a.keyword.value == "alpha"), None)
        beta = next((a for a in value.args if a.keyword and a.keyword.value == "beta"), None)
        if beta is not None and code_of(beta.value) not in ("1.0", "1", "0", "0.0"):
            raise NotUnderstood(stmt, "baddbmm with a beta other than 0 or 1")
        return value, code_of(alpha.value) if alpha else "1.0"
    if isinstance(value, cst.Call) and last_part(call_name(value)) in ("matmul", "bmm", "einsum"):
        return value, "1.0"
    left = _unwrap(value.left) if isinstance(value, cst.BinaryOperation) else None
    is_product = isinstance(left, cst.Call) or (
        isinstance(left, cst.BinaryOperation) and isinstance(left.operator, cst.MatrixMultiply)
    )
    if isinstance(value, cst.BinaryOperation) and is_product:
        if isinstance(value.operator, cst.Divide):
            return left, f"1 / {code_of(value.right)}"
        if isinstance(value.operator, cst.Multiply):
            return left, code_of(value.right)
    raise NotUnderstood(stmt, "scores are not `matmul(q, k^T)` or `baddbmm(..., q, k^T)` with an optional scale")


def _query_and_key(product: cst.BaseExpression, stmt) -> tuple[str, str]:
    if isinstance(product, cst.BinaryOperation):
        positional = [product.left, product.right]
    else:
        positional = [a.value for a in product.args if a.keyword is None]
    if isinstance(product, cst.Call) and last_part(call_name(product)) == "einsum":
        query, key = (dotted(op) for op in _einsum_operands(product, stmt, "scores"))
        if not query or not key or "." in query or "." in key:
            raise NotUnderstood(stmt, "q and k in the einsum are not plain variables")
        return query, key
    if isinstance(product, cst.Call) and last_part(call_name(product)) == "baddbmm":
        positional = positional[1:]
    if len(positional) < 2:
        raise NotUnderstood(stmt, "the q @ k^T product has fewer than two operands")
    # A dtype cast of q or k (`q.to(torch.float32)`, upcast against overflow) stays in the
    # product, which moves into the eager function unchanged: only the names are read here.
    query = dotted(_without_casts(positional[0]))
    key_arg = _without_casts(positional[1])
    is_transpose = isinstance(key_arg, cst.Call) and isinstance(key_arg.func, cst.Attribute)
    key = dotted(_without_casts(key_arg.func.value)) if is_transpose and key_arg.func.attr.value in ("transpose", "mT") else None
    if not query or not key or "." in query or "." in key:
        raise NotUnderstood(stmt, "q and k^T in the score product are not plain variables")
    return query, key


def _einsum_operands(call: cst.Call, stmt, role: str) -> tuple[cst.BaseExpression, cst.BaseExpression]:
    """The two operands of an attention einsum, once its subscripts are checked.

    `role` "scores": `<P>qd,<P>kd-><P>qk`; "probs": `<P>qk,<P>kd-><P>qd`, where <P> is the
    same batch and heads prefix (two letters or `...`) on every operand: q, k and v are then
    `[batch, heads, seq, head_dim]`, the layout the interface takes. Any other layout (heads
    after the sequence, three-dimensional operands) is refused rather than guessed."""
    args = [a.value for a in call.args if a.keyword is None]
    spec = args[0].evaluated_value if args and isinstance(args[0], cst.SimpleString) else None
    expected = "bhqd,bhkd->bhqk" if role == "scores" else "bhqk,bhkd->bhqd"
    if not isinstance(spec, str) or len(args) != 3 or not _einsum_matches(spec.replace(" ", ""), role):
        raise NotUnderstood(
            stmt, f"einsum {spec!r} is not the attention product the interface takes (expected the form {expected!r})"
        )
    return args[1], args[2]


def _einsum_matches(spec: str, role: str) -> bool:
    if "->" not in spec or spec.count(",") != 1:
        return False
    inputs, output = spec.split("->")
    first, second = inputs.split(",")
    parts = [first, second, output]
    if all(p.startswith("...") for p in parts):
        prefixes, tails = ["..."], [p[3:] for p in parts]
    elif all(len(p) == 4 and p.isalpha() for p in parts):
        prefixes, tails = {p[:2] for p in parts}, [p[2:] for p in parts]
        if len(prefixes) != 1 or len(set(next(iter(prefixes)))) != 2:
            return False
    else:
        return False
    prefix = next(iter(prefixes))
    if any(len(t) != 2 for t in tails) or set("".join(tails)) & set(prefix):
        return False
    (a, b), (c, d), (e, f) = tails
    if role == "scores":  # q[i, d] k[j, d] -> s[i, j]
        return b == d and a != c and (e, f) == (a, c) and b not in (a, c)
    return b == c and a != b and d not in (a, b) and (e, f) == (a, d)  # p[i, j] v[j, d] -> o[i, d]


def _writes(stmt: cst.CSTNode, name: str) -> bool:
    """Whether `stmt` assigns `name` anywhere inside it (branches included)."""
    for node in walk(stmt):
        if isinstance(node, cst.Assign) and any(dotted(t.target) == name for t in node.targets):
            return True
        if isinstance(node, (cst.AugAssign, cst.AnnAssign)) and dotted(node.target) == name:
            return True
    return False


def _adds_mask(stmt: cst.CSTNode, scores: str) -> bool:
    """`s = s + mask` or `s += mask`, bare or under `if mask is not None:`."""
    if isinstance(stmt, cst.If) and stmt.orelse is None and len(stmt.body.body) == 1:
        stmt = stmt.body.body[0]
    small = stmt.body[0] if isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1 else None
    if isinstance(small, cst.AugAssign) and isinstance(small.operator, cst.AddAssign) and dotted(small.target) == scores:
        added = dotted(small.value)
    elif isinstance(small, cst.Assign) and isinstance(small.value, cst.BinaryOperation) and isinstance(small.value.operator, cst.Add):
        operands = [dotted(small.value.left), dotted(small.value.right)]
        added = operands[1] if operands[0] == scores else operands[0] if operands[1] == scores else None
        added = added if dotted(small.targets[0].target) == scores else None
    else:
        return False
    return bool(added) and "mask" in added and "head" not in added


def _fills_masked(stmt: cst.CSTNode, scores: str) -> bool:
    """`s = torch.where(cond, s, fill)`: a mask that, like an added one, commutes with a rescale."""
    assign = single_assign(stmt)
    if not assign or code_of(assign[0][0]) != scores or not _buffer_condition(stmt):
        return False
    return dotted(assign[1].args[1].value) == scores


def rescale_factor(stmt: cst.CSTNode, scores: str) -> str | None:
    """`s = s / x` -> "1 / x"; `s = s * x` -> "x"; `if c: s = s / x` -> "(1 / x if c else 1.0)"."""
    if isinstance(stmt, cst.If) and stmt.orelse is None and len(stmt.body.body) == 1:
        inner = rescale_factor(stmt.body.body[0], scores)
        return f"({inner} if {code_of(stmt.test)} else 1.0)" if inner else None
    if not isinstance(stmt, cst.SimpleStatementLine) or len(stmt.body) != 1:
        return None
    small = stmt.body[0]
    if isinstance(small, cst.AugAssign) and code_of(small.target) == scores:
        if isinstance(small.operator, cst.DivideAssign):
            return f"1 / {code_of(small.value)}"
        if isinstance(small.operator, cst.MultiplyAssign):
            return code_of(small.value)
        return None
    assign = single_assign(stmt)
    if not assign or code_of(assign[0][0]) != scores or not isinstance(assign[1], cst.BinaryOperation):
        return None
    value = assign[1]
    if dotted(value.left) == scores and isinstance(value.operator, cst.Divide):
        return f"1 / {code_of(value.right)}"
    if isinstance(value.operator, cst.Multiply) and scores in (dotted(value.left), dotted(value.right)):
        other = value.right if dotted(value.left) == scores else value.left
        return code_of(other)
    return None


def _head_size_as_attribute(factor: str, qk: set[str], attr: str | None, stmt) -> str:
    """`value.size(-1)` / `query.shape[-1]` / `torch.full([], x, ...)` -> forms __init__ can compute."""
    tree = parse_expr(factor)
    tree = tree.visit(_HeadSize(qk | {"value"}, attr, stmt))
    return code_of(tree)


class _HeadSize(SharingTransformer):
    def __init__(self, tensors: set[str], attr: str | None, stmt):
        self.tensors, self.attr, self.stmt = tensors, attr, stmt

    def _head(self) -> cst.BaseExpression:
        if self.attr is None:
            raise NotUnderstood(self.stmt, "the scale reads the head size from a tensor and the module stores none")
        return parse_expr(f"self.{self.attr}")

    def leave_Call(self, original, updated):
        name = call_name(updated)
        if name and name.endswith(".size") and isinstance(updated.func, cst.Attribute):
            if dotted(updated.func.value) in self.tensors and [code_of(a.value) for a in updated.args] == ["-1"]:
                return self._head()
        if last_part(name) == "full" and len(updated.args) >= 2:
            return updated.args[1].value
        return updated

    def leave_Subscript(self, original, updated):
        text = code_of(updated).replace(" ", "")
        for tensor in self.tensors:
            if text == f"{tensor}.shape[-1]":
                return self._head()
        return updated


def _computable_in_init(expr: cst.BaseExpression) -> bool:
    """Constants, module globals (math, torch) and `self.*`: what `__init__` can evaluate."""
    allowed = {"self", "math", "torch", "np", "numpy", "float", "int", "True", "False", "None"}
    return names_read(expr) <= allowed


def _scaled_product(stmt: cst.SimpleStatementLine) -> cst.SimpleStatementLine:
    assign = single_assign(stmt)
    value = _unwrap(assign[1])
    if isinstance(value, cst.Call) and last_part(call_name(value)) == "baddbmm":
        args = [a for a in value.args if not (a.keyword and a.keyword.value == "alpha")]
        new_value = value.with_changes(args=[*args, keyword_arg("alpha", "scaling")])
    else:
        is_scaled = isinstance(value, cst.BinaryOperation) and not isinstance(value.operator, cst.MatrixMultiply)
        product = _unwrap(value.left) if is_scaled else value
        text = code_of(product)
        new_value = parse_expr(f"({text}) * scaling" if "@" in text else f"{text} * scaling")
    return stmt.with_changes(body=[cst.Assign(targets=stmt.body[0].targets, value=new_value)])



# -- guards, buffers, dead code -------------------------------------------------------------
LOG_CALLS = {"logger.debug", "logger.info", "logger.warning", "logger.warning_once", "logger.warn", "logger.error",
             "logger.critical", "logging.warning", "logging.error", "warnings.warn"}


def _reports_only(stmt: cst.BaseSmallStatement) -> bool:
    """`raise ...`, or a log line: a shape check that only logs (`logger.error(...)`) leaves the
    values as they are, like one that raises."""
    if isinstance(stmt, cst.Raise):
        return True
    return isinstance(stmt, cst.Expr) and isinstance(stmt.value, cst.Call) and dotted(stmt.value.func) in LOG_CALLS


def is_guard(stmt: cst.CSTNode) -> bool:
    """`if <shape check>: raise ...` (or a log line) with nothing else in it."""
    if not isinstance(stmt, cst.If) or stmt.orelse is not None:
        return False
    inner = stmt.body.body if isinstance(stmt.body, cst.IndentedBlock) else []
    return bool(inner) and all(
        isinstance(s, cst.SimpleStatementLine) and all(_reports_only(x) for x in s.body) for s in inner
    )


class GuardStripper(SharingTransformer):
    def leave_If(self, original: cst.If, updated: cst.If):
        return cst.RemoveFromParent() if is_guard(updated) else updated


def _buffer_condition(stmt: cst.CSTNode) -> str | None:
    """For `s = torch.where(cond, s, fill)` return cond's name."""
    assign = single_assign(stmt)
    if not assign or not isinstance(assign[1], cst.Call) or last_part(call_name(assign[1])) != "where":
        return None
    args = assign[1].args
    if len(args) == 3 and dotted(args[0].value):
        return dotted(args[0].value)
    return None


def _drop_causal_buffer(stmts: list[cst.BaseStatement]) -> list[cst.BaseStatement]:
    """Remove `torch.where(<slice of a self buffer>, s, min)` and what only fed it, recursively."""
    conditions = {}
    for stmt in _all_simple(stmts):
        cond = _buffer_condition(stmt)
        if cond:
            conditions[id(stmt)] = cond
    if not conditions:
        return stmts
    sources = {}
    for stmt in _all_simple(stmts):
        assign = single_assign(stmt)
        if assign and isinstance(assign[0][0], cst.Name) and "self." in code_of(assign[1]):
            sources[assign[0][0].value] = code_of(assign[1])
    buffer_conditions = {k for k, c in conditions.items() if c in sources}
    if not buffer_conditions:
        return stmts
    pruned = [s.visit(_RemoveById(buffer_conditions)) for s in stmts]
    pruned = [s for s in pruned if not isinstance(s, cst.RemovalSentinel)]
    buffers = {sources[conditions[k]].split("[")[0] for k in buffer_conditions}
    pruned = [s for s in pruned if not any(b in code_of(s) for b in buffers)]
    return pruned


def _all_simple(stmts):
    for stmt in stmts:
        for node in walk(stmt):
            if isinstance(node, cst.SimpleStatementLine):
                yield node


class _RemoveById(SharingTransformer):
    def __init__(self, ids: set[int]):
        self.ids = ids

    def leave_SimpleStatementLine(self, original, updated):
        return cst.RemoveFromParent() if id(original) in self.ids else updated

    def leave_IndentedBlock(self, original, updated):
        if not updated.body:
            return updated.with_changes(body=[cst.SimpleStatementLine(body=[cst.Pass()])])
        return updated


def _drop_dead_assignments(stmts: list[cst.BaseStatement], keep: set[str]) -> list[cst.BaseStatement]:
    """Drop plain assignments (and branches of only those) whose names nothing reads later."""
    changed = True
    while changed:
        changed = False
        for i in range(len(stmts) - 1, -1, -1):
            later = set(keep)
            for other in stmts[i + 1 :]:
                later |= names_loaded(other)
            if _is_dead(stmts[i], later):
                del stmts[i]
                changed = True
    return stmts


def _is_dead(stmt: cst.CSTNode, later: set[str]) -> bool:
    if isinstance(stmt, cst.SimpleStatementLine):
        if all(isinstance(s, cst.Pass) for s in stmt.body):
            return True
        assign = single_assign(stmt)
        if assign is None or any(isinstance(t, (cst.Attribute, cst.Subscript)) for t in assign[0]):
            return False
        if any(isinstance(n, cst.Call) and code_of(n.func).startswith("self.") for n in walk(assign[1])):
            return False  # a method call may have effects
        return not (assigned_names(stmt) & later)
    if isinstance(stmt, cst.If) and stmt.orelse is None:
        return all(_is_dead(s, later | names_loaded(stmt.test)) for s in stmt.body.body)
    return False
