"""A concatenated `[q|k|v]` projection becomes one `nn.Linear` per part (CONTRACT D1, F3).

Column shards of a projection whose output is cut into `[a|b|c]` along the features hold
pieces of a, b and c at once, so tensor parallelism can only gather it (`colwise_rep`).
Split into separate projections, each is plain column-parallel and its consumer
row-parallel, as in transformers' own models. The layout is read from the data flow
(porter.parallel marks a projection "concatenated" when its raw output is split, chunked
or sliced, or reshaped with its part axis outside the heads); a projection reshaped with the
heads outside the parts (per-head interleaved) is not touched.

The shapes rewritten, in any method of the class that builds the projection:

    a, b, c = self.fused(x).split([n_a, n_b, n_c], dim=-1)      # or .chunk(3, dim=-1),
    t = self.fused(x); ...; a, b, c = t.split(size, dim=-1)     # torch.split / torch.chunk

become `a = self.a_proj(x)`, ... with `self.a_proj = nn.Linear(in, n_a, ...)` in `__init__`,
the part sizes written as the same expressions (forward locals inlined), and a `split` weight
op cuts the checkpoint's weight and bias at the sizes computed from config.json. Any other
use of the projection, a split along another dimension, a transformers `Conv1D`, or sizes
that cannot be computed leave it fused and gathered, with the reason in the plan's notes.
With `--replicate-fused-qkv` nothing is split and the fused projection is replicated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import libcst as cst

from porter.parallel import ParallelPlans
from porter.weights import WeightOp
from transforms.base import Transform
from transforms.cst_utils import (
    SharingTransformer,
    assigned_names,
    dotted,
    function_defs,
    is_self_attr,
    last_part,
    names_read,
    single_assign,
    walk,
)
from transforms.parallel_plans import plans_for
from transforms.static_sizes import InitSizes, config_values

SPLIT_METHODS = {"split", "chunk"}
NO_SPACE = cst.SimpleWhitespace("")
SUFFIXES = re.compile(r"_(states|state|layer|out|output)$")


@dataclass
class FusedSplit:
    """One fused projection understood well enough to split."""

    attr: str
    parts: list[str]  # new attribute names, in output order
    init_stmt: cst.SimpleStatementLine
    new_init: list[cst.SimpleStatementLine]
    split_stmt: cst.SimpleStatementLine
    new_calls: list[cst.SimpleStatementLine]
    removed: cst.SimpleStatementLine | None  # `t = self.fused(x)` when the split reads `t`
    sizes: tuple[int, ...] | None  # rows of each part; None: equal parts


class NotSplit(Exception):
    """Why a fused projection stays fused."""


def weight_source(path: str, attr: str) -> str:
    """`layers.*.attn.qkv` -> a regex for its weight and bias in any checkpoint, the prefix
    before the attribute in group 1 and `weight`/`bias` in group 2."""
    prefix = re.escape(path.rsplit(".", 1)[0] + ".").replace(r"\*", r"\d+") if "." in path else ""
    return rf"((?:.+\.)?{prefix}){re.escape(attr)}\.(weight|bias)"


class SplitFusedProjections(Transform):
    name = "split-fused"
    summary = "Split a concatenated [q|k|v] projection into one nn.Linear per part, weights split at conversion."
    leaves_interface_code = True

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        plans = plans_for(self.state)
        analysis = self.state.analysis
        wanted: dict[str, set[str]] = {}  # owner class in this file -> fused attributes
        for path, layout in plans.fused.items():
            owner = plans.owners.get(path)
            if path in plans.packed_experts:  # its [gate|up] is sharded in place by packed_colwise
                continue
            if layout == "concatenated" and owner in analysis.classes and analysis.classes[owner].file == self.filename:
                wanted.setdefault(owner, set()).add(path.rsplit(".", 1)[-1])
        if not wanted:
            return tree
        if self.state.facts.get("replicate_fused"):
            classes = {s.name.value: s for s in tree.body if isinstance(s, cst.ClassDef)}
            for owner, attrs in wanted.items():
                for path in _paths(plans, owner, attrs):
                    plans.replicate_fused(path)
                self.record(classes.get(owner), f"{owner}.{', '.join(sorted(attrs))}: concatenated output kept fused, "
                                                "replicated in the plan (--replicate-fused-qkv)")
            self.state.facts["parallel"] = plans.as_dict()
            return tree
        new = self.rewrite_classes(tree, set(wanted), lambda cls: self._rewrite(cls, wanted[cls.name.value], plans))
        self.state.facts["parallel"] = plans.as_dict()
        return new

    def _rewrite(self, cls: cst.ClassDef, attrs: set[str], plans: ParallelPlans) -> cst.ClassDef:
        owner = cls.name.value
        for attr in sorted(attrs):
            paths = _paths(plans, owner, {attr})
            try:
                if any(p in plans.conv1d for p in paths):
                    raise NotSplit("a Conv1D, whose weight the conversion already transposes")
                split = _recognise(cls, attr, self._config(plans))
            except NotSplit as why:
                for path in paths:
                    plans.notes.append(f"{path}: concatenated output kept fused and gathered ({why})")
                continue
            cls = _apply(cls, split)
            for path in paths:
                prefix = path.rsplit(".", 1)[0] + "." if "." in path else ""
                plans.split_fused(path, [prefix + p for p in split.parts])
                self.state.weight_ops.append(
                    WeightOp("split", weight_source(path, attr), tuple(rf"\g<1>{p}.\g<2>" for p in split.parts),
                             dim=0, sizes=split.sizes)
                )
            self.record(split.init_stmt, f"{owner}.{attr}: concatenated output split into "
                                         f"{', '.join(split.parts)}; weight and bias split at conversion")
        return cls

    def _config(self, plans: ParallelPlans) -> dict:
        analysis = self.state.analysis
        config_cls = analysis.classes.get(plans.config_class) if plans.config_class else None
        init = config_cls.methods.get("__init__") if config_cls else None
        return config_values(self.state.facts.get("config_json"), init)


def _paths(plans: ParallelPlans, owner: str, attrs: set[str]) -> list[str]:
    return [p for p, o in plans.owners.items() if o == owner and p.rsplit(".", 1)[-1] in attrs]


# -- recognising the shape ------------------------------------------------------------------------
def _recognise(cls: cst.ClassDef, attr: str, config: dict) -> FusedSplit:
    methods = function_defs(cls)
    init = methods.get("__init__")
    if init is None:
        raise NotSplit("no __init__ in the class that uses it")
    init_stmt, linear = _built(init, attr)
    in_features, out_features, rest = _linear_args(linear)
    uses = [(name, node) for name, fn in methods.items() if name != "__init__"
            for node in walk(fn) if is_self_attr(node, attr)]
    if len(uses) != 1:
        raise NotSplit(f"self.{attr} is used {len(uses)} times outside __init__; one call that is split is understood")
    method = methods[uses[0][0]]
    body = list(method.body.body)
    call, proj_index = _the_call(body, attr)
    split_index, removed = proj_index, None
    assign = single_assign(body[proj_index])
    if assign and assign[1] is call and len(assign[0]) == 1 and isinstance(assign[0][0], cst.Name):
        # `t = self.fused(x)` first, the split of `t` later
        removed, name = body[proj_index], assign[0][0].value
        split_index = next((i for i in range(proj_index + 1, len(body)) if _reads(body[i], name)), None)
        if split_index is None:
            raise NotSplit(f"the output of self.{attr} is never read")
        if sum(1 for s in body for n in walk(s) if isinstance(n, cst.Name) and n.value == name) != 2:
            raise NotSplit(f"{name} is read besides one split")
    targets, subject, sizes_code, equal = _split_of(body[split_index])
    if subject is not call and not (removed and isinstance(subject, cst.Name) and subject.value == name):
        raise NotSplit(f"the output of self.{attr} is used other than by one split along the last dimension")
    argument = call.args[0].value
    if dotted(argument) is None:
        raise NotSplit("the projection's input is an expression; it would be computed once per part")
    root = dotted(argument).split(".")[0]
    if root != "self" and any(root in assigned_names(s) for s in body[proj_index + 1 : split_index]):
        raise NotSplit(f"{dotted(argument)} changes between the projection and the split")
    if sizes_code is None:
        sizes_code = [_floor_div(out_features, len(targets))] * len(targets)
    if len(targets) != len(sizes_code):
        raise NotSplit(f"{len(sizes_code)} parts assigned to {len(targets)} names")
    sizes_code = [_inline_locals(s, body[:split_index]) for s in sizes_code]
    _check_known_in_init(sizes_code, init, init_stmt)
    sizes = _numeric_sizes(sizes_code, out_features, init, init_stmt, config, equal)
    parts = _part_names(targets, cls, attr)
    new_init = [
        init_stmt.with_changes(
            body=[cst.Assign(targets=[cst.AssignTarget(cst.parse_expression(f"self.{part}"))],
                             value=linear.with_changes(args=[_arg(in_features), _arg(_bare(size)), *rest],
                                                       whitespace_before_args=NO_SPACE))],
            leading_lines=init_stmt.leading_lines if i == 0 else [],
        )
        for i, (part, size) in enumerate(zip(parts, sizes_code, strict=True))
    ]
    split_stmt = body[split_index]
    new_calls = [
        split_stmt.with_changes(
            body=[cst.Assign(targets=[cst.AssignTarget(cst.Name(t))],
                             value=cst.Call(func=cst.parse_expression(f"self.{part}"), args=[cst.Arg(argument)]))],
            leading_lines=split_stmt.leading_lines if i == 0 else [],
        )
        for i, (t, part) in enumerate(zip(targets, parts, strict=True))
    ]
    return FusedSplit(attr, parts, init_stmt, new_init, split_stmt, new_calls, removed, sizes)


def _built(init: cst.FunctionDef, attr: str) -> tuple[cst.SimpleStatementLine, cst.Call]:
    for stmt in init.body.body:
        assign = single_assign(stmt)
        if assign and len(assign[0]) == 1 and is_self_attr(assign[0][0], attr) and isinstance(assign[1], cst.Call):
            kind = last_part(dotted(assign[1].func))
            if kind != "Linear":
                raise NotSplit(f"self.{attr} is a {kind or 'call'}, not an nn.Linear")
            return stmt, assign[1]
    raise NotSplit(f"self.{attr} is not built by a statement of its own at the top of __init__")


def _linear_args(call: cst.Call):
    positional = [a for a in call.args if a.keyword is None and not a.star]
    keywords = {a.keyword.value: a for a in call.args if a.keyword is not None}
    if any(a.star for a in call.args):
        raise NotSplit("nn.Linear built with *args/**kwargs")
    sizes = [a.value for a in positional[:2]] + [keywords[k].value for k in ("in_features", "out_features") if k in keywords]
    if len(sizes) != 2:
        raise NotSplit("cannot tell the nn.Linear's in and out features")
    rest = [a for a in positional[2:]] + [a for k, a in keywords.items() if k not in ("in_features", "out_features")]
    return sizes[0], sizes[1], [a.with_changes(comma=cst.MaybeSentinel.DEFAULT, whitespace_after_arg=NO_SPACE) for a in rest]


def _the_call(body: list[cst.BaseStatement], attr: str) -> tuple[cst.Call, int]:
    for index, stmt in enumerate(body):
        for node in walk(stmt):
            if isinstance(node, cst.Call) and is_self_attr(node.func, attr):
                positional = [a for a in node.args if a.keyword is None and not a.star]
                if len(node.args) != 1 or len(positional) != 1:
                    raise NotSplit("the projection is called with other than one input")
                if not isinstance(stmt, cst.SimpleStatementLine):
                    raise NotSplit("the projection is called inside a compound statement")
                return node, index
    raise NotSplit("the projection is not called at the top level of the method")


def _split_of(stmt: cst.BaseStatement):
    """(target names, the split tensor, part sizes (None for a chunk), whether the parts are equal)
    for `a, b, c = X.split(...)` / `X.chunk(n, ...)` / `torch.split(X, ...)` along dim -1."""
    assign = single_assign(stmt)
    if not assign or len(assign[0]) != 1 or not isinstance(assign[1], cst.Call):
        raise NotSplit("its output is not unpacked from one split or chunk")
    target, call = assign[0][0], assign[1]
    if not isinstance(target, (cst.Tuple, cst.List)) or not all(isinstance(e.value, cst.Name) for e in target.elements):
        raise NotSplit("the parts are not unpacked into plain names")
    names = [e.value.value for e in target.elements]
    func = call.func
    method = last_part(dotted(func)) if dotted(func) else (func.attr.value if isinstance(func, cst.Attribute) else "")
    if method not in SPLIT_METHODS:
        raise NotSplit(f"its output goes through {method or 'a call'}, not split or chunk")
    args = list(call.args)
    if dotted(func) in ("torch.split", "torch.chunk"):
        subject, args = (args[0].value if args else None), args[1:]
    elif isinstance(func, cst.Attribute):
        subject = func.value
    else:
        raise NotSplit("unrecognised split call")
    positional = [a.value for a in args if a.keyword is None]
    keywords = {a.keyword.value: a.value for a in args if a.keyword is not None}
    dim = keywords.get("dim", positional[1] if len(positional) > 1 else None)
    if not (isinstance(dim, cst.UnaryOperation) and isinstance(dim.operator, cst.Minus)
            and isinstance(dim.expression, cst.Integer) and dim.expression.value == "1"):
        raise NotSplit("split along a dimension other than -1 (the features)")
    first = keywords.get("split_size_or_sections", keywords.get("chunks", positional[0] if positional else None))
    if first is None:
        raise NotSplit("no split sizes")
    if method == "chunk":
        if not isinstance(first, cst.Integer) or int(first.value) != len(names):
            raise NotSplit("chunk count is not the number of names unpacked")
        return names, subject, None, True
    if isinstance(first, (cst.List, cst.Tuple)):
        return names, subject, [e.value for e in first.elements], False
    return names, subject, [first] * len(names), True  # equal parts of `first` features each


def _reads(stmt: cst.BaseStatement, name: str) -> bool:
    return any(isinstance(n, cst.Name) and n.value == name for n in walk(stmt))


def _floor_div(value: cst.BaseExpression, n: int) -> cst.BaseExpression:
    return cst.BinaryOperation(left=_paren(value), operator=cst.FloorDivide(), right=cst.Integer(str(n)))


def _paren(node: cst.BaseExpression) -> cst.BaseExpression:
    if isinstance(node, (cst.Name, cst.Attribute, cst.Integer, cst.Call)) or node.lpar:
        return node
    return node.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])


def _inline_locals(size: cst.BaseExpression, before: list[cst.BaseStatement]) -> cst.BaseExpression:
    """Forward locals in a size (`kv_size = self.n_kv * self.head_dim`) replaced by their value."""
    values: dict[str, cst.BaseExpression] = {}
    for stmt in before:
        assign = single_assign(stmt)
        for target in assign[0] if assign else ():
            if isinstance(target, cst.Name):
                values[target.value] = assign[1]
        if not assign:  # bound some other way (tuple, loop, branch): its value is not known here
            for name in _bound_anywhere(stmt):
                values.pop(name, None)

    class _Inline(SharingTransformer):
        def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.BaseExpression:
            return _paren(values[original.value]) if original.value in values else updated

        def visit_Attribute(self, node: cst.Attribute) -> bool:
            node.value.visit(self)
            return False

    for _ in range(4):  # locals defined from locals
        size = size.visit(_Inline())
    return size


def _bound_anywhere(stmt: cst.BaseStatement) -> set[str]:
    targets = [t.target for n in walk(stmt) if isinstance(n, cst.Assign) for t in n.targets]
    targets += [n.target for n in walk(stmt) if isinstance(n, (cst.AugAssign, cst.AnnAssign, cst.For, cst.NamedExpr))]
    return {n.value for t in targets for n in walk(t) if isinstance(n, cst.Name)}


def _check_known_in_init(sizes: list[cst.BaseExpression], init: cst.FunctionDef, stop: cst.CSTNode) -> None:
    """Every name a size reads exists in `__init__` where the new projections are built."""
    assigned: set[str] = set()
    for stmt in init.body.body:
        if stmt is stop:
            break
        assign = single_assign(stmt)
        for target in assign[0] if assign else ():
            if is_self_attr(target):
                assigned.add(target.attr.value)
    params = {p.name.value for p in (*init.params.params, *init.params.kwonly_params)}
    for size in sizes:
        for node in walk(size):
            if is_self_attr(node) and node.attr.value not in assigned:
                raise NotSplit(f"size self.{node.attr.value} is not set in __init__ before the projection")
        for name in names_read(size) - params - {"self", "int", "getattr"}:
            raise NotSplit(f"size reads {name}, which __init__ does not have")


def _numeric_sizes(sizes, out_features, init, stop, config: dict, equal: bool) -> tuple[int, ...] | None:
    if equal:
        return None  # the conversion cuts the rows evenly, and checks that they divide
    values = InitSizes(init, config, stop)
    numbers = [values.value(s) for s in sizes]
    total = values.value(out_features)
    if any(not isinstance(n, int) for n in numbers) or not isinstance(total, int):
        raise NotSplit("the part sizes cannot be computed from config.json")
    if sum(numbers) != total or min(numbers) <= 0:
        raise NotSplit(f"part sizes {numbers} do not add up to the projection's {total} features")
    return tuple(numbers)


def _part_names(targets: list[str], cls: cst.ClassDef, attr: str) -> list[str]:
    taken = {n.attr.value for n in walk(cls) if is_self_attr(n)} | set(function_defs(cls))
    names = []
    for target in targets:
        stem = SUFFIXES.sub("", target).strip("_") or target
        name = f"{stem}_proj"
        if name in taken or name in names:
            name = f"{attr}_{stem}"
        if name in taken or name in names:
            raise NotSplit(f"no free attribute name for the part {target}")
        names.append(name)
    return names


def _arg(value: cst.BaseExpression) -> cst.Arg:
    return cst.Arg(value)


def _bare(node: cst.BaseExpression) -> cst.BaseExpression:
    """A whole argument needs no parentheses of its own."""
    return node.with_changes(lpar=[], rpar=[]) if getattr(node, "lpar", None) else node


# -- rewriting ------------------------------------------------------------------------------------
def _apply(cls: cst.ClassDef, split: FusedSplit) -> cst.ClassDef:
    replace = {split.init_stmt: split.new_init, split.split_stmt: split.new_calls}
    if split.removed is not None:
        replace[split.removed] = []

    class _Replace(SharingTransformer):
        def leave_SimpleStatementLine(self, original, updated):
            if original in replace:
                new = replace[original]
                return cst.FlattenSentinel(new) if new else cst.RemovalSentinel.REMOVE
            return updated

    return cls.visit(_Replace())
