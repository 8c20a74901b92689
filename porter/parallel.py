"""Tensor- and pipeline-parallel plans inferred from the model's own code (CONTRACT D1, D3, D4).

A tensor-parallel plan pairs projections: a column-parallel one splits its output features
across ranks, and the row-parallel one that consumes them sums the ranks' partial products.
The pairing is only right when the split features reach the consumer untouched by anything
that mixes them (a norm over the hidden size). So the pairs are found from the data flow of
the forward code, never from projection names: every value in a forward carries the set of
projections whose output it derives from, through local variables, tuples, helper methods
and child modules (each child's forward is summarised and instantiated where it is
called). A projection whose input carries others' output is fed by them.

Nothing here imports or runs the repo's code; the module tree is read from the `__init__`
methods that the analysis already indexed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import libcst as cst

from transforms.cst_utils import (
    call_name,
    children_of,
    dotted,
    is_self_attr,
    last_part,
    names_read,
    param_names,
    single_assign,
    walk,
)

LINEAR = "linear"
CONV1D = "conv1d"  # transformers' Conv1D: an affine map whose weight is stored [in, out]
# A module holding one 3-D weight `[experts, out, in]` and applying one slice per expert
# (`F.linear(x, self.weight[i])`): every expert's projection, packed (JetMoE's ParallelExperts).
PACKED_EXPERTS = "packed_experts"
ROUTED = "#routed"  # marks an edge into a packed-experts call's routing arguments (expert sizes, indices)
PROJECTION_CLASSES = {"Linear": LINEAR, "Conv1D": CONV1D}
NORM_REDUCTIONS = {"mean", "var", "rsqrt", "std", "layer_norm", "rms_norm", "group_norm", "normalize"}
SPLITS = {"split", "chunk", "tensor_split", "unbind"}
RESHAPES = {"view", "reshape", "unflatten"}
MAX_DEPTH = 12
ELEMENTWISE = {"clamp", "clamp_", "clip", "to", "float", "half", "bfloat16", "contiguous", "type_as", "dropout"}
METADATA = {"dtype", "device", "shape", "ndim", "is_cuda"}  # a tensor's attributes that carry none of its values
CONFIG_BASES = {"PretrainedConfig", "PreTrainedConfig"}

if TYPE_CHECKING:  # the analysis imports the transforms package, which imports this module
    from porter.analysis import ClassInfo, RepoAnalysis

COLWISE, ROWWISE = "colwise", "rowwise"
COLWISE_GATHER, ROWWISE_SPLIT = "colwise_rep", "rowwise_rep"
REPLICATE = "replicate"
# transformers' styles for packed experts: the weights are sharded by a plan entry on the
# parameter, the module runs on its local shard (`local_params`), and the consumer's partial
# outputs are summed over the ranks (`moe_tp_experts`).
LOCAL_PARAMS, PACKED_COLWISE, MOE_TP_EXPERTS = "local_params", "packed_colwise", "moe_tp_experts"
BIAS_CLASSES = "position_bias_classes"  # fact: attention classes whose interface call passes a position bias


@dataclass(frozen=True)
class Projection:
    path: str  # module path under the base model, "layers.*.self_attn.q_proj"
    kind: str  # LINEAR or CONV1D
    owner: str  # class that builds it
    conditional: bool = False  # built only under an `if` in some `__init__`


@dataclass(frozen=True)
class Tower:
    """A pretrained sub-model of a composite (a vision-language model's text tower): transformers
    reads its plan from its own config class and prefixes it with the attribute that holds it."""

    outer: str  # its path under the composite's base model, "language_model."
    inner: str  # the path of its own base model, "language_model.model."
    config_class: str
    base: str


@dataclass
class ParallelPlans:
    """What inference found, ready for the codemod and the report."""

    base_model: str | None
    config_class: str | None
    tp_plan: dict[str, str] = field(default_factory=dict)
    pp_plan: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)
    replicated: dict[str, str] = field(default_factory=dict)  # projection path -> why it is not split
    pairs: list[tuple[list[str], str]] = field(default_factory=list)  # (column-parallel producers, consumer)
    # projection path -> layout of its raw output: "concatenated" ([a|b|..] along the features),
    # "interleaved" (heads outside the parts), "reshaped" (to heads, no parts seen), "undecided"
    fused: dict[str, str] = field(default_factory=dict)
    conditional: list[str] = field(default_factory=list)  # projections, and base-model modules, some configs do not build
    conv1d: dict[str, str] = field(default_factory=dict)  # Conv1D projection path -> class that builds it
    owners: dict[str, str] = field(default_factory=dict)  # projection path -> class that builds it
    experts: list[str] = field(default_factory=list)  # paths of expert lists (mixture of experts)
    packed_experts: dict[str, str] = field(default_factory=dict)  # packed-experts module path -> its 3-D weight
    routers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # why a plan could not be written
    towers: list[Tower] = field(default_factory=list)
    tower_pp_plans: dict[str, dict] = field(default_factory=dict)  # tower config class -> its pipeline plan

    def written_plans(self) -> dict[str | None, tuple[dict, dict]]:
        """Config class -> (tp plan, pp plan) keyed from the base model it configures: a
        tower's keys lose its prefix, and its head's (outside its base model) are left to the
        head class, as transformers' own models do."""
        out: dict[str | None, tuple[dict, dict]] = {
            self.config_class: (
                {k: v for k, v in self.tp_plan.items() if not any(k.startswith(t.outer) for t in self.towers)},
                self.pp_plan,
            )
        }
        for tower in self.towers:
            tp = {k[len(tower.inner):]: v for k, v in self.tp_plan.items() if k.startswith(tower.inner)}
            out[tower.config_class] = (tp, self.tower_pp_plans.get(tower.config_class, {}))
        return out

    def split_fused(self, path: str, parts: list[str]) -> None:
        """`path` was split by the port into the projections `parts` (full paths): they take
        its place in the plan, and a pair with no concatenated producer left is plain
        colwise/rowwise again."""
        self.tp_plan = {
            key: style
            for old, old_style in self.tp_plan.items()
            for key, style in ([(p, old_style) for p in parts] if old == path else [(old, old_style)])
        }
        self.fused.pop(path, None)
        owner = self.owners.pop(path, None)
        self.owners.update({p: owner for p in parts})
        if path in self.replicated:
            why = self.replicated.pop(path)
            self.replicated.update({p: why for p in parts})
        for index, (group, consumer) in enumerate(self.pairs):
            if path not in group:
                continue
            group = [q for p in group for q in (parts if p == path else [p])]
            self.pairs[index] = (group, consumer)
            if not any(self.fused.get(p) == "concatenated" for p in group):
                self.tp_plan.update({p: COLWISE for p in group})
                self.tp_plan[consumer] = ROWWISE
                self.notes = [n for n in self.notes if not n.startswith(f"{path}: fused output")]
        self.notes.append(f"{path}: concatenated output split into {', '.join(parts)} (weights split at conversion)")

    def replicate_fused(self, path: str) -> None:
        """Keep a concatenated projection whole on every rank (the user asked for it)."""
        self.tp_plan[path] = REPLICATE
        self.replicated[path] = "concatenated output kept fused on request (--replicate-fused-qkv)"
        self.notes = [n for n in self.notes if not n.startswith(f"{path}: fused output")]
        self.notes.append(f"{path}: replicated ({self.replicated[path]}); its consumer splits its replicated input")

    def as_dict(self) -> dict:
        return {
            "base_model": self.base_model,
            "config_class": self.config_class,
            "tp_plan": dict(self.tp_plan),
            "pp_plan": {k: [list(v[0]), list(v[1])] for k, v in self.pp_plan.items()},
            "replicated": dict(self.replicated),
            "pairs": [[list(p), c] for p, c in self.pairs],
            "fused": dict(self.fused),
            "conditional": list(self.conditional),
            "experts": list(self.experts),
            "packed_experts": dict(self.packed_experts),
            "routers": list(self.routers),
            "notes": list(self.notes),
            "problems": list(self.problems),
            "towers": {t.outer: {"config_class": t.config_class, "base_model": t.base} for t in self.towers},
        }


# -- taint values: a set of projection paths, or a tuple of them kept element by element ---------
EMPTY: frozenset = frozenset()


@dataclass(frozen=True)
class Tup:
    items: tuple


def flat(value) -> frozenset:
    if isinstance(value, Tup):
        out: frozenset = EMPTY
        for item in value.items:
            out |= flat(item)
        return out
    return value


def join(a, b):
    """Either of two values (branches of an `if`)."""
    if isinstance(a, Tup) and isinstance(b, Tup):
        longer, shorter = (a, b) if len(a.items) >= len(b.items) else (b, a)
        return Tup(tuple(join(x, shorter.items[i]) if i < len(shorter.items) else x for i, x in enumerate(longer.items)))
    return flat(a) | flat(b)


def substitute(value, bound: dict[str, object]):
    """Replace parameter markers ("@name") by what the caller passed."""
    if isinstance(value, Tup):
        return Tup(tuple(substitute(v, bound) for v in value.items))
    out: frozenset = EMPTY
    for source in value:
        out |= flat(bound.get(source[1:], EMPTY)) if source.startswith("@") else frozenset({source})
    return out


@dataclass
class Flow:
    edges: set[tuple[str, str]]  # (source projection or "@param", consumer projection)
    returned: object
    layouts: dict[str, str] = field(default_factory=dict)  # parameter -> layout its reshapes give it


# -- the module tree ------------------------------------------------------------------------------
def _init_calls(analysis: RepoAnalysis, info: ClassInfo) -> tuple[dict[str, cst.Call], set[str]]:
    """`self.attr = Something(...)` in `__init__` (and inherited `__init__`s), and which of
    those attributes are built only under an `if` (a config may not have them)."""
    found: dict[str, cst.Call] = {}
    conditional: set[str] = set()
    always: set[str] = set()
    for name in [*reversed(analysis.ancestors(info.name)), info.name]:
        init = analysis.classes[name].methods.get("__init__")
        for statement in init.body.body if init else ():
            built = _built_modules(statement, found)
            if not isinstance(statement, cst.If):
                always |= built
                continue
            both = built if statement.orelse is None else set()
            if statement.orelse is not None:
                both = _built_modules(statement.body, {}) & _built_modules(statement.orelse, {})
            always |= built & both if statement.orelse is not None else set()
            conditional |= built - always
    return found, conditional - always


def _built_modules(node: cst.CSTNode, found: dict[str, cst.Call]) -> set[str]:
    built = set()
    for child in walk(node):
        if isinstance(child, cst.Assign) and isinstance(child.value, cst.Call):
            for target in child.targets:
                if is_self_attr(target.target):
                    found[target.target.attr.value] = child.value
                    built.add(target.target.attr.value)
    return built


def _method(analysis: RepoAnalysis, cls: str, name: str) -> cst.FunctionDef | None:
    for owner in (cls, *analysis.ancestors(cls)):
        fn = analysis.classes[owner].methods.get(name)
        if fn is not None:
            return fn
    return None


class ModuleTree:
    """Projections, norms and children of each repo class, read from `__init__`."""

    def __init__(self, analysis: RepoAnalysis):
        self.analysis = analysis
        self.projections: dict[str, dict[str, tuple[str, cst.Call]]] = {}
        self.norms: dict[str, set[str]] = {}
        self.modules: dict[str, list[str]] = {}  # class -> attributes holding any module, in __init__ order
        self.conditional: dict[str, set[str]] = {}
        self.packed = {name: weight for name in analysis.classes if (weight := _packed_experts_weight(analysis, name))}
        kinds = {**PROJECTION_CLASSES, **dict.fromkeys(self.packed, PACKED_EXPERTS)}
        # A repo subclass of nn.Linear that keeps its parameters (no __init__ of its own) is
        # an affine map on the same [out, in] weight, split the same way.
        for name, info in analysis.classes.items():
            if "__init__" not in info.methods and any(last_part(b) == "Linear" for b in info.bases):
                kinds[name] = LINEAR
        for name, info in analysis.classes.items():
            calls, self.conditional[name] = _init_calls(analysis, info)
            self.projections[name] = {
                a: (kinds[last_part(dotted(c.func))], c) for a, c in calls.items() if last_part(dotted(c.func)) in kinds
            }
            self.norms[name] = {a for a, c in calls.items() if "Norm" in last_part(dotted(c.func))}
            self.modules[name] = [a for a, c in calls.items() if last_part(dotted(c.func))[:1].isupper()]

    def is_norm_class(self, cls: str) -> bool:
        """A repo module with no projections whose forward reduces over features."""
        if self.projections.get(cls) or self.analysis.classes[cls].children:
            return False
        forward = _method(self.analysis, cls, "forward")
        return forward is not None and any(last_part(call_name(n)).lstrip(".") in NORM_REDUCTIONS for n in walk(forward))

    def walk_paths(self, cls: str, prefix: str = "", depth: int = 0, conditional: bool = False):
        """(path prefix, class, built only under some `if`) for `cls` and every repo module below it."""
        yield prefix, cls, conditional
        if depth > MAX_DEPTH:
            return
        info = self.analysis.classes[cls]
        maybe = self.conditional[cls]
        for attr, child in info.children.items():
            # A class chosen by a config switch is one of several that may be built there.
            switched = attr in info.alternatives
            for held in [child, *info.alternatives.get(attr, ())]:
                yield from self.walk_paths(held, f"{prefix}{attr}.", depth + 1, conditional or switched or attr in maybe)
        for attr, element in info.layer_lists.items():
            yield from self.walk_paths(element, f"{prefix}{attr}.*.", depth + 1, conditional or attr in maybe)


# -- data flow of one function ----------------------------------------------------------------------
class _FunctionFlow:
    """Abstract run of one forward (or helper method): which projection feeds which."""

    def __init__(self, inference: FlowInference, cls: str, prefix: str, params: dict[str, object]):
        self.inference, self.cls, self.prefix = inference, cls, prefix
        self.tree = inference.tree
        self.info = inference.analysis.classes[cls]
        self.env: dict[str, object] = dict(params)
        self.raw: dict[str, str] = {}  # local name -> projection whose untouched output it holds
        # local name -> projection whose output it holds after ops the flow does not read
        # (`t.view_as(t)`, `act(t)`, `t * s`): where its parts sit is unknown, so a split of it
        # along any axis gathers the projection's output (see `_derived_from`)
        self.derived: dict[str, str] = {}
        self.sources: dict[str, cst.BaseExpression] = {}  # local name -> last expression bound to it (shapes)
        self.modules: dict[str, tuple[str, str]] = {}  # local name -> (class, path prefix) of a layer
        self.edges: set[tuple[str, str]] = set()
        self.returned = None
        self.param_layouts: dict[str, str] = {}

    # statements
    def block(self, body) -> None:
        for stmt in body:
            self.stmt(stmt)

    def stmt(self, stmt: cst.CSTNode) -> None:
        if isinstance(stmt, cst.SimpleStatementLine):
            for small in stmt.body:
                self.small(small)
        elif isinstance(stmt, cst.If):
            before, raw_before, derived_before = dict(self.env), dict(self.raw), dict(self.derived)
            self.block(stmt.body.body)
            taken, raw_taken, derived_taken = self.env, self.raw, self.derived
            # Each arm starts from what came before it: a reshape in one arm does not hide
            # the raw output from the other.
            self.env, self.raw, self.derived = before, dict(raw_before), dict(derived_before)
            if stmt.orelse is not None:
                self.stmt(stmt.orelse) if isinstance(stmt.orelse, cst.If) else self.block(stmt.orelse.body.body)
            for name in set(taken) | set(self.env):
                self.env[name] = join(taken.get(name, EMPTY), self.env.get(name, EMPTY))
            self.raw = {**raw_taken, **self.raw}  # a raw output of either arm may be reshaped after the `if`
            self.derived = {**derived_taken, **self.derived}
        elif isinstance(stmt, (cst.For, cst.While)):
            if isinstance(stmt, cst.For):
                self._bind_layers(stmt.target, stmt.iter)
                self.expr(stmt.iter)
            self.block(stmt.body.body)
        elif isinstance(stmt, (cst.With, cst.Try)):
            self.block(stmt.body.body)
            for handler in getattr(stmt, "handlers", ()):
                self.block(handler.body.body)
        elif isinstance(stmt, cst.Else):
            self.block(stmt.body.body)

    def small(self, small: cst.CSTNode) -> None:
        if isinstance(small, cst.Assign):
            value = self.expr(small.value)
            for target in small.targets:
                self.assign(target.target, value, small.value)
        elif isinstance(small, cst.AnnAssign) and small.value is not None:
            self.assign(small.target, self.expr(small.value), small.value)
        elif isinstance(small, cst.AugAssign):
            current = self.expr(small.target)
            added = self.expr(small.value)
            if isinstance(small.operator, cst.AddAssign) and isinstance(current, Tup) and isinstance(added, Tup):
                self.assign(small.target, Tup(current.items + added.items), None)
            else:
                self.assign(small.target, flat(current) | flat(added), None)
        elif isinstance(small, cst.Return) and small.value is not None:
            value = self.expr(small.value)
            self.returned = value if self.returned is None else join(self.returned, value)
        elif isinstance(small, cst.Expr):
            self.expr(small.value)

    def assign(self, target: cst.BaseExpression, value, source: cst.BaseExpression | None) -> None:
        if isinstance(target, cst.Name):
            kept = self._raw_kept(source)
            origin = self._derived_from(source)  # read before the target's own binding goes
            self.env[target.value] = value
            self.raw.pop(target.value, None)
            self.derived.pop(target.value, None)
            if kept:
                self.raw[target.value] = kept
            self.sources.pop(target.value, None)
            if source is not None:
                self.sources[target.value] = source
            if source is not None and (projection := self._projection_called(source)):
                self.raw[target.value] = projection
            elif target.value not in self.raw and origin and (
                    origin.startswith("@") or origin in flat(value)):  # not what a layer made of it
                self.derived[target.value] = origin
            if isinstance(source, cst.Subscript) and (layer := self._layer_of(source.value)):
                self.modules[target.value] = layer
        elif isinstance(target, (cst.Tuple, cst.List)):
            items = [e.value for e in target.elements]
            if isinstance(value, Tup) and len(value.items) == len(items):
                for item, part in zip(items, value.items, strict=True):
                    self.assign(item, part, None)
            else:
                for item in items:
                    self.assign(item.value if isinstance(item, cst.StarredElement) else item, flat(value), None)

    def _raw_kept(self, source: cst.BaseExpression | None) -> str | None:
        """The projection whose raw output `source` still holds in its layout: an elementwise
        op on it (`qkv.clamp(...)`, `F.dropout(qkv, ...)`, `qkv.to(dtype)`) moves no feature."""
        if not isinstance(source, cst.Call) or not isinstance(source.func, cst.Attribute):
            return None
        if source.func.attr.value not in ELEMENTWISE:
            return None
        # x.clamp(...), or torch.clamp(x, ...) / F.dropout(x, ...)
        subjects = [source.func.value, *(source.args[0].value for _ in [0] if source.args)]
        return next((self.raw[s.value] for s in subjects if isinstance(s, cst.Name) and s.value in self.raw), None)

    def _derived_from(self, source: cst.BaseExpression | None) -> str | None:
        """The projection whose output `source` carries through an op that this flow does not
        read the layout through. A reshape or split of the raw output is read where it is made,
        and a subscript of it marks it where it is taken; anything else (`t.view_as(t)`,
        `self.act(t)`, `t * scale`, a reshape of an already derived value) leaves a value whose
        parts nobody placed."""
        if source is None or isinstance(source, cst.Subscript):
            return None
        carriers, origins = set(), set()
        # Not below a projection's call: its input is not its output.
        for node in _value_reads(source, self._layout_read, self._projection_called):
            if origin := self._projection_called(node):
                carriers.add(origin)
                origins.add(origin)
            elif isinstance(node, cst.Name) and (origin := self.raw.get(node.value) or self.derived.get(node.value)):
                carriers.add(node.value)
                origins.add(origin)
            elif isinstance(node, cst.Name) and flat(self.env.get(node.value, EMPTY)):
                carriers.add(node.value)
        # One tensor in, through an op of its own (`act(t)`, `t * scale`); what two tensors
        # make together (`attn @ v`) is no longer either one's output.
        return origins.pop() if len(carriers) == 1 and len(origins) == 1 else None

    def _layout_read(self, node: cst.CSTNode) -> bool:
        """A reshape or split of a projection's raw output: its layout is read there."""
        if not (isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute)):
            return False
        return node.func.attr.value in RESHAPES | SPLITS and self._raw_of(node.func.value) is not None

    def _raw_of(self, node: cst.BaseExpression) -> str | None:
        """The projection whose untouched output `node` is: a call of it, or a name holding it."""
        return self._projection_called(node) or (self.raw.get(node.value) if isinstance(node, cst.Name) else None)

    def _derived_of(self, node: cst.BaseExpression) -> str | None:
        return self.derived.get(node.value) if isinstance(node, cst.Name) else None

    def _bind_layers(self, target: cst.BaseExpression, iterable: cst.BaseExpression) -> None:
        """`for layer in self.layers`, `enumerate(...)`, `zip(self.h, ...)`, `self.layers[:n]`."""
        layer = self._layer_of(iterable)
        if layer and isinstance(target, cst.Name):
            self.modules[target.value] = layer
            return
        if not isinstance(iterable, cst.Call) or not isinstance(target, (cst.Tuple, cst.List)):
            return
        name = dotted(iterable.func)
        items = [e.value for e in target.elements]
        if name == "enumerate" and len(items) == 2 and iterable.args:
            self._bind_layers(items[1], iterable.args[0].value)
        elif name == "zip" and len(items) == len(iterable.args):
            for item, arg in zip(items, iterable.args, strict=True):
                self._bind_layers(item, arg.value)

    def _layer_of(self, node: cst.BaseExpression) -> tuple[str, str] | None:
        while isinstance(node, cst.Subscript):
            node = node.value
        if is_self_attr(node) and node.attr.value in self.info.layer_lists:
            attr = node.attr.value
            return self.info.layer_lists[attr], f"{self.prefix}{attr}.*."
        return None

    def _projection_called(self, node: cst.BaseExpression) -> str | None:
        if isinstance(node, cst.Call) and is_self_attr(node.func):
            attr = node.func.attr.value
            if attr in self.tree.projections[self.cls]:
                return self.prefix + attr
        return None

    # expressions
    def expr(self, node: cst.CSTNode):
        if isinstance(node, cst.Name):
            return self.env.get(node.value, EMPTY)
        if isinstance(node, cst.Attribute):
            if node.attr.value in METADATA:  # `x.to(residual.dtype)` casts x; it takes no features from residual
                self.expr(node.value)
                return EMPTY
            return EMPTY if dotted(node) and dotted(node).startswith("self.") else flat(self.expr(node.value))
        if isinstance(node, cst.Call):
            return self.call(node)
        if isinstance(node, cst.Tuple) and not any(isinstance(e, cst.StarredElement) for e in node.elements):
            return Tup(tuple(self.expr(e.value) for e in node.elements))
        if isinstance(node, cst.Subscript):
            return self.subscript(node)
        if isinstance(node, cst.BinaryOperation):
            left, right = self.expr(node.left), self.expr(node.right)
            if isinstance(node.operator, cst.Add) and isinstance(left, Tup) and isinstance(right, Tup):
                return Tup(left.items + right.items)
            return flat(left) | flat(right)
        if isinstance(node, cst.IfExp):
            self.expr(node.test)
            return join(self.expr(node.body), self.expr(node.orelse))
        if isinstance(node, cst.Lambda):
            return EMPTY
        if isinstance(node, cst.Arg):
            return self.expr(node.value)
        out: frozenset = EMPTY
        for child in node.children:
            if isinstance(child, (cst.BaseExpression, cst.Arg, cst.BaseElement, cst.BaseSlice, cst.SubscriptElement,
                                  cst.CompFor, cst.BaseDictElement, cst.FormattedStringExpression)):
                out |= flat(self.expr(child))
        return out

    def subscript(self, node: cst.Subscript):
        value = self.expr(node.value)
        if isinstance(node.value, cst.Name) and node.value.value in self.raw:
            self.inference.mark_fused(self.raw[node.value.value], "concatenated")
        if isinstance(value, Tup) and len(node.slice) == 1:
            part = node.slice[0].slice
            if isinstance(part, cst.Index) and (position := _integer(part.value)) is not None:
                return value.items[position] if -len(value.items) <= position < len(value.items) else EMPTY
            if isinstance(part, cst.Slice) and part.step is None:
                lower, upper = (_integer(b) if b is not None else None for b in (part.lower, part.upper))
                if (lower is not None or part.lower is None) and (upper is not None or part.upper is None):
                    return Tup(value.items[lower:upper])
        out = flat(value)
        for element in node.slice:
            out |= flat(self.expr(element.slice))
        return out

    def args(self, call: cst.Call) -> list[object]:
        return [self.expr(a.value) for a in call.args]

    def call(self, node: cst.Call):
        func = node.func
        if is_self_attr(func):
            attr = func.attr.value
            projections = self.tree.projections[self.cls]
            if attr in projections:
                path = self.prefix + attr
                values = self.args(node)
                # A packed-experts module's features come in its first argument; the others
                # (tokens per expert) say which expert gets which rows: routing, not data.
                data = values[:1] if projections[attr][0] == PACKED_EXPERTS else values
                for source in _union(data):
                    self.edges.add((source, path))
                for source in _union(values[len(data):]):
                    self.edges.add((source, path + ROUTED))
                return frozenset({path})
            if attr in self.info.children:
                # Either of the classes a config switch may build there.
                held = [self.info.children[attr], *self.info.alternatives.get(attr, ())]
                value = self.child(held[0], f"{self.prefix}{attr}.", node)
                for other in held[1:]:
                    value = join(value, self.child(other, f"{self.prefix}{attr}.", node))
                return value
            if attr in self.tree.norms[self.cls]:
                self.args(node)
                return EMPTY
            if _method(self.inference.analysis, self.cls, attr) is not None:
                return self.inline(attr, node.args)
            return _union(self.args(node))
        if isinstance(func, cst.Name) and func.value in self.modules:
            cls, prefix = self.modules[func.value]
            return self.child(cls, prefix, node)
        if layer := self._layer_of(func):
            return self.child(layer[0], layer[1], node)
        # A method handed over as a function (`apply_chunking_to_forward(self.ff_chunk, ..., x)`).
        for index, arg in enumerate(node.args):
            if is_self_attr(arg.value) and _method(self.inference.analysis, self.cls, arg.value.attr.value):
                rest = [a for i, a in enumerate(node.args) if i != index and not isinstance(a.value, cst.Integer)]
                return self.inline(arg.value.attr.value, rest)
        name = call_name(node) or ""
        receiver = func.value if isinstance(func, cst.Attribute) else None
        if last_part(name).lstrip(".") in SPLITS:
            # `x.split(...)` or `torch.split(x, ...)`
            subject = receiver if dotted(receiver) != "torch" else (node.args[0].value if node.args else None)
            if subject is not None:
                fused = self._raw_of(subject)
                if fused:
                    self._mark(fused, "concatenated")
                    if not fused.startswith("@"):
                        self.inference.parts.setdefault(fused, set()).add(_chunks_of_features(node))
                elif derived := self._derived_of(subject):
                    self._mark(derived, "concatenated")  # parts placed by ops unread: gathered
                    if not derived.startswith("@"):
                        self.inference.parts.setdefault(derived, set()).add(None)
        if last_part(name).lstrip(".") in RESHAPES and receiver is not None:
            reshaped = self._raw_of(receiver)
            if reshaped:
                self._mark(reshaped, reshape_layout(node, self.sources))
        out = _union(self.args(node))
        return out | flat(self.expr(func))

    def child(self, cls: str, prefix: str, node: cst.Call):
        if self.tree.is_norm_class(cls):
            self.args(node)
            return EMPTY
        forward = _method(self.inference.analysis, cls, "forward")
        if forward is None:
            return _union(self.args(node))
        bound = _bind(forward, node.args, self)
        flow = self.inference.summary(cls, prefix, "forward")
        return self._instantiate(flow, bound)

    def _mark(self, path: str, layout: str) -> None:
        """A projection's output reshaped here; in a method given it as a parameter ("@p"),
        the layout is the parameter's, marked where a caller passes it a projection's output."""
        if path.startswith("@"):
            if LAYOUT_RANK[layout] >= LAYOUT_RANK.get(self.param_layouts.get(path[1:], ""), -1):
                self.param_layouts[path[1:]] = layout
        else:
            self.inference.mark_fused(path, layout)

    def inline(self, method: str, args) -> object:
        fn = _method(self.inference.analysis, self.cls, method)
        bound = _bind(fn, args, self)
        flow = self.inference.summary(self.cls, self.prefix, method, raw_params=True)
        if flow is not None and flow.layouts:
            names = _method_params(fn)
            for position, arg in enumerate(args):
                param = arg.keyword.value if arg.keyword is not None else names[position] if position < len(names) else None
                raw, derived = self._raw_of(arg.value), self._derived_of(arg.value)
                if raw and param in flow.layouts:
                    self._mark(raw, flow.layouts[param])
                elif derived and flow.layouts.get(param) == "concatenated":  # the helper cuts it
                    self._mark(derived, "concatenated")
        return self._instantiate(flow, bound)

    def _instantiate(self, flow: Flow | None, bound: dict[str, object]):
        if flow is None:  # recursion: be conservative
            return _union(bound.values())
        for source, consumer in flow.edges:
            for origin in substitute(frozenset({source}), bound):
                self.edges.add((origin, consumer))
        return substitute(flow.returned if flow.returned is not None else EMPTY, bound)


SHAPE_READS = METADATA | {"size", "dim", "numel", "stride"}


def _value_reads(node: cst.CSTNode, skip: Callable[[cst.CSTNode], bool],
                 leaf: Callable[[cst.CSTNode], object]) -> Iterator[cst.CSTNode]:
    """The nodes below `node` whose values flow into it, not below those `skip` accepts nor
    a tensor whose shape alone is read (`qkv.size()[:-1] + (heads, 3 * d)` carries none of
    `qkv`'s values); a node `leaf` accepts is given without what is below it."""
    if isinstance(node, cst.Attribute) and node.attr.value in SHAPE_READS:
        return
    if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) and node.func.attr.value in SHAPE_READS:
        return
    if skip(node):
        return
    yield node
    if leaf(node):
        return
    for child in children_of(node):
        yield from _value_reads(child, skip, leaf)


# -- layout of a fused output from the shape it is reshaped to --------------------------------------
LAYOUT_RANK = {"reshaped": 0, "interleaved": 1, "undecided": 2, "concatenated": 3}
HEAD_SIZE_WORDS = ("dim", "size", "feat", "width", "channel")


def reshape_layout(call: cst.Call, sources: dict[str, cst.BaseExpression]) -> str:
    """Where a reshape of a projection's raw output puts its parts (a literal factor such as
    the 3 of q, k, v) relative to the heads. `view(b, t, 3, heads, d)` or `(3 * heads, d)`:
    the parts are outermost, the output is `[q|k|v]` (concatenated), and column shards would
    mix them. `view(b, t, heads, 3 * d)` (gpt_neox) or `(heads, 3, d)`: each head holds its
    own q, k, v (interleaved), and column shards keep whole heads. No literal factor: a plain
    reshape to heads. With no heads axis named, the inferred axis (-1) stands for the heads,
    as it takes what the named axes leave; with neither: "undecided" (replicated)."""
    tokens = [t for element in _shape_elements(call, sources) for t in _factors(element)]
    kinds = [_axis_kind(t, sources) for t in tokens]
    extra = next((i for i, t in enumerate(tokens) if _heads_plus_parts(t, sources)), None)
    if extra is not None:
        # `(heads + 2, d)`: key and value appended after every query head (multi-query), so
        # column shards would mix them; `(-1, per_group + 2, d)`: each group of query heads
        # holds its own key and value, and shards of whole groups keep them together.
        return "interleaved" if "inferred" in kinds[:extra] else "concatenated"
    if "part" not in kinds:
        return "reshaped"
    heads = "heads" if "heads" in kinds else "inferred"
    if heads not in kinds:
        return "undecided"
    return "concatenated" if kinds.index("part") < kinds.index(heads) else "interleaved"


def _heads_plus_parts(node: cst.BaseExpression, sources: dict[str, cst.BaseExpression]) -> bool:
    """An axis `heads + n` (n a literal): n parts stored after the heads in the same axis."""
    return (
        isinstance(node, cst.BinaryOperation)
        and isinstance(node.operator, cst.Add)
        and (_integer(node.right) or 0) >= 1
        and _axis_kind(node.left, sources) in ("heads", "other")
        and any("head" in n.value.lower() for n in walk(node.left) if isinstance(n, cst.Name))
    )


def _shape_elements(call: cst.Call, sources: dict[str, cst.BaseExpression]) -> list[cst.BaseExpression]:
    args = list(call.args)
    if last_part(call_name(call) or "").lstrip(".") == "unflatten":
        args = [a for a in args if a.keyword is None or a.keyword.value == "sizes"][1:] if len(args) > 1 else []
    elements: list[cst.BaseExpression] = []
    for arg in args:
        if arg.keyword is None or arg.keyword.value in ("shape", "size", "sizes"):
            elements += _expand_shape(arg.value, sources, 0)
    return elements


def _expand_shape(node: cst.BaseExpression, sources: dict[str, cst.BaseExpression], depth: int) -> list:
    """Shape axes in order, through tuple concatenation and local names bound to shapes."""
    if isinstance(node, cst.Name) and node.value in sources and depth < 4:
        bound = sources[node.value]
        if isinstance(bound, (cst.Tuple, cst.List, cst.BinaryOperation)):
            return _expand_shape(bound, sources, depth + 1)
    if isinstance(node, (cst.Tuple, cst.List)):
        return [
            axis
            for e in node.elements
            for axis in _expand_shape(e.value, sources, depth + 1)
        ]
    if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Add) and (
        _looks_like_shape(node.left, sources) or _looks_like_shape(node.right, sources)
    ):  # `x.size()[:-1] + (heads, d)`; `heads + 2` stays one axis
        return _expand_shape(node.left, sources, depth + 1) + _expand_shape(node.right, sources, depth + 1)
    return [node]


def _looks_like_shape(node: cst.BaseExpression, sources: dict[str, cst.BaseExpression]) -> bool:
    if isinstance(node, cst.Name) and isinstance(sources.get(node.value), (cst.Tuple, cst.List)):
        return True
    if isinstance(node, (cst.Tuple, cst.List)):
        return True
    return isinstance(node, cst.Subscript) and any(isinstance(e.slice, cst.Slice) for e in node.slice)


def _factors(node: cst.BaseExpression) -> list[cst.BaseExpression]:
    """The factors of one axis, outermost first: `3 * heads` -> [3, heads]."""
    if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Multiply):
        return _factors(node.left) + _factors(node.right)
    return [node]


def _axis_kind(node: cst.BaseExpression, sources: dict[str, cst.BaseExpression]) -> str:
    if isinstance(node, cst.Name) and isinstance(sources.get(node.value), (cst.Integer, cst.UnaryOperation)):
        node = sources[node.value]  # a local bound to a literal (`mp_num = 4`) counts as that literal
    value = _integer(node)
    if value is not None:
        return "part" if value >= 2 else "inferred" if value == -1 else "other"
    if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, (cst.FloorDivide, cst.Divide)):
        return "other"  # hidden // heads: a head size
    words = [n.value.lower() for n in walk(node) if isinstance(n, cst.Name)]
    if isinstance(node, cst.Name) and isinstance(sources.get(node.value), (cst.Attribute, cst.Name)):
        words += [n.value.lower() for n in walk(sources[node.value]) if isinstance(n, cst.Name)]
    if any("head" in w and not any(x in w for x in HEAD_SIZE_WORDS) for w in words):
        return "heads"
    return "other"


def _integer(node: cst.BaseExpression) -> int | None:
    if isinstance(node, cst.Integer):
        return int(node.value)
    if isinstance(node, cst.UnaryOperation) and isinstance(node.operator, cst.Minus) and isinstance(node.expression, cst.Integer):
        return -int(node.expression.value)
    return None


def _union(values) -> frozenset:
    out: frozenset = EMPTY
    for value in values:
        out |= flat(value)
    return out


def _method_params(fn: cst.FunctionDef) -> list[str]:
    """Parameters a caller fills: `self`/`cls` dropped unless the method is static."""
    names = param_names(fn)
    static = any(dotted(d.decorator) == "staticmethod" for d in fn.decorators)
    return names if static else names[1:]


def _bind(fn: cst.FunctionDef, args, flow: _FunctionFlow) -> dict[str, object]:
    names = _method_params(fn)
    bound: dict[str, object] = {}
    position = 0
    for arg in args:
        value = flow.expr(arg.value)
        if arg.keyword is not None:
            bound[arg.keyword.value] = value
        elif arg.star:
            bound.setdefault("*", EMPTY)
        elif position < len(names):
            bound[names[position]] = value
            position += 1
    return bound


class FlowInference:
    """Summaries of every (class, path, method) reached from the base model's forward."""

    def __init__(self, analysis: RepoAnalysis, tree: ModuleTree):
        self.analysis, self.tree = analysis, tree
        self._summaries: dict[tuple[str, str, str], Flow | None] = {}
        self.fused: dict[str, str] = {}
        self.parts: dict[str, set[int | None]] = {}  # fused path -> parts of each split (None: not `chunk(n, dim=-1)`)

    def mark_fused(self, path: str, layout: str) -> None:
        # The most constraining use wins: one `.split` on the raw output makes it concatenated.
        if LAYOUT_RANK[layout] >= LAYOUT_RANK.get(self.fused.get(path, ""), -1):
            self.fused[path] = layout

    def summary(self, cls: str, prefix: str, method: str, raw_params: bool = False) -> Flow | None:
        """`raw_params`: a helper method of the class, whose parameters may hold a projection's
        untouched output (`self._split_heads(fused_qkv)`): their reshapes are recorded."""
        key = (cls, prefix, method)
        if key in self._summaries:
            return self._summaries[key]
        self._summaries[key] = None  # guards recursion
        fn = _method(self.analysis, cls, method)
        if fn is None:
            return None
        params = {n: frozenset({"@" + n}) for n in _method_params(fn)}
        flow = _FunctionFlow(self, cls, prefix, params)
        if raw_params:
            flow.raw.update({n: "@" + n for n in _method_params(fn)})
        flow.block(fn.body.body if isinstance(fn.body, cst.IndentedBlock) else [])
        result = Flow(flow.edges, flow.returned, flow.param_layouts)
        self._summaries[key] = result
        return result


# -- plans -----------------------------------------------------------------------------------------
def _layer_scope(path: str) -> str:
    return path[: path.rfind("*") + 1] if "*" in path else ""


def infer_plans(
    analysis: RepoAnalysis, styles: set[str] | None = None, conv1d_as_linear: bool = True, bias_classes: set[str] = frozenset()
) -> ParallelPlans:
    """The plans for the repo's base model, with the reasons for whatever is not split.

    `conv1d_as_linear`: the port turns Conv1D projections into nn.Linear (transforms/
    conv1d_linear.py), so they pair like any linear; without it they stay replicated.
    `bias_classes`: attention classes whose routed call passes a `position_bias`."""
    base = _pick_base_model(analysis)
    plans = ParallelPlans(base_model=base, config_class=_plan_config(analysis, base))
    if base is None:
        plans.problems.append("no base model (a pretrained class owning the layer list) was found")
        return plans
    tree = ModuleTree(analysis)
    projections = _projections(analysis, tree, base)
    inference = FlowInference(analysis, tree)
    flow = inference.summary(base, "", "forward")
    plans.towers = _towers(analysis, tree, base)
    # What decides which rows a packed-experts module gets is routing: its source is a router
    # and feeds no pair (the same holds for a ModuleList's experts, which sit a layer scope below).
    routed = {(s, d[: -len(ROUTED)]) for s, d in (flow.edges if flow else ()) if d.endswith(ROUTED)}
    routers = {s for s, d in routed if s in projections and s != d}
    between = {(s, d) for s, d in (flow.edges if flow else ()) if s in projections and d in projections and s != d
               and not (s in routers and projections[d].kind == PACKED_EXPERTS)}
    # A projection after the layers that reads their output (a pooler, also reached from a
    # projection made before the layers through the collected hidden states) takes a
    # full-width input: no pair.
    across_layers = {d for s, d in between if _layer_scope(s).count("*") > _layer_scope(d).count("*")}
    edges = {
        (s, d)
        for s, d in between
        if _layer_scope(s) == _layer_scope(d) and d not in across_layers
        and _tower_of(plans.towers, s) == _tower_of(plans.towers, d)  # a pair never spans towers
    }
    plans.fused = {p: layout for p, layout in inference.fused.items() if p in projections}
    # Projections some configs do not build, and the base model's own such modules (OPT's
    # final_layer_norm), which its pipeline plan may name.
    plans.conditional = sorted({p for p, projection in projections.items() if projection.conditional}
                               | tree.conditional.get(base, set()))
    plans.owners = {p: projection.owner for p, projection in projections.items()}
    plans.conv1d = {p: projection.owner for p, projection in projections.items() if projection.kind == CONV1D}
    plans.packed_experts = {p: tree.packed[_class_built(tree, projection)] for p, projection in projections.items()
                            if projection.kind == PACKED_EXPERTS}
    _assign_styles(plans, projections, edges, styles, conv1d_as_linear, inference.parts)
    _keep_heads_whole(plans, projections, analysis)
    _keep_per_head_weights_whole(plans, projections, analysis)
    # A position bias (ALiBi) handed to attention covers every head, while a rank holds some.
    _replicate_owned(plans, projections, set(bias_classes), "its attention adds a position bias that covers every head")
    _find_experts(plans, analysis, tree, base, flow.edges if flow else set())
    if plans.packed_experts:
        plans.routers += sorted(r for r in routers if r not in plans.routers)
        plans.notes.append(
            f"packed experts: {', '.join(plans.packed_experts)}, router {', '.join(sorted(routers)) or 'not found'}; "
            "a pair of them is split within each expert (see D4)"
        )
    plans.pp_plan = _pp_plan(plans, analysis, tree, base) if not plans.towers else {}
    for tower in plans.towers:
        plans.tower_pp_plans[tower.config_class] = _pp_plan(plans, analysis, tree, tower.base)
    return plans


def _towers(analysis: RepoAnalysis, tree: ModuleTree, base: str) -> list[Tower]:
    """Pretrained models held below the base model, each with a config class of the repo."""
    towers: list[Tower] = []
    for prefix, cls, _ in tree.walk_paths(base):
        if not prefix or cls not in analysis.pretrained or any(prefix.startswith(t.outer) for t in towers):
            continue
        config = _declared_config(analysis, cls)
        if config is None:
            continue
        attr = analysis.heads.get(cls)
        tower_base = analysis.classes[cls].children.get(attr) if attr else cls
        if tower_base is None:
            continue
        towers.append(Tower(prefix, f"{prefix}{attr}." if attr else prefix, config, tower_base))
    return towers


def _declared_config(analysis: RepoAnalysis, cls: str) -> str | None:
    """The repo config class that `config_class = X` names on `cls` or an ancestor."""
    for owner in (cls, *analysis.ancestors(cls)):
        for stmt in analysis.classes[owner].node.body.body:
            if (a := single_assign(stmt)) and dotted(a[0][0]) == "config_class":
                name = last_part(dotted(a[1]) or "")
                return name if name in analysis.classes else None
    return None


def _tower_of(towers: list[Tower], path: str) -> str:
    return next((t.outer for t in towers if path.startswith(t.outer)), "")


def _pick_base_model(analysis: RepoAnalysis) -> str | None:
    composite = _composite(analysis)
    if composite is not None:
        return composite
    held = [b for b in analysis.base_models if b in set(analysis.heads.values()) or b in analysis.entry_points]
    candidates = sorted(held or analysis.base_models)
    for name in candidates:
        if any(analysis.classes[h].children.get(a) == name for h, a in analysis.heads.items()):
            return name
    return candidates[0] if candidates else None


def _composite(analysis: RepoAnalysis) -> str | None:
    """A pretrained class with no layers of its own that holds two or more pretrained models,
    each configured by a config class of its own (llava's base model: a CLIP vision tower and
    a llama text tower). transformers merges each held model's plan under its attribute, so
    the plans start here and every tower gets its own; starting at one tower's base model
    would leave the others without a plan. Models sharing the holder's config class (an
    encoder and a decoder) are parts of one model, not towers. The outermost one wins (a head
    holding the composite is not one: it holds a single pretrained model)."""
    def towers(name: str) -> int:
        own = _declared_config(analysis, name)
        return sum(
            held in analysis.pretrained and _declared_config(analysis, held) not in (None, own)
            for held in analysis.classes[name].children.values()
        )

    found = [name for name in sorted(analysis.pretrained - analysis.base_models) if towers(name) >= 2]
    inner = {held for name in found for held in analysis.classes[name].children.values()}
    outer = [name for name in found if name not in inner]
    return outer[0] if len(outer) == 1 else None


def _config_class(analysis: RepoAnalysis) -> str | None:
    """The config class `auto_map` names (else the first one): where the plans go."""
    configs = [
        name for name in analysis.classes
        if any(CONFIG_BASES & set(analysis.classes[c].bases) for c in (name, *analysis.ancestors(name)))
    ]
    named = [name for name in configs if name in analysis.entry_points]
    return (named or configs or [None])[0]


def _plan_config(analysis: RepoAnalysis, base: str | None) -> str | None:
    """Where transformers reads the base model's plan: the config `auto_map` names, unless the
    base model declares an unrelated repo config class, a sub-config (a composite whose text
    tower is the only pretrained model the code builds by name, as llava's)."""
    top = _config_class(analysis)
    declared = _declared_config(analysis, base) if base else None
    if declared is None or top is None or declared == top:
        return top
    related = declared in analysis.ancestors(top) or top in analysis.ancestors(declared)
    return top if related else declared


def _projections(analysis: RepoAnalysis, tree: ModuleTree, base: str) -> dict[str, Projection]:
    found = {}
    for prefix, cls, conditional in tree.walk_paths(base):
        for attr, (kind, _) in tree.projections[cls].items():
            path = prefix + attr
            found[path] = Projection(path, kind, cls, conditional or attr in tree.conditional[cls])
    return found


def _assign_styles(plans: ParallelPlans, projections: dict[str, Projection], edges, styles, conv1d_as_linear,
                   parts: dict[str, set[int | None]] | None = None) -> None:
    feeds: dict[str, set[str]] = {p: set() for p in projections}
    fed_by: dict[str, set[str]] = {p: set() for p in projections}
    for source, consumer in edges:
        feeds[source].add(consumer)
        fed_by[consumer].add(source)
    gather = COLWISE_GATHER if styles is None or COLWISE_GATHER in styles else "colwise_gather_output"
    split = ROWWISE_SPLIT if styles is None or ROWWISE_SPLIT in styles else "rowwise_split_input"
    paired: set[str] = set()
    # Only a colwise output is cut across the ranks: a rowwise one is summed over them and a
    # replicated one is whole, so what such a projection feeds starts a group of its own
    # (out_proj -> fc1 -> fc2 pairs fc1 with fc2). Consumers are taken producers first.
    whole: set[str] = set()
    for consumer in _producers_first(projections, fed_by):
        producers = fed_by[consumer] - whole
        if not producers:
            continue
        group = sorted(producers)
        why = None
        if any(fed_by[p] - whole or feeds[p] != {consumer} for p in group):
            why = f"{', '.join(group)} feed more than {consumer}"
        elif undecided := [p for p in group if plans.fused.get(p) == "undecided"]:
            why = (f"{', '.join(undecided)}: fused output reshaped with a part axis but no heads axis named, so "
                   "whether its parts are concatenated or per-head interleaved cannot be read")
        elif not conv1d_as_linear and any(projections[p].kind == CONV1D for p in [*group, consumer]):
            why = "Conv1D stores its weight as [in, out]; transformers' colwise/rowwise split nn.Linear's [out, in]"
        elif any(projections[p].kind == PACKED_EXPERTS for p in [*group, consumer]):
            why = _packed_experts_pair(plans, projections, group, consumer, styles, parts or {})
            if why is None:
                paired |= {*group, consumer}
                whole.add(consumer)
                continue
        if why:
            for path in [*group, consumer]:
                plans.replicated.setdefault(path, why)
            whole |= {*group, consumer}
            continue
        concatenated = [p for p in group if plans.fused.get(p) == "concatenated"]
        for producer in group:
            plans.tp_plan[producer] = gather if concatenated else COLWISE
        plans.tp_plan[consumer] = split if concatenated else ROWWISE
        if concatenated:
            plans.notes.append(
                f"{', '.join(concatenated)}: fused output split as [a|b|...] along the features; the ranks' "
                f"column shards are gathered ({gather}) and {consumer} splits its replicated input ({split})"
            )
        plans.pairs.append((group, consumer))
        paired |= {*group, consumer}
        whole.add(consumer)
    for path in sorted(projections):
        if path not in paired and path not in plans.replicated:
            feeders = sorted(fed_by[path])
            plans.replicated[path] = (
                f"fed only by whole outputs ({', '.join(feeders)}: rowwise or replicated), feeds no projection"
                if feeders and not feeds[path] else "feeds no projection and is fed by none within its layer")
    for path, why in plans.replicated.items():
        if "*" in path:  # inside the layers: declared, so the plan covers every layer projection (D1)
            plans.tp_plan.setdefault(path, REPLICATE)
        plans.notes.append(f"{path}: replicated ({why})")
    unknown = sorted(set(plans.tp_plan.values()) - styles) if styles is not None else []
    if unknown:
        plans.problems.append(f"styles {unknown} are not registered by the installed transformers")
    order = list(projections)  # module-tree order reads best in the config; a weight's entry follows its module's
    plans.tp_plan = dict(sorted(plans.tp_plan.items(), key=lambda item: (
        order.index(item[0]) if item[0] in order else order.index(item[0].rsplit(".", 1)[0]), item[0] not in order)))


def _producers_first(projections: dict[str, Projection], fed_by: dict[str, set[str]]) -> list[str]:
    """The projections in an order where each comes after every projection that feeds it
    (by name where the flow leaves a choice; a loop, which a layer's flow should not hold,
    is broken by name)."""
    order: list[str] = []
    left = sorted(projections)
    while left:
        pending = set(left)
        ready = [p for p in left if not fed_by[p] & pending] or left[:1]
        order += ready
        pending.difference_update(ready)
        left = [p for p in left if p in pending]
    return order


def _packed_experts_pair(plans: ParallelPlans, projections: dict[str, Projection], group: list[str], consumer: str,
                         styles: set[str] | None, parts: dict[str, set[int | None]]) -> str | None:
    """Split a pair of packed-experts modules within each expert, in transformers' MoE styles:
    the producer's weight `[experts, out, in]` by its output rows (`packed_colwise` when the
    forward cuts the output into `[gate|up]` with `chunk(2, dim=-1)`, as that style's two
    parts; `colwise` when it is not cut), the consumer's by its input columns (`rowwise`); the
    producer runs on its shard (`local_params`), the consumer's partial outputs are summed
    (`moe_tp_experts`). The reason it stays replicated, else."""
    if not all(projections[p].kind == PACKED_EXPERTS for p in [*group, consumer]):
        return "packed experts pair only with packed experts (a plain projection beside them splits other features)"
    if len(group) != 1:
        return f"{', '.join(group)} all feed {consumer}"
    producer = group[0]
    cuts = parts.get(producer, set())
    if plans.fused.get(producer) == "concatenated" and cuts != {2}:
        return f"{producer}: output cut other than into two halves with chunk(2, dim=-1): no packed style fits"
    weight_style = PACKED_COLWISE if cuts == {2} else COLWISE
    wanted = {LOCAL_PARAMS, MOE_TP_EXPERTS, weight_style, ROWWISE}
    if styles is not None and not wanted <= styles:
        return f"the installed transformers does not register {sorted(wanted - styles)}"
    plans.tp_plan[producer] = LOCAL_PARAMS
    plans.tp_plan[f"{producer}.{plans.packed_experts[producer]}"] = weight_style
    plans.tp_plan[consumer] = MOE_TP_EXPERTS
    plans.tp_plan[f"{consumer}.{plans.packed_experts[consumer]}"] = ROWWISE
    plans.pairs.append((group, consumer))
    return None


def _class_built(tree: ModuleTree, projection: Projection) -> str:
    attr = projection.path.rsplit(".", 1)[-1]
    return last_part(dotted(tree.projections[projection.owner][attr][1].func))


def _packed_experts_weight(analysis: RepoAnalysis, cls: str) -> str | None:
    """The weight of a packed-experts module: its only parameter, built 3-D (`[experts, out,
    in]`, three positional sizes), of which the forward applies one slice per expert with
    `F.linear(x, self.weight[i])`. None for any other class."""
    info = analysis.classes[cls]
    init, forward = _method(analysis, cls, "__init__"), _method(analysis, cls, "forward")
    if info.children or info.layer_lists or init is None or forward is None:
        return None
    built = {}
    for node in walk(init):
        if isinstance(node, cst.Assign) and isinstance(node.value, cst.Call) and is_self_attr(node.targets[0].target) \
                and last_part(call_name(node.value)) == "Parameter":
            built[node.targets[0].target.attr.value] = node.value
    if len(built) != 1:
        return None
    [(name, call)] = built.items()
    shape = call.args[0].value if call.args else None
    if not isinstance(shape, cst.Call) or sum(1 for a in shape.args if a.keyword is None and a.star == "") != 3:
        return None
    for node in walk(forward):
        if isinstance(node, cst.Call) and last_part(call_name(node)) == "linear" and len(node.args) >= 2:
            weight = node.args[1].value
            if isinstance(weight, cst.Subscript) and is_self_attr(weight.value, name):
                return name
    return None


def _chunks_of_features(call: cst.Call) -> int | None:
    """n for `x.chunk(n, dim=-1)` (or `torch.chunk(x, n, -1)`): n equal parts of the features."""
    if last_part(call_name(call)).lstrip(".") != "chunk":
        return None
    positional = [a.value for a in call.args if a.keyword is None]
    if dotted(call.func) == "torch.chunk":
        positional = positional[1:]
    dim = next((a.value for a in call.args if a.keyword is not None and a.keyword.value == "dim"), None)
    dim = dim if dim is not None else (positional[1] if len(positional) > 1 else None)
    return _integer(positional[0]) if positional and dim is not None and _integer(dim) == -1 else None


def _keep_heads_whole(plans: ParallelPlans, projections: dict[str, Projection], analysis: RepoAnalysis) -> None:
    """An attention module that owns an embedding table (T5-style relative position buckets,
    one column per head) builds a bias over every head; splitting its projections by heads
    would leave the bias whole, so they stay replicated. So do the attention modules below a
    module that owns such a table (an encoder that builds the bias once for every layer,
    MPNet style)."""
    tables = {name for name, info in analysis.classes.items() if any(_is_head_table(c) for c in walk(info.node))}
    owners = {name for name in analysis.attention if name in tables or _held_below(analysis, tables - {name}, name)}
    why = "its attention adds a per-head position bias built from an embedding table, one column per head"
    _replicate_owned(plans, projections, owners, why)


def _replicate_owned(plans: ParallelPlans, projections: dict[str, Projection], owners: set[str], why: str) -> None:
    """Replicate every projection of the `owners` classes, with `why` as the note, and drop the
    pairs they consume."""
    held = {p for p, projection in projections.items() if projection.owner in owners}
    for path in sorted(held - set(plans.replicated)):
        plans.replicated[path] = why
        plans.tp_plan[path] = REPLICATE
        plans.notes.append(f"{path}: replicated ({why})")
    plans.pairs = [(group, consumer) for group, consumer in plans.pairs if consumer not in held]


def _held_below(analysis: RepoAnalysis, holders: set[str], name: str) -> bool:
    """Whether one of `holders` holds class `name`, through modules and layer lists."""
    pending, seen = list(holders), set()
    while pending:
        current = pending.pop()
        if current in seen or current not in analysis.classes:
            continue
        seen.add(current)
        info = analysis.classes[current]
        held = {*info.children.values(), *info.layer_lists.values()}
        if name in held:
            return True
        pending += held
    return False


def _keep_per_head_weights_whole(plans: ParallelPlans, projections: dict[str, Projection], analysis: RepoAnalysis) -> None:
    """An attention module whose `__init__` builds weights per head (a per-head qk-norm shaped
    `(heads, head_dim)`, or one norm per head) normalises every head with its own weights; a
    rank holding half of the heads would use the wrong ones, so its projections stay replicated."""
    owners = set()
    for name in analysis.attention:
        init = analysis.classes[name].methods.get("__init__")  # weights, not reshapes in forward
        if init is not None and any(_is_per_head_shape(c) or _is_built_per_head(c) for c in walk(init)):
            owners.add(name)
    _replicate_owned(plans, projections, owners, "its attention module owns weights built per head, e.g. a per-head qk-norm")


def _is_per_head_shape(node: cst.CSTNode) -> bool:
    """`(self.num_heads, self.head_dim)`: a size whose rows are heads and columns head dimensions."""
    if not isinstance(node, cst.Tuple) or len(node.elements) != 2:
        return False
    rows, columns = (last_part(dotted(e.value) or "").lower() for e in node.elements)
    is_dim = any(word in columns for word in ("size", "dim"))
    return "head" in rows and not any(word in rows for word in ("size", "dim")) and "head" in columns and is_dim


# Calls that read a head count without building anything per head.
NOT_BUILDERS = {"getattr", "hasattr", "setattr", "isinstance", "int", "float", "max", "min", "round", "divmod", "print"}


def _is_head_count(node: cst.BaseExpression) -> bool:
    name = last_part(dotted(node) or "").lower()
    return "head" in name and not any(word in name for word in ("size", "dim", "group"))


def _is_built_per_head(node: cst.CSTNode) -> bool:
    """`PerHeadNorm(self.head_dim, self.num_heads)`, `range(self.num_heads)`: a head count handed
    to what builds the module's weights (one norm per head)."""
    if not isinstance(node, cst.Call) or last_part(call_name(node)) in NOT_BUILDERS:
        return False
    if last_part(call_name(node)).startswith(("warn", "info", "debug", "error")) or "Error" in last_part(call_name(node)):
        return False
    return any(_is_head_count(a.value) for a in node.args)


def _is_head_table(node: cst.CSTNode) -> bool:
    """`nn.Embedding(buckets, self.num_heads)`: one column per head (not per head dimension)."""
    if not (isinstance(node, cst.Call) and last_part(call_name(node)) == "Embedding" and len(node.args) >= 2):
        return False
    width = (dotted(node.args[1].value) or "").lower()
    return "head" in last_part(width) and not any(word in last_part(width) for word in ("size", "dim"))


def _find_experts(plans: ParallelPlans, analysis: RepoAnalysis, tree: ModuleTree, base: str, edges) -> None:
    """Mixture of experts: a layer list inside a layer, beside a projection whose output picks
    what the experts get: the router. Found by data flow (its output reaches the experts'
    projections, as the tokens routed to each), else as the projection whose output goes
    through `topk`/`softmax` in the same forward (routing weights only scale the outputs)."""
    for prefix, cls, _ in tree.walk_paths(base):
        info = analysis.classes[cls]
        if prefix.count("*") == 0:
            continue
        for attr in info.layer_lists:
            if _runs_in_sequence(_method(analysis, cls, "forward"), attr):
                continue  # a stack of layers inside a layer (ALBERT's shared groups), not experts
            experts = f"{prefix}{attr}"
            if experts in plans.experts:  # another class a config switch may build at the same place
                continue
            plans.experts.append(experts)
            own = [f"{prefix}{name}" for name in tree.projections[cls]]
            routing = [p for p in own if any(s == p and d.startswith(f"{experts}.*.") for s, d in edges)]
            forward = _method(analysis, cls, "forward")
            text = cst.Module(body=[]).code_for_node(forward) if forward else ""
            if not routing:
                routing = [p for p in own if f"self.{p[len(prefix):]}(" in text and ("topk" in text or "softmax" in text)]
            if not routing:  # a gate module of its own (a weight Parameter and `topk` in its forward)
                routing = [f"{prefix}{name}" for name, child in info.children.items()
                           if f"self.{name}(" in text and _selects_top_k(analysis, child)]
            plans.routers += [r for r in routing if r not in plans.routers]
    if plans.experts:
        plans.notes.append(
            f"mixture of experts: experts {', '.join(plans.experts)}, router {', '.join(plans.routers) or 'not found'}; "
            "each expert's projections follow the pairs found like any MLP's (tensor-parallel experts, see D4)"
        )


def _selects_top_k(analysis: RepoAnalysis, cls: str) -> bool:
    forward = _method(analysis, cls, "forward")
    return forward is not None and any(last_part(call_name(n)).lstrip(".") == "topk" for n in walk(forward))


def _runs_in_sequence(forward: cst.FunctionDef | None, attr: str) -> bool:
    """Whether `forward` loops over `self.<attr>` feeding each element what the previous one
    returned (`out = layer(hidden); hidden = out[0]`): a stack of layers. Experts each get
    their own tokens and their outputs are summed, never fed to the next expert."""
    if forward is None:
        return False
    for loop in walk(forward):
        if not isinstance(loop, cst.For) or not any(is_self_attr(n, attr) for n in walk(loop.iter)):
            continue
        elements = {n.value for n in walk(loop.target) if isinstance(n, cst.Name)}
        calls = [c for c in walk(loop.body) if isinstance(c, cst.Call) and isinstance(c.func, cst.Name)
                 and c.func.value in elements and c.args and isinstance(c.args[0].value, cst.Name)]
        for call in calls:
            fed = call.args[0].value.value
            derived = set()
            for stmt in walk(loop.body):
                assign = single_assign(stmt) if isinstance(stmt, cst.SimpleStatementLine) else None
                if not assign:
                    continue
                value = assign[1]
                if any(n is call for n in walk(value)) or names_read(value) & derived:
                    derived |= {n.value for t in assign[0] for n in walk(t) if isinstance(n, cst.Name)}
            if fed in derived:
                return True
    return False


# -- pipeline plan ----------------------------------------------------------------------------------
def _pp_plan(plans: ParallelPlans, analysis: RepoAnalysis, tree: ModuleTree, base: str) -> dict:
    info = analysis.classes[base]
    forward = _method(analysis, base, "forward")
    if forward is None:
        plans.problems.append(f"{base} has no forward: no pipeline plan")
        return {}
    if len(info.layer_lists) != 1:
        where = [f"{prefix}{attr}" for prefix, cls, _ in tree.walk_paths(base) if prefix and "*" not in prefix
                 for attr in analysis.classes[cls].layer_lists]
        plans.problems.append(
            f"{base} holds {len(info.layer_lists)} layer lists as direct children"
            + (f" (the layers sit in {', '.join(where)})" if where else "")
            + ": a pipeline plan needs exactly one"
        )
        return {}
    children = set(tree.modules[base])
    order: list[str] = []
    names: dict[str, tuple[list[str], list[str]]] = {}
    statements = [n for n in walk(forward.body) if isinstance(n, (cst.SimpleStatementLine, cst.For))]
    flags = _flag_params(forward)
    loop_bound = {n.value for s in statements if isinstance(s, cst.For) for n in walk(s.target) if isinstance(n, cst.Name)}
    for index, stmt in enumerate(statements):
        nodes = [stmt] if isinstance(stmt, cst.For) else walk(stmt)
        for node in nodes:
            attr, call = _child_use(node, children, info)
            if attr is None or attr in names or call is None:
                continue
            order.append(attr)
            names[attr] = (_input_names(call, flags, loop_bound), _output_names(call, statements[index:]))
    return {attr: names[attr] for attr in order}


def _child_use(node, children: set[str], info: ClassInfo):
    """(child attribute, the call that runs it) when `node` runs a direct child."""
    if isinstance(node, cst.Call) and is_self_attr(node.func) and node.func.attr.value in children:
        return node.func.attr.value, node
    if isinstance(node, cst.For):
        for attr in info.layer_lists:
            if any(is_self_attr(n, attr) for n in walk(node.iter)):
                loop_names = {n.value for n in walk(node.target) if isinstance(n, cst.Name)}
                call = next(
                    (c for c in walk(node.body) if isinstance(c, cst.Call) and isinstance(c.func, cst.Name)
                     and c.func.value in loop_names),
                    None,
                )
                return attr, call
    return None, None


def _flag_params(forward: cst.FunctionDef) -> set[str]:
    """Parameters annotated or defaulted as booleans: switches, not tensors a stage hands on."""
    flags = set()
    for param in forward.params.params + forward.params.kwonly_params:
        annotation = cst.Module(body=[]).code_for_node(param.annotation.annotation) if param.annotation else ""
        default = param.default
        if "bool" in annotation or (isinstance(default, cst.Name) and default.value in ("True", "False")):
            flags.add(param.name.value)
    return flags


def _input_names(call: cst.Call, flags: set[str], loop_bound: set[str]) -> list[str]:
    """Tensors the child takes from the forward: its plain-name arguments, flags and per-layer
    loop variables (a cache entry) left out."""
    names = []
    for arg in call.args:
        value = arg.value
        if arg.star:
            continue
        if isinstance(value, cst.Name) and value.value not in ("None", "True", "False", *flags, *loop_bound):
            names.append(value.value if arg.keyword is None else arg.keyword.value)
    return names


def _output_names(call: cst.Call, statements) -> list[str]:
    """The name the child's (first) output is bound to, following `out = layer(...); h = out[0]`."""
    target = None
    for node in (n for s in statements for n in walk(s)):
        if isinstance(node, cst.Assign) and any(c is call for c in walk(node.value)):
            target = node.targets[0].target
            break
    if target is None:
        return []
    if isinstance(target, cst.Name):
        # `layer_outputs = layer(...)` then `hidden_states = layer_outputs[0]`
        for nxt in statements:
            for node in walk(nxt):
                if (
                    isinstance(node, cst.Assign)
                    and isinstance(node.value, cst.Subscript)
                    and dotted(node.value.value) == target.value
                    and isinstance(node.targets[0].target, cst.Name)
                ):
                    return [node.targets[0].target.value]
        return [target.value]
    if isinstance(target, cst.Tuple):
        return [e.value.value for e in target.elements if isinstance(e.value, cst.Name)][:1]
    return []


__all__ = ["ParallelPlans", "Projection", "Tower", "infer_plans"]
