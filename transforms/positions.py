"""Lines of nodes, as the user wrote them, for the changes and diagnostics transforms record.

libcst's PositionProvider generates the code of a whole module to place its nodes, which
costs as much as the code generation of the port itself; asked afresh by every transform
that records a change, it dominated the rewrite. Here positions are worked out per
module-level statement and remembered by statement: libcst trees are immutable and a
transform that changes one class leaves the other statements as they were, shared by
the next tree. So each statement is placed once, and a later tree costs only the
statements that changed. The lines found are the ones PositionProvider gives for the
whole module.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

import libcst as cst
from libcst._nodes.internal import CodegenState
from libcst.metadata import MetadataWrapper, PositionProvider


class _Placed:
    """One module-level statement's code and the first line of each of its nodes, from line 1."""

    __slots__ = ("code", "starts", "lines")

    def __init__(self, code: str, starts: Mapping[cst.CSTNode, int]):
        self.code, self.starts = code, starts
        self.lines = code.count("\n")


class _LineCodegenState(CodegenState):
    """Code generation that notes the line each node starts on, by PositionProvider's rules.

    libcst's PositionProvidingCodegenState builds a line-and-column range for every node,
    through a generator-based context manager per node: eight times the cost of plain code
    generation. Only start lines are needed here, so this state counts newlines and records
    the same start lines (the syntactic start where a node declares one, else where its code
    begins) with a plain context object."""

    def __init__(self, default_indent: str, default_newline: str):
        super().__init__(default_indent=default_indent, default_newline=default_newline)
        self.line = 1
        self.starts: dict[cst.CSTNode, int] = {}
        self._stack: list[int] = []

    def add_indent_tokens(self) -> None:
        self.tokens.extend(self.indent_tokens)
        for token in self.indent_tokens:
            self._count(token)

    def add_token(self, value: str) -> None:
        self.tokens.append(value)
        self._count(value)

    def _count(self, value: str) -> None:
        if "\r" in value:  # "\r\n", "\r" and "\n" each end a line, as PositionProvider counts
            self.line += value.count("\n") + value.count("\r") - value.count("\r\n")
        else:
            self.line += value.count("\n")

    def before_codegen(self, node: cst.CSTNode) -> None:
        self._stack.append(self.line)

    def after_codegen(self, node: cst.CSTNode) -> None:
        start = self._stack.pop()
        if node not in self.starts:  # a syntactic start recorded inside wins
            self.starts[node] = start

    def record_syntactic_position(self, node, *, start_node=None, end_node=None):
        return _SyntacticStart(self, node, start_node)


class _SyntacticStart:
    """`with state.record_syntactic_position(node)`: the node starts where its syntax does."""

    __slots__ = ("state", "node", "start_node", "line")

    def __init__(self, state: _LineCodegenState, node: cst.CSTNode, start_node: cst.CSTNode | None):
        self.state, self.node, self.start_node = state, node, start_node

    def __enter__(self) -> None:
        self.line = self.state.line

    def __exit__(self, *exc) -> None:
        starts = self.state.starts
        starts[self.node] = starts[self.start_node] if self.start_node is not None else self.line


def _place(module: cst.Module, node: cst.CSTNode) -> _Placed:
    """Code and start lines of `node` generated alone with `module`'s settings."""
    try:
        state = _LineCodegenState(module.default_indent, module.default_newline)
        node._codegen(state)
        return _Placed("".join(state.tokens), state.starts)
    except (AttributeError, TypeError):  # a libcst whose code generation differs: the public way
        alone = module.with_changes(header=[], body=[node] if isinstance(node, cst.BaseStatement) else [], footer=[])
        positions = MetadataWrapper(alone, unsafe_skip_copy=True).resolve(PositionProvider)
        return _Placed(module.code_for_node(node), {n: r.start.line for n, r in positions.items()})


class _TreeLines:
    """Where each node of one module is: its statement, and that statement's first line."""

    def __init__(self, tree: cst.Module, placed: dict[cst.CSTNode, _Placed]):
        self.tree = tree
        self.pieces: list[tuple[_Placed, int]] = []  # (statement, lines before it)
        offset = 0
        for item in (*tree.header, *tree.body, *tree.footer):
            if item not in placed:
                placed[item] = _place(tree, item)
            self.pieces.append((placed[item], offset))
            offset += placed[item].lines
        self._lines: list[str] | None = None

    def line(self, node: cst.CSTNode) -> int | None:
        for piece, offset in self.pieces:
            start = piece.starts.get(node)
            if start is not None:
                return start + offset
        return None

    def code_lines(self) -> list[str]:
        if self._lines is None:
            self._lines = "".join(piece.code for piece, _ in self.pieces).splitlines()
        return self._lines


class FileLines:
    """Lines of nodes of one file, in the file as the user wrote it.

    A node of the tree as parsed is at its own line. A node of a later tree (one a
    transform built) is placed in that tree, and its line mapped back to the original
    text by matching the lines of the two texts.
    """

    def __init__(self, original_tree: cst.Module | None, original_code: str | None):
        self.original_code = original_code
        self._original_tree = original_tree
        self._placed: dict[cst.CSTNode, _Placed] = {}  # statement -> its code and positions
        self._original: _TreeLines | None = None
        self._current: _TreeLines | None = None  # the latest later tree asked about
        self._line_map: dict[int, int] | None = None

    def line_of(self, node: cst.CSTNode, tree: cst.Module | None) -> int | None:
        if self._original_tree is not None:
            if self._original is None:
                self._original = _TreeLines(self._original_tree, self._placed)
            line = self._original.line(node)
            if line is not None:
                return line
        if tree is None:
            return None
        if self._current is None or self._current.tree is not tree:
            self._current, self._line_map = _TreeLines(tree, self._placed), None
        line = self._current.line(node)
        if line is None:
            return None
        return self._original_line(line)

    def _original_line(self, line: int) -> int:
        if self.original_code is None or self._current is None:
            return line
        if self._line_map is None:
            matcher = difflib.SequenceMatcher(
                None, self._current.code_lines(), self.original_code.splitlines(), autojunk=False
            )
            self._line_map = {
                block.a + k + 1: block.b + k + 1 for block in matcher.get_matching_blocks() for k in range(block.size)
            }
        if line in self._line_map:
            return self._line_map[line]
        earlier = [c for c in self._line_map if c < line]
        if not earlier:
            return line
        anchor = max(earlier)  # a line this tree added: report the nearest original one
        return self._line_map[anchor] + 1
