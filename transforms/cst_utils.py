"""Small helpers over libcst nodes, shared by the analysis and the transforms."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import libcst as cst
import libcst.matchers as m
from libcst._nodes.internal import CodegenState


def dotted(node: cst.BaseExpression | None) -> str | None:
    """`torch.nn.functional.softmax` for an Attribute/Name chain, else None."""
    kind = type(node)  # node types are final: `type() is` answers as isinstance does, without ABC checks
    if kind is cst.Name:
        return node.value
    if kind is cst.Attribute:
        base = dotted(node.value)
        return f"{base}.{node.attr.value}" if base else None
    return None


def call_name(node: cst.CSTNode) -> str | None:
    """The dotted name a Call calls, or the method name for `x.method(...)` on any x."""
    if type(node) is not cst.Call:
        return None
    name = dotted(node.func)
    if name is None and type(node.func) is cst.Attribute:
        return "." + node.func.attr.value
    return name


def last_part(name: str | None) -> str:
    return (name or "").rsplit(".", 1)[-1]


def parse_expr(code: str) -> cst.BaseExpression:
    return cst.parse_expression(code)


def parse_stmts(code: str) -> list[cst.BaseStatement]:
    return list(cst.parse_module(code).body)


def code_of(node: cst.CSTNode) -> str:
    cache = _code_cache
    if cache is None:
        return _generate(node)
    entry = cache.get(id(node))
    if entry is None:
        entry = cache[id(node)] = (node, _generate(node))
    return entry[1]


_EMPTY_MODULE = cst.Module(body=[])


class _PlainCodegenState(CodegenState):
    """libcst's code generation state, whose `record_syntactic_position` (a no-op there too)
    returns a plain context object instead of running a generator-based context manager
    for every expression and statement."""

    def record_syntactic_position(self, node, *, start_node=None, end_node=None):
        return _NO_POSITION


_NO_POSITION = nullcontext()


def _generate(node: cst.CSTNode) -> str:
    """`Module([]).code_for_node(node)`: the node's code with the default indent and newline."""
    try:
        state = _PlainCodegenState(
            default_indent=_EMPTY_MODULE.default_indent, default_newline=_EMPTY_MODULE.default_newline
        )
        node._codegen(state)
    except (AttributeError, TypeError):  # a libcst whose code generation differs: the public way
        return _EMPTY_MODULE.code_for_node(node)
    return "".join(state.tokens)


def module_code(tree: cst.Module) -> str:
    """`tree.code`, joined from the remembered code of each statement (see `code_of`).

    A module's code is its header, statements and footer generated one after the other at
    indent level 0; a statement's code alone is the same where the module uses the default
    indent and newline. Transforms change a few statements of a tree and share the rest,
    so a module's code costs only the statements not printed before."""
    items = (*tree.header, *tree.body, *tree.footer)
    if _code_cache is None or not items or not tree.has_trailing_newline or (
        (tree.default_indent, tree.default_newline) != (_EMPTY_MODULE.default_indent, _EMPTY_MODULE.default_newline)
    ):
        return tree.code
    return "".join(code_of(item) for item in items)


def walk(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """Every node below `node` but layout ones (`FORMATTING`), depth first, itself included."""
    return _depth_first(node, _reversed_children)


def walk_with_layout(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """Every node below `node`, layout ones included, depth first, itself included."""
    return _depth_first(node, lambda current: reversed(children_of(current)))


def _depth_first(node: cst.CSTNode, reversed_children: Callable) -> Iterator[cst.CSTNode]:
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed_children(current))


def children_of(node: cst.CSTNode) -> list[cst.CSTNode]:
    """`node.children`, in the same order, read from the node's fields.

    libcst's `children` rebuilds the node through its visitor machinery (a new node,
    validated) to learn which fields hold children; here the fields a node type visits,
    and their order, are learnt once per type the same way, then read directly."""
    fields = _CHILD_FIELDS.get(type(node))
    if fields is None:
        recorder = _FieldOrder()
        node._visit_and_replace_children(recorder)
        # A field left None may be skipped rather than visited (an f-string's format_spec):
        # the order is learnt from a node whose every None field was visited.
        if all(f.name in recorder.fields for f in dataclasses.fields(node) if getattr(node, f.name) is None):
            _CHILD_FIELDS[type(node)] = tuple(recorder.fields)
        return recorder.children
    children: list[cst.CSTNode] = []
    for name in fields:
        value = getattr(node, name)
        if value is None or value is cst.MaybeSentinel.DEFAULT:
            continue  # no child
        if isinstance(value, (tuple, list)):
            children.extend(value)
        else:
            children.append(value)
    return children


_CHILD_FIELDS: dict[type, tuple[str, ...]] = {}  # node type -> the fields its children are in, in order


class _FieldOrder(cst.CSTVisitor):
    """Notes the fields one node's `_visit_and_replace_children` visits and the children it meets,
    without descending."""

    def __init__(self) -> None:
        self.fields: list[str] = []
        self.children: list[cst.CSTNode] = []

    def on_visit(self, node: cst.CSTNode) -> bool:
        self.children.append(node)
        return False

    def on_visit_attribute(self, node: cst.CSTNode, attribute: str) -> None:
        self.fields.append(attribute)


# Nodes that only hold layout: whitespace, comments, commas, brackets. Two thirds of a
# module's nodes are these, and no search looks for them, so `walk` (and what is built on
# its children: the names read, the types below a node) passes them by.
FORMATTING = frozenset({
    cst.SimpleWhitespace, cst.ParenthesizedWhitespace, cst.TrailingWhitespace, cst.Newline, cst.EmptyLine,
    cst.Comment, cst.Comma, cst.Dot, cst.AssignEqual, cst.Colon, cst.Semicolon, cst.LeftParen, cst.RightParen,
    cst.LeftSquareBracket, cst.RightSquareBracket, cst.LeftCurlyBrace, cst.RightCurlyBrace,
})


def _reversed_children(node: cst.CSTNode) -> tuple[cst.CSTNode, ...]:
    """The node's children but `FORMATTING` ones, last first (the order a depth-first stack
    takes them), remembered inside `children_cached`."""
    cache = _children_cache
    if cache is None:
        return _reversed_content(node)
    entry = cache.get(id(node))
    if entry is None:
        entry = cache[id(node)] = (node, _reversed_content(node))
    return entry[1]


def _reversed_content(node: cst.CSTNode) -> tuple[cst.CSTNode, ...]:
    return tuple(child for child in reversed(children_of(node)) if type(child) not in FORMATTING)


# Walking asks for children again and again, and libcst generates code afresh each time.
# Nodes are immutable and transforms share unchanged subtrees, so within a rewrite each
# node's children, code and the types below it are worked out once. Keys are the nodes'
# ids (a libcst node hashes through a Python method, which would dominate the lookups);
# each entry keeps its node alive, so an id is never reused while the cache lasts. (The
# types below a node are only worked out after its children, whose entry holds it.)
_children_cache: dict[int, tuple[cst.CSTNode, tuple[cst.CSTNode, ...]]] | None = None
_code_cache: dict[int, tuple[cst.CSTNode, str]] | None = None
_types_below_cache: dict[int, int] | None = None  # id -> _type_bit of every node type below it


@contextmanager
def children_cached() -> Iterator[None]:
    """Remember the children, the code and the node types below every node walked, printed or
    visited until the block ends."""
    global _children_cache, _code_cache, _types_below_cache
    outer = _children_cache, _code_cache, _types_below_cache
    if _children_cache is None:
        _children_cache, _code_cache, _types_below_cache = {}, {}, {}
    try:
        yield
    finally:
        _children_cache, _code_cache, _types_below_cache = outer


_TYPE_BITS: dict[type, int] = {}


def _type_bit(node_type: type) -> int:
    bit = _TYPE_BITS.get(node_type)
    if bit is None:
        bit = _TYPE_BITS[node_type] = 1 << len(_TYPE_BITS)
    return bit


def _types_below(node: cst.CSTNode) -> int:
    """The node types found below `node`, as a union of `_type_bit`s (only inside `children_cached`)."""
    below = _types_below_cache.get(id(node))
    if below is None:
        below = 0
        for child in _reversed_children(node):
            below |= _type_bit(type(child)) | _types_below(child)
        _types_below_cache[id(node)] = below
    return below


def _names(node: cst.CSTNode, loads_only: bool) -> set[str]:
    """Bare names in `node`, through the cached children (a libcst visitor rebuilds every
    node it passes). `x.attr` and `f(p=x)` read only `x`. With `loads_only`, names an
    assignment or a `for` binds are left out: `x[i] = v` and `x.a = v` read x, `x = v` does
    not, and a `for` reads its iterable and body (not its target or `else`)."""
    found: set[str] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        kind = type(current)
        if kind is cst.Name:
            found.add(current.value)
        elif kind is cst.Attribute or kind is cst.Arg:
            stack.append(current.value)
        elif loads_only and kind is cst.Assign:
            stack += [t.target for t in current.targets if isinstance(t.target, (cst.Attribute, cst.Subscript))]
            stack.append(current.value)
        elif loads_only and kind is cst.AnnAssign:
            if current.value is not None:
                stack.append(current.value)
        elif loads_only and kind is cst.For:
            stack += [current.iter, current.body]
        else:
            stack.extend(_reversed_children(current))
    return found


class SharingTransformer(cst.CSTTransformer):
    """A CSTTransformer that hands back the original node wherever nothing below it changed.

    libcst rebuilds every node a transformer passes, so a pass over a module that changes
    one call returns a tree of all-new nodes: the caches of children, code and lines, kept
    by node, would then start again after every transform. Here a node whose `leave_`
    method returned it as rebuilt, with every child the original one, is replaced by the
    original, so unchanged subtrees stay shared between the trees before and after.

    Nor does it descend where no `visit_`/`leave_` method of the subclass could be called:
    libcst rebuilds each node it passes, and a pass that rewrites calls or subscripts
    otherwise pays for every name, comma and space of the module. Which node types lie
    below a node is remembered by node inside `children_cached`; outside it every node is
    visited, as libcst does."""

    _handled_types: int | None = None  # None: visit every node
    _types_with_field_methods: frozenset[type] = frozenset()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._handled_types, cls._types_with_field_methods = _handled_types(cls)

    def on_visit(self, node):
        if not super().on_visit(node):
            return False
        handled = self._handled_types
        if handled is None or _types_below_cache is None or type(node) in self._types_with_field_methods:
            return True
        try:
            return bool(_types_below(node) & handled)
        except RecursionError:  # nesting deeper than a walk here can follow: libcst's own visit decides
            return True

    def on_leave(self, original_node, updated_node):
        result = super().on_leave(original_node, updated_node)
        if result is updated_node and result is not original_node and _same_fields(original_node, result):
            return original_node
        return result


def _handled_types(cls: type) -> tuple[int | None, frozenset[type]]:
    """(union of the `_type_bit`s of the node types `cls` has `visit_`/`leave_` methods for, or
    None when a generic hook is overridden; the types with methods for one of their fields)."""
    handled, with_field_methods = 0, set()
    for klass in cls.__mro__:
        if klass is SharingTransformer:
            break
        for name in vars(klass):
            if name in ("on_visit", "on_leave", "on_visit_attribute", "on_leave_attribute"):
                return None, frozenset()
            prefix, _, rest = name.partition("_")
            if prefix not in ("visit", "leave") or not rest:
                continue
            type_name, _, field_name = rest.partition("_")
            node_type = getattr(cst, type_name, None)
            if not (isinstance(node_type, type) and issubclass(node_type, cst.CSTNode)) or node_type in FORMATTING:
                # a method this reading does not understand, or for nodes the types below a
                # node leave out: visit everything
                return None, frozenset()
            handled |= _type_bit(node_type)
            if field_name:
                with_field_methods.add(node_type)
    return handled, frozenset(with_field_methods)


_FIELDS: dict[type, tuple[str, ...]] = {}


def _same_fields(old: cst.CSTNode, new: cst.CSTNode) -> bool:
    """Whether every field of `new` is the very object of `old`'s (sequences item by item)."""
    names = _FIELDS.get(type(old))
    if names is None:
        names = _FIELDS[type(old)] = tuple(f.name for f in dataclasses.fields(old))
    for name in names:
        a, b = getattr(old, name), getattr(new, name)
        if a is b:
            continue
        if not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b)):
            return False
        if any(x is not y for x, y in zip(a, b, strict=True)):
            return False
    return True


def names_loaded(node: cst.CSTNode) -> set[str]:
    """Names whose value `node` reads (plain assignment targets excluded)."""
    return _names(node, loads_only=True)


def names_read(node: cst.CSTNode) -> set[str]:
    """Bare names used anywhere in `node` (attribute and keyword names excluded)."""
    return _names(node, loads_only=False)


def assigned_names(stmt: cst.CSTNode) -> set[str]:
    """Names bound by an assignment statement (tuple targets included)."""
    found: set[str] = set()
    targets: list[cst.BaseExpression] = []
    if isinstance(stmt, cst.SimpleStatementLine):
        for small in stmt.body:
            if isinstance(small, cst.Assign):
                targets += [t.target for t in small.targets]
            elif isinstance(small, (cst.AnnAssign, cst.AugAssign)):
                targets.append(small.target)
    for target in targets:
        if not isinstance(target, (cst.Attribute, cst.Subscript)):
            found |= names_read(target)
    return found


def single_assign(stmt: cst.CSTNode) -> tuple[list[cst.BaseExpression], cst.BaseExpression] | None:
    """(targets, value) for `a = b = value` statements, else None."""
    if isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1:
        small = stmt.body[0]
        if isinstance(small, cst.Assign):
            return [t.target for t in small.targets], small.value
        if isinstance(small, cst.AnnAssign) and small.value is not None:
            return [small.target], small.value
    return None


def is_docstring(stmt: cst.CSTNode) -> bool:
    """A statement that is a bare string literal (a docstring where it opens a body)."""
    return (
        isinstance(stmt, cst.SimpleStatementLine)
        and isinstance(stmt.body[0], cst.Expr)
        and isinstance(stmt.body[0].value, (cst.SimpleString, cst.ConcatenatedString))
    )


def is_self_attr(node: cst.BaseExpression, attr: str | None = None) -> bool:
    return (
        isinstance(node, cst.Attribute)
        and m.matches(node.value, m.Name("self"))
        and (attr is None or node.attr.value == attr)
    )


def function_defs(cls: cst.ClassDef) -> dict[str, cst.FunctionDef]:
    body = cls.body.body if isinstance(cls.body, cst.IndentedBlock) else []
    return {s.name.value: s for s in body if isinstance(s, cst.FunctionDef)}


def param_names(fn: cst.FunctionDef) -> list[str]:
    params = fn.params
    return [p.name.value for p in (*params.posonly_params, *params.params, *params.kwonly_params)]


def star_kwargs_name(fn: cst.FunctionDef) -> str | None:
    star = fn.params.star_kwarg
    return star.name.value if isinstance(star, cst.Param) else None


def base_names(cls: cst.ClassDef) -> list[str]:
    return [last_part(dotted(b.value)) for b in cls.bases if dotted(b.value)]


def spaced(stmt: cst.BaseStatement) -> cst.BaseStatement:
    """A module-level definition with the two blank lines PEP 8 puts before it."""
    return stmt.with_changes(leading_lines=[cst.EmptyLine(), cst.EmptyLine()])


def free_names(stmts: list[cst.BaseStatement], bound: set[str]) -> tuple[set[str], set[str]]:
    """Names the statements read before binding them, in execution order.

    Returns (free names, names bound afterwards). Branches are walked with what was bound
    before them; after a branch, anything bound in any arm counts as bound.
    """
    free: set[str] = set()
    bound = set(bound)
    for stmt in stmts:
        if isinstance(stmt, cst.SimpleStatementLine):
            free |= names_loaded(stmt) - bound
            bound |= assigned_names(stmt)
        elif isinstance(stmt, cst.If):
            free |= names_loaded(stmt.test) - bound
            arm_free, arm_bound = free_names(list(stmt.body.body), bound)
            free |= arm_free
            added = arm_bound
            if stmt.orelse is not None:
                other = [stmt.orelse] if isinstance(stmt.orelse, cst.If) else list(stmt.orelse.body.body)
                arm_free, arm_bound = free_names(other, bound)
                free |= arm_free
                added |= arm_bound
            bound |= added
        elif isinstance(stmt, cst.With):
            for item in stmt.items:
                free |= names_loaded(item.item) - bound
                if item.asname is not None:
                    bound |= names_read(item.asname.name)
            arm_free, bound = free_names(list(stmt.body.body), bound)
            free |= arm_free
        else:
            free |= names_loaded(stmt) - bound
            bound |= {n.value for n in walk(stmt) if isinstance(n, cst.Name)}
    return free, bound


TIGHT_EQUAL = cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace(""))


def with_none_param(fn: cst.FunctionDef, name: str) -> cst.FunctionDef:
    """`fn` with a parameter `name=None` after its other named parameters (before `*args`, `**kwargs`)."""
    param = cst.Param(name=cst.Name(name), default=cst.Name("None"), equal=TIGHT_EQUAL)
    return fn.with_changes(params=fn.params.with_changes(params=[*fn.params.params, param]))


def keyword_arg(name: str, value: str) -> cst.Arg:
    """`name=value` as a call argument, formatted the usual way."""
    return cst.Arg(keyword=cst.Name(name), value=cst.parse_expression(value), equal=TIGHT_EQUAL)
