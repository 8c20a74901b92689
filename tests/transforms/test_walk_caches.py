"""The framework's fast paths give what libcst gives: children, code, and transformer passes
that skip subtrees holding no node type they handle."""

from __future__ import annotations

import textwrap
from contextlib import nullcontext

import libcst as cst

from transforms.cst_utils import (
    FORMATTING,
    SharingTransformer,
    children_cached,
    children_of,
    code_of,
    module_code,
    names_read,
    walk,
)

# Shapes whose children libcst visits conditionally or in an order unlike their fields:
# f-strings with and without a format spec, `import *`, calls, decorators, lambdas,
# comprehensions, async, match, walrus, star-args, annotations, a trailing comment.
SOURCE = textwrap.dedent(
    '''\
    # header
    """Doc."""
    from a import *
    from b import (c, d as e)


    @decorator(1)
    class A(Base, metaclass=M):
        x: int = 3

        async def f(self, *args, key=None, **kwargs) -> "A":
            y = [i * 2 for i in args if (z := i)]
            g = lambda p, q=1: p + q
            s = f"{y!r:>{key}} {g} {z=}"
            async with ctx() as c, other():
                await c.call(*args, **kwargs)[0:2, ...]
            match y:
                case [1, *rest] if rest:
                    return {**kwargs, "k": -y}
                case _:
                    pass
            return s if y else not s
    # footer
    '''
)


def _every_node(node: cst.CSTNode) -> list[cst.CSTNode]:
    """Depth first through libcst's own `children`."""
    return [node, *(below for child in node.children for below in _every_node(child))]


def test_children_of_is_libcsts_children_for_every_node():
    tree = cst.parse_module(SOURCE)
    nodes = _every_node(tree)
    assert len(nodes) > 400
    for node in nodes:
        expected = node.children
        found = children_of(node)
        assert len(found) == len(expected) and all(a is b for a, b in zip(found, expected, strict=True)), node


def test_walk_is_every_node_but_layout_ones_in_the_same_order():
    tree = cst.parse_module(SOURCE)
    every = _every_node(tree)
    expected = [node for node in every if type(node) not in FORMATTING]
    assert len(expected) < len(every) * 2 // 3  # most nodes are whitespace, commas, brackets
    for cached in (False, True):
        with children_cached() if cached else nullcontext():
            found = list(walk(tree))
        assert len(found) == len(expected) and all(a is b for a, b in zip(found, expected, strict=True))
    assert {type(node) for node in every} & FORMATTING  # the source holds every kind the walk leaves out
    assert "c" in names_read(tree.body[-1])


def test_code_of_and_module_code_are_libcsts_code():
    tree = cst.parse_module(SOURCE)
    statement = tree.body[3]
    expected = cst.Module([]).code_for_node(statement)
    assert code_of(statement) == expected
    with children_cached():
        assert module_code(tree) == SOURCE
        assert code_of(statement) == expected
        shorter = tree.with_changes(body=tree.body[:1])
        assert module_code(shorter) == shorter.code == '# header\n"""Doc."""\n# footer\n'
    for text in ("", "\n", "x = 1", "if x:\r\n    y\r\n", "if x:\n\ty\n", "# only a comment\n"):
        with children_cached():
            assert module_code(cst.parse_module(text)) == text


class _RenameCalls(SharingTransformer):
    """Handles calls only: every other subtree may be skipped."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
        self.seen.append(code_of(original.func))
        if isinstance(updated.func, cst.Name) and updated.func.value == "other":
            return updated.with_changes(func=cst.Name("renamed"))
        return updated


class _CountNames(_RenameCalls):
    """A method for a field of one type (FunctionDef.body): that node's children are visited."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies = 0

    def visit_FunctionDef_body(self, node: cst.FunctionDef) -> None:
        self.bodies += 1


def test_a_pass_that_skips_subtrees_calls_the_same_methods_and_gives_the_same_code():
    tree = cst.parse_module(SOURCE)
    plain = _RenameCalls()
    expected = tree.visit(plain)
    with children_cached():
        skipping = _RenameCalls()
        result = tree.visit(skipping)
        assert skipping.seen == plain.seen and len(plain.seen) == 4
        assert result.code == expected.code and "renamed()" in result.code
        assert result.body[0] is tree.body[0] and result.body[1] is tree.body[1]  # untouched statements shared
        counting = _CountNames()
        tree.visit(counting)
        assert counting.bodies == 1 and counting.seen == plain.seen


class _CountCommas(SharingTransformer):
    """Handles a layout node, which the types below a node leave out."""

    def __init__(self) -> None:
        self.commas = 0

    def visit_Comma(self, node: cst.Comma) -> None:
        self.commas += 1


def test_a_pass_over_layout_nodes_visits_every_one_of_them():
    tree = cst.parse_module(SOURCE)
    expected = sum(isinstance(node, cst.Comma) for node in _every_node(tree))
    assert expected >= 8
    with children_cached():
        counting = _CountCommas()
        tree.visit(counting)
    assert counting.commas == expected
