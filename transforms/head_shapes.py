"""Head counts in attention reshapes become `-1`, so a rank's shard of heads fits (CONTRACT D2).

Under tensor parallelism a column-parallel q/k/v projection gives each rank only its heads:
`q.view(bsz, q_len, self.num_heads, self.head_dim)` then asks for all of them and fails,
and `out.reshape(bsz, q_len, self.hidden_size)` asks for the full width. transformers'
own models write `-1` there; so does this rewrite, inside the classes that own a
column-parallel projection of the inferred plan (see parallel_plans), for the
one element of a shape that counts heads (an attribute or parameter named as a head count,
a product with one, or a width that `__init__` divides by a head count). A shape with two
such elements or a `-1` already is left as it is.

A helper that some call hands `-1` for another size (CLIP's and BART's
`self._shape(self.k_proj(x), -1, bsz)` with `view(bsz, seq_len, self.num_heads, self.head_dim)`)
would get two `-1`s; there the head count is computed from the tensor instead,
`tensor.size(-1) // self.head_dim`, when the shape splits the last axis into heads and a
head size, and is otherwise left as it is (the sharded proof then fails and says so).
"""

from __future__ import annotations

import re

import libcst as cst

from porter.parallel import COLWISE
from transforms.base import Transform
from transforms.cst_utils import SharingTransformer, dotted, function_defs, last_part, walk
from transforms.parallel_plans import plans_for

HEAD_COUNT = re.compile(r"^(num_\w*heads|n_\w*heads?|\w*_heads|heads)$")
SHAPE_METHODS = {"view", "reshape"}


def _head_count(node: cst.BaseExpression) -> bool:
    name = last_part(dotted(node))
    return bool(name) and HEAD_COUNT.match(name) is not None


def _widths(cls: cst.ClassDef) -> set[str]:
    """Names `__init__` relates to a head count: `head_dim = hidden_size // num_heads` makes
    `hidden_size` a width; `all_head_size = num_heads * head_size` makes `all_head_size` one."""
    init = function_defs(cls).get("__init__")
    widths: set[str] = set()
    for node in walk(init) if init else ():
        if not isinstance(node, cst.Assign) or not isinstance(node.value, cst.BinaryOperation):
            continue
        value = node.value
        if isinstance(value.operator, cst.FloorDivide) and _head_count(value.right) and dotted(value.left):
            widths.add(last_part(dotted(value.left)))
        if isinstance(value.operator, cst.Multiply) and (_head_count(value.left) or _head_count(value.right)):
            widths |= {last_part(dotted(t.target)) for t in node.targets if dotted(t.target)}
    return widths


def _minus_one_params(cls: cst.ClassDef) -> dict[str, set[str]]:
    """Method -> parameters that a call `self.method(...)` in the class passes `-1` for."""
    methods = function_defs(cls)
    found: dict[str, set[str]] = {}
    for node in walk(cls):
        if not (isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute)
                and dotted(node.func.value) == "self" and node.func.attr.value in methods):
            continue
        fn = methods[node.func.attr.value]
        positional = [p.name.value for p in fn.params.params][1:]  # after self
        for index, arg in enumerate(node.args):
            if not _is_minus_one(arg.value):
                continue
            name = arg.keyword.value if arg.keyword else (positional[index] if index < len(positional) else None)
            if name:
                found.setdefault(fn.name.value, set()).add(name)
    return found


def _is_minus_one(node: cst.BaseExpression) -> bool:
    return isinstance(node, cst.UnaryOperation) and isinstance(node.operator, cst.Minus)


class _ShapeRewriter(SharingTransformer):
    def __init__(self, widths: set[str], maybe_minus_one: dict[str, set[str]]):
        self.widths = widths
        self.maybe_minus_one = maybe_minus_one
        self.inferred: set[str] = set()  # parameters of the function being visited that may be -1
        self.rewritten: list[cst.CSTNode] = []

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.inferred = self.maybe_minus_one.get(node.name.value, set())

    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef) -> cst.FunctionDef:
        self.inferred = set()
        return updated

    def _local_heads(self, call: cst.Call, index: int) -> cst.BaseExpression | None:
        """`-1`, or where another element may be -1 at run time, the heads the tensor holds."""
        values = [a.value for a in call.args]
        if not any(isinstance(v, cst.Name) and v.value in self.inferred for v in values):
            return cst.parse_expression("-1")
        if index != len(values) - 2 or not isinstance(call.func, cst.Attribute):
            return None
        tensor = cst.Module(body=[]).code_for_node(call.func.value)
        size = cst.Module(body=[]).code_for_node(values[-1])
        return cst.parse_expression(f"{tensor}.size(-1) // {size}")

    def _counts_heads(self, node: cst.BaseExpression) -> bool:
        if _head_count(node):
            return True
        if dotted(node) and last_part(dotted(node)) in self.widths:
            return True
        return isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Multiply) and (
            _head_count(node.left) or _head_count(node.right)
        )

    def _one_free(self, values: list[cst.BaseExpression]) -> int | None:
        if any(isinstance(v, cst.UnaryOperation) and isinstance(v.operator, cst.Minus) for v in values):
            return None  # a -1 is already there
        found = [i for i, v in enumerate(values) if self._counts_heads(v)]
        return found[0] if len(found) == 1 else None

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        if not (isinstance(updated.func, cst.Attribute) and updated.func.attr.value in SHAPE_METHODS):
            return updated
        if any(a.star or a.keyword for a in updated.args):
            return updated
        index = self._one_free([a.value for a in updated.args])
        if index is None:
            return updated
        heads = self._local_heads(updated, index)
        if heads is None:
            return updated
        self.rewritten.append(original)
        args = list(updated.args)
        args[index] = args[index].with_changes(value=heads)
        return updated.with_changes(args=args)

    def leave_BinaryOperation(self, original: cst.BinaryOperation, updated: cst.BinaryOperation) -> cst.BaseExpression:
        """`x.size()[:-1] + (self.num_heads, self.head_size)`: a shape built by concatenation."""
        if not isinstance(updated.operator, cst.Add) or not isinstance(updated.right, cst.Tuple):
            return updated
        left = cst.Module(body=[]).code_for_node(updated.left)
        if "size(" not in left and ".shape" not in left:
            return updated
        elements = list(updated.right.elements)
        if any(isinstance(e, cst.StarredElement) for e in elements):
            return updated
        index = self._one_free([e.value for e in elements])
        if index is None:
            return updated
        self.rewritten.append(original)
        elements[index] = elements[index].with_changes(value=cst.parse_expression("-1"))
        return updated.with_changes(right=updated.right.with_changes(elements=elements))


class HeadAgnosticShapes(Transform):
    name = "head-shapes"
    summary = "Reshapes in attention infer the head count (-1), so tensor-parallel shards fit."
    leaves_interface_code = True

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        plans = plans_for(self.state)
        owners = {plans.owners[p] for p, style in plans.tp_plan.items() if style == COLWISE and p in plans.owners}
        names = {n for n in owners if n in analysis.classes and analysis.classes[n].file == self.filename}
        return self.rewrite_classes(tree, names, self._rewrite)

    def _rewrite(self, cls: cst.ClassDef) -> cst.ClassDef:
        rewriter = _ShapeRewriter(_widths(cls), _minus_one_params(cls))
        new = cls.visit(rewriter)
        for node in rewriter.rewritten:
            self.record(node, f"{cls.name.value}: head count in a reshape inferred (-1) for tensor-parallel shards")
        return new
