"""The one small interface every rewrite implements.

A transform is a libcst codemod over one modeling file. It reads the repo-wide analysis
(which class plays which role), records every change it makes with its line, and raises
diagnostics for shapes it does not understand instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import libcst as cst
from libcst.codemod import Codemod, CodemodContext

from porter.errors import Diagnostic
from transforms.interface_code import written_for_interface
from transforms.positions import FileLines


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
    trees: dict[str, cst.Module] = field(default_factory=dict)  # file -> tree as the transforms so far left it
    _lines: dict[str, FileLines] = field(default_factory=dict, repr=False)

    def lines(self, filename: str) -> FileLines:
        """Line lookup for one file, shared by every transform that records on it."""
        if filename not in self._lines:
            self._lines[filename] = FileLines(self.original_trees.get(filename), self.original_code.get(filename))
        return self._lines[filename]


class Transform(Codemod):
    """Base class: subclasses implement `transform_module_impl` and call `record`/`refuse`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # Code already written for the attention interface makes this transform's choices itself
    # (CONTRACT G3): the transform leaves it alone.
    leaves_interface_code: ClassVar[bool] = False

    def __init__(self, context: CodemodContext, state: PortState, filename: str):
        super().__init__(context)
        self.state = state
        self.filename = filename
        self._input: cst.Module | None = None

    def apply(self, tree: cst.Module) -> cst.Module:
        """Run the transform. Positions are computed only if a change is recorded (see
        `transforms.positions`): resolving them for every transform on every file would dominate the run."""
        self._input = tree
        if self.leaves_interface_code and written_for_interface(self.state):
            return tree
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
