"""The one small interface every rewrite implements.

A transform is a libcst codemod over one modeling file. It reads the repo-wide analysis
(which class plays which role), records every change it makes with its line, and raises
diagnostics for shapes it does not understand instead of guessing.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import libcst as cst
from libcst.codemod import Codemod, CodemodContext
from libcst.metadata import CodeRange, MetadataWrapper, PositionProvider

from porter.errors import Diagnostic


@dataclass(frozen=True)
class Change:
    """One rewrite, as the report shows it."""

    transform: str
    file: str
    line: int | None
    message: str

    def as_dict(self) -> dict:
        return {"transform": self.transform, "file": self.file, "line": self.line, "message": self.message}


@dataclass
class PortState:
    """What transforms share across files: analysis, changes, diagnostics, implied weight ops."""

    analysis: object  # porter.analysis.RepoAnalysis; typed loosely to keep this module import-light
    changes: list[Change] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    weight_ops: list = field(default_factory=list)
    facts: dict = field(default_factory=dict)
    original_code: dict[str, str] = field(default_factory=dict)  # file -> source as read
    original_trees: dict[str, cst.Module] = field(default_factory=dict)  # file -> tree as parsed
    _lines: dict[str, _FileLines] = field(default_factory=dict, repr=False)

    def lines(self, filename: str) -> _FileLines:
        """Line lookup for one file, shared by every transform that records on it."""
        if filename not in self._lines:
            self._lines[filename] = _FileLines(self.original_trees.get(filename), self.original_code.get(filename))
        return self._lines[filename]


class _FileLines:
    """Lines of nodes in one file, as the user wrote it.

    Positions come from libcst's PositionProvider, which generates the code of a whole
    tree: the costliest step of a rewrite if repeated for every transform. So they are
    resolved at most once for the tree as parsed (a node no transform replaced is found
    there, at its original line), and once per later tree actually asked about (a node a
    transform built: its line in that tree, mapped back to the original text).
    """

    def __init__(self, original_tree: cst.Module | None, original_code: str | None):
        self.original_tree = original_tree
        self.original_code = original_code
        self._original_positions: Mapping[cst.CSTNode, CodeRange] | None = None
        self._tree: cst.Module | None = None  # the latest later tree asked about
        self._positions: Mapping[cst.CSTNode, CodeRange] = {}
        self._line_map: dict[int, int] | None = None

    def line_of(self, node: cst.CSTNode, tree: cst.Module | None) -> int | None:
        if self.original_tree is not None:
            if self._original_positions is None:
                self._original_positions = _positions(self.original_tree)
            position = self._original_positions.get(node)
            if position is not None:
                return position.start.line
        if tree is None:
            return None
        if tree is not self._tree:
            self._tree, self._positions, self._line_map = tree, _positions(tree), None
        position = self._positions.get(node)
        if position is None:
            return None
        return self._original_line(position.start.line)

    def _original_line(self, line: int) -> int:
        if self.original_code is None or self._tree is None:
            return line
        if self._line_map is None:
            current_lines = self._tree.code.splitlines()
            matcher = difflib.SequenceMatcher(None, current_lines, self.original_code.splitlines(), autojunk=False)
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


def _positions(tree: cst.Module) -> Mapping[cst.CSTNode, CodeRange]:
    """PositionProvider's result for `tree`, computed by the provider alone: resolving it
    through a MetadataWrapper also walks the whole tree once more for the batched providers,
    of which there are none here, and that walk cost as much as the positions themselves."""
    provider = PositionProvider()
    try:
        provider._computed = {}
        provider._gen_impl(tree)  # one code generation that records every node's range
    except AttributeError:  # a libcst without these internals: the public, slower way
        return MetadataWrapper(tree, unsafe_skip_copy=True).resolve(PositionProvider)
    return provider._computed


class Transform(Codemod):
    """Base class: subclasses implement `transform_module_impl` and call `record`/`refuse`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def __init__(self, context: CodemodContext, state: PortState, filename: str):
        super().__init__(context)
        self.state = state
        self.filename = filename
        self._input: cst.Module | None = None

    def apply(self, tree: cst.Module) -> cst.Module:
        """Run the transform. Positions are computed only if a change is recorded (see
        `_FileLines`): resolving them for every transform on every file would dominate the run."""
        self._input = tree
        return self.transform_module_impl(tree)

    def rewrite_classes(self, tree: cst.Module, names: set[str], rewrite) -> cst.Module:
        """Apply `rewrite(class_def) -> class_def` to the module-level classes named in `names`."""
        body = [rewrite(s) if isinstance(s, cst.ClassDef) and s.name.value in names else s for s in tree.body]
        return tree.with_changes(body=body)

    def line_of(self, node: cst.CSTNode) -> int | None:
        """The node's line in the file as the user wrote it (earlier transforms shift lines)."""
        return self.state.lines(self.filename).line_of(node, self._input)

    def record(self, node: cst.CSTNode | None, message: str) -> None:
        line = self.line_of(node) if node is not None else None
        self.state.changes.append(Change(self.name, self.filename, line, message))

    def refuse(self, node: cst.CSTNode | None, message: str, symbol: str | None = None) -> None:
        line = self.line_of(node) if node is not None else None
        self.state.diagnostics.append(Diagnostic(self.filename, line, f"[{self.name}] {message}", symbol))
