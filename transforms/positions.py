"""Lines of nodes, as the user wrote them, for the changes and diagnostics transforms record.

libcst's PositionProvider generates the code of a whole module to place its nodes, which
costs as much as the code generation of the port itself; asked afresh by every transform
that records a change, it dominated the rewrite. Here positions are worked out per
module-level statement and remembered by statement: libcst trees are immutable and a
transform that changes one class leaves the other statements as they were, shared by
the next tree. So each statement is placed once, only when a node in it is asked about,
and a later tree costs only the statements that changed. The lines found are the ones
PositionProvider gives for the whole module.
"""

from __future__ import annotations

import difflib
from collections.abc import Container, Mapping

import libcst as cst
from libcst._nodes.internal import CodegenState
from libcst.metadata import MetadataWrapper, PositionProvider

from transforms.cst_utils import FORMATTING, children_of, code_of, walk, walk_with_layout


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


def _place(module: cst.Module, node: cst.CSTNode) -> Mapping[cst.CSTNode, int]:
    """Start line (from 1) of every node of `node`, generated alone with `module`'s settings."""
    try:
        state = _LineCodegenState(module.default_indent, module.default_newline)
        node._codegen(state)
        return state.starts
    except (AttributeError, TypeError):  # a libcst whose code generation differs: the public way
        alone = module.with_changes(header=[], body=[node] if isinstance(node, cst.BaseStatement) else [], footer=[])
        positions = MetadataWrapper(alone, unsafe_skip_copy=True).resolve(PositionProvider)
        return {n: r.start.line for n, r in positions.items()}


def _is_class(node: cst.CSTNode) -> bool:
    """A class with an indented body: placed and counted a member at a time."""
    return isinstance(node, cst.ClassDef) and isinstance(node.body, cst.IndentedBlock)


def _bare(cls: cst.ClassDef) -> cst.ClassDef:
    """The class with `pass` for its members: its header nodes where they stand in the class."""
    return cls.with_changes(body=cls.body.with_changes(body=[cst.SimpleStatementLine([cst.Pass()])], footer=[]))


class _TreeLines:
    """Where each node of one module is: its statement, and that statement's first line.

    A statement is placed (its code generated with the start line of every node) only when
    a node asked about is in it; the statements before it are only counted, in lines of their
    code (remembered by `code_of`, which the module's code is joined from). Membership is
    a set of the statement's nodes, from a walk of its remembered children, far cheaper
    than placing it."""

    def __init__(self, tree: cst.Module, placed: dict[cst.CSTNode, Mapping[cst.CSTNode, int]], memo=None):
        self.tree = tree
        self._placed = placed
        self._memo = memo or _StatementMemo()
        self.pieces: list[tuple[cst.CSTNode, int]] = []  # (statement, lines before it)
        offset = 0
        for item in (*tree.header, *tree.body, *tree.footer):
            self.pieces.append((item, offset))
            offset += self._memo.lines(tree, item)
        self._lines: list[str] | None = None

    def line(self, node: cst.CSTNode) -> int | None:
        if type(node) in FORMATTING:
            return self._layout_line(node)
        for item, offset in self.pieces:
            if id(node) not in self._memo.nodes(item):
                continue
            if _is_class(item):
                start = self._line_in_class(item, node)
            else:
                start = self._start_in(item, node)
            if start is not None:
                return start + offset
        return None

    def _layout_line(self, node: cst.CSTNode) -> int | None:
        """A whitespace, comment or bracket node, which the node sets leave out (see `walk`):
        found by a walk of every node, and placed with its whole statement (rarely asked)."""
        for item, offset in self.pieces:
            if any(found is node for found in walk_with_layout(item)):
                start = _place(self.tree, item).get(node)
                return None if start is None else start + offset
        return None

    def _start_in(self, statement: cst.CSTNode, node: cst.CSTNode) -> int | None:
        """The node's line counted from the statement's first line (1), placing the statement once."""
        if statement not in self._placed:
            self._placed[statement] = _place(self.tree, statement)
        return self._placed[statement].get(node)

    def _line_in_class(self, cls: cst.ClassDef, node: cst.CSTNode) -> int | None:
        """A class is placed a member at a time: a transform that changes one method leaves
        the others shared with the tree before, placed already. The lines before a member
        are counted from the class's header and the members before it."""
        members = cls.body.body
        index = self._memo.nodes(cls)[id(node)]
        if index >= 0:
            start = self._start_in(members[index], node)
            if start is None:
                return None
            before = sum(self._memo.lines(self.tree, m) for m in members[:index])
            return self._memo.header_lines(self.tree, cls) + before + start
        # The class statement itself, its decorators or its header: placed without the
        # members; the block around them, rarely asked about, with the whole class.
        starts = self._placed.get(cls)
        if starts is None:
            bare = _bare(cls)
            starts = self._placed[cls] = dict(_place(self.tree, bare))
            starts[cls] = starts.pop(bare)
        if node not in starts and cls.body not in starts:
            starts = self._placed[cls] = _place(self.tree, cls)
        return starts.get(node)

    def code_lines(self) -> list[str]:
        if self._lines is None:
            self._lines = self.lines_of([item for item, _ in self.pieces])
        return self._lines

    def lines_of(self, items: list[cst.CSTNode]) -> list[str]:
        """The lines of these statements' code, one after the other."""
        return "".join(self._memo.code(self.tree, item) for item in items).splitlines()


class _StatementMemo:
    """Code, line count and node set of module-level statements and class members,
    remembered by statement for one file."""

    def __init__(self) -> None:
        self._nodes: dict[cst.CSTNode, Container[int]] = {}
        self._codes: dict[cst.CSTNode, str] = {}
        self._lines: dict[cst.CSTNode, int] = {}
        self._headers: dict[cst.ClassDef, int] = {}

    def nodes(self, item: cst.CSTNode) -> Container[int]:
        """Ids of the statement's nodes (the statement, kept here, keeps them alive). For a
        class, a mapping of each id to the index of the member that holds it (-1: the class
        statement itself), built from its members' own sets: a member that a transform left
        as it was is shared by the next version of the class and not walked again."""
        found = self._nodes.get(item)
        if found is None:
            if _is_class(item):
                found = self._nodes[item] = self._class_nodes(item)
            else:
                found = self._nodes[item] = frozenset(map(id, walk(item)))
        return found

    def _class_nodes(self, cls: cst.ClassDef) -> dict[int, int]:
        owners = {node: index for index, member in enumerate(cls.body.body) for node in self.nodes(member)}
        members = {id(member) for member in cls.body.body}
        stack: list[cst.CSTNode] = [cls]
        while stack:  # the class's own nodes, without descending into its members
            node = stack.pop()
            if id(node) not in members:
                owners[id(node)] = -1
                stack.extend(children_of(node))
        return owners

    def lines(self, tree: cst.Module, item: cst.CSTNode) -> int:
        """Newlines in the statement's code: indentation adds none, so this is the same
        wherever the statement stands. A class counts its header and its members, so a new
        version of a class costs only the members that changed."""
        count = self._lines.get(item)
        if count is None:
            if _is_class(item):
                members = sum(self.lines(tree, member) for member in item.body.body)
                count = self.header_lines(tree, item) + members + len(item.body.footer)
            else:
                count = self.code(tree, item).count("\n")
            self._lines[item] = count
        return count

    def header_lines(self, tree: cst.Module, cls: cst.ClassDef) -> int:
        """Lines of a class before its first member: blank lines, decorators, the `class` line(s)."""
        count = self._headers.get(cls)
        if count is None:
            count = self._headers[cls] = tree.code_for_node(_bare(cls)).count("\n") - 1  # less the `pass` line
        return count

    def code(self, tree: cst.Module, item: cst.CSTNode) -> str:
        """The statement's code in `tree` (the module's indent and newline)."""
        if (tree.default_indent, tree.default_newline) == ("    ", "\n"):
            return code_of(item)  # remembered for the whole rewrite, shared with module_code
        code = self._codes.get(item)
        if code is None:
            code = self._codes[item] = tree.code_for_node(item)
        return code


class FileLines:
    """Lines of nodes of one file, in the file as the user wrote it.

    A node of the tree as parsed is at its own line. A node of a later tree (one a
    transform built) is placed in that tree, and its line mapped back to the original
    text by matching the lines of the two texts.
    """

    def __init__(self, original_tree: cst.Module | None, original_code: str | None):
        self.original_code = original_code
        self._original_tree = original_tree
        self._placed: dict[cst.CSTNode, Mapping[cst.CSTNode, int]] = {}  # statement -> its nodes' start lines
        self._memo = _StatementMemo()
        self._original: _TreeLines | None = None
        self._current: _TreeLines | None = None  # the latest later tree asked about
        self._line_map: dict[int, int] | None = None
        self._original_lines: list[str] | None = None

    def _original_lines_of_tree(self) -> _TreeLines:
        if self._original is None:
            self._original = _TreeLines(self._original_tree, self._placed, self._memo)
        return self._original

    def line_of(self, node: cst.CSTNode, tree: cst.Module | None) -> int | None:
        if self._original_tree is not None:
            line = self._original_lines_of_tree().line(node)
            if line is not None:
                return line
        if tree is None:
            return None
        if self._current is None or self._current.tree is not tree:
            self._current, self._line_map = _TreeLines(tree, self._placed, self._memo), None
        line = self._current.line(node)
        if line is None:
            return None
        return self._original_line(line)

    def _original_line(self, line: int) -> int:
        if self.original_code is None or self._current is None:
            return line
        if self._line_map is None:
            self._line_map = self._match_lines()
        if line in self._line_map:
            return self._line_map[line]
        earlier = [c for c in self._line_map if c < line]
        if not earlier:
            return line
        anchor = max(earlier)  # a line this tree added: report the nearest original one
        return self._line_map[anchor] + 1

    def _match_lines(self) -> dict[int, int]:
        """Line of the later tree -> line of the original text, for the lines they share.

        Module-level statements the later tree shares with the tree as parsed (the same
        objects, in the same order) are the same lines; only the lines between them, the
        statements a transform rebuilt or added, are matched by text, each stretch against
        the original stretch between the same shared statements."""
        if self._original_lines is None:
            self._original_lines = self.original_code.splitlines()
        original_lines = self._original_lines
        if self._original_tree is None or not _lines_are_newlines(self.original_code):
            return _matched(self._current.code_lines(), original_lines, 0, 0)
        original = self._original_lines_of_tree()
        where = {id(item): (index, offset) for index, (item, offset) in enumerate(original.pieces)}
        mapping: dict[int, int] = {}
        done_current = done_original = 0  # lines before the last shared statement's end
        last = -1
        gap: list[cst.CSTNode] = []  # the later tree's statements since the last shared one
        for item, offset in self._current.pieces:
            index, original_offset = where.get(id(item), (-1, 0))
            if index <= last:
                gap.append(item)
                continue
            mapping.update(_matched(self._current.lines_of(gap), original_lines[done_original:original_offset],
                                    done_current, done_original))
            size = self._memo.lines(self._current.tree, item)
            mapping.update((offset + k + 1, original_offset + k + 1) for k in range(size))
            done_current, done_original, last, gap = offset + size, original_offset + size, index, []
        mapping.update(_matched(self._current.lines_of(gap), original_lines[done_original:], done_current, done_original))
        return mapping


def _matched(later: list[str], original: list[str], later_start: int, original_start: int) -> dict[int, int]:
    """Lines (from 1) of `later` matched to lines of `original` by text, each list starting
    after the given number of lines."""
    if not later or not original:
        return {}
    matcher = difflib.SequenceMatcher(None, later, original, autojunk=False)
    return {
        later_start + block.a + k + 1: original_start + block.b + k + 1
        for block in matcher.get_matching_blocks()
        for k in range(block.size)
    }


def _lines_are_newlines(code: str) -> bool:
    """`splitlines` ends lines only at "\n" here (no "\r", form feeds or other separators
    it also splits at), so counting newlines counts its lines."""
    return len(code.splitlines()) == code.count("\n") + (not code.endswith("\n") and bool(code))
