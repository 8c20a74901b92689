"""The rewrite stage: run every registered transform over every code file, in order."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import libcst as cst
import libcst.matchers as m
from libcst.codemod import CodemodContext
from libcst.codemod.visitors import AddImportsVisitor

from porter.analysis import RepoAnalysis
from porter.errors import Diagnostic
from transforms import REGISTRY, Change, PortState
from transforms.cst_utils import children_cached, module_code


@dataclass
class RewriteResult:
    """New text of every changed file, what changed and why, and what could not be done."""

    files: dict[str, str]
    changes: list[Change]
    diagnostics: list[Diagnostic]
    weight_ops: list = field(default_factory=list)
    facts: dict = field(default_factory=dict)

    def changed_files(self, original: dict[str, str]) -> list[str]:
        return [name for name, text in self.files.items() if original.get(name) != text]

    def diff(self, original: dict[str, str]) -> str:
        chunks = []
        for name in sorted(self.changed_files(original)):
            chunks += difflib.unified_diff(
                original.get(name, "").splitlines(keepends=True),
                self.files[name].splitlines(keepends=True),
                fromfile=f"a/{name}",
                tofile=f"b/{name}",
            )
        return "".join(chunks)


def rewrite(modules: dict[str, cst.Module], analysis: RepoAnalysis, settings: dict | None = None) -> RewriteResult:
    """Apply the registry to `modules` (file name -> parsed module). `settings` start the
    shared facts: `config_json` (the repo's config.json, for sizes the code computes from
    it) and the user's choices (`replicate_fused`)."""
    with children_cached():  # the code of statements no transform changed is printed once
        state = PortState(
            analysis=analysis,
            original_code={name: module_code(tree) for name, tree in modules.items()},
            original_trees=dict(modules),
            facts=dict(settings or {}),
        )
        trees = state.trees = dict(modules)
        # One context per file: transforms queue the imports they need, added once at the end.
        contexts = {filename: CodemodContext(filename=filename) for filename in trees}
        for transform_cls in REGISTRY:
            for filename, tree in trees.items():
                trees[filename] = transform_cls(contexts[filename], state, filename).apply(tree)
        for filename, context in contexts.items():
            if context.scratch:
                trees[filename] = add_imports(context, trees[filename])
        files = {name: module_code(tree) for name, tree in trees.items()}
    return RewriteResult(files, state.changes, state.diagnostics, state.weight_ops, state.facts)


def _import_block_end(tree: cst.Module) -> int:
    """Index of the first statement after the first one (a docstring, perhaps) and the
    leading block of imports."""
    for index, statement in enumerate(tree.body):
        if index == 0:
            continue
        if not m.matches(statement, m.SimpleStatementLine(body=[m.Import() | m.ImportFrom()])):
            return index
    return len(tree.body)


def add_imports(context: CodemodContext, tree: cst.Module) -> cst.Module:
    """Add the imports transforms queued in `context` (libcst's AddImportsVisitor).

    The visitor reads and changes only the module's head: the first statement (a docstring
    or `__strict__` flag is kept first), the leading block of imports, and the blank line
    before the first statement after them. So it is run on that head alone, not on a walk of the whole tree, twice, that
    changes nothing else. transform_module_impl, not transform_module: the visitor needs no
    metadata, and transform_module would deep-copy the tree to compute none.
    """
    end = _import_block_end(tree) + 1  # the first statement after the imports gets the blank line
    head = AddImportsVisitor(context).transform_module_impl(tree.with_changes(body=tree.body[:end]))
    return tree.with_changes(body=(*head.body, *tree.body[end:]))
