"""Run one transform (or the whole registry) over inline sources, pyupgrade style.

`run_transforms` mirrors `porter.rewrite.rewrite`: the analysis is built once from the
parsed input, each transform runs over every file in turn, and the imports the
transforms asked for are added by `AddImportsVisitor` (one codemod context per file).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable

import libcst as cst
from libcst.codemod import CodemodContext
from libcst.codemod.visitors import AddImportsVisitor

from porter.analysis import analyse
from transforms import REGISTRY, PortState, Transform

FILENAME = "modeling_test.py"

Sources = str | dict[str, str]
Transforms = type[Transform] | Iterable[type[Transform]]


def _as_files(sources: Sources) -> dict[str, str]:
    if isinstance(sources, str):
        sources = {FILENAME: sources}
    return {name: textwrap.dedent(text) for name, text in sources.items()}


def run_transforms(
    sources: Sources, transform: Transforms = REGISTRY, facts: dict | None = None
) -> tuple[dict[str, str], PortState]:
    """Apply `transform` (one class or an ordered sequence) to `sources` ({filename: code} or one code string);
    `facts` are the settings `porter.rewrite.rewrite` starts with (`config_json`, `replicate_fused`)."""
    files = _as_files(sources)
    classes = [transform] if isinstance(transform, type) else list(transform)
    trees = {name: cst.parse_module(text) for name, text in files.items()}
    state = PortState(analysis=analyse(dict(trees)), facts=dict(facts or {}), trees=trees)
    contexts = {name: CodemodContext(filename=name) for name in trees}
    for transform_cls in classes:
        for name, tree in trees.items():
            trees[name] = _apply(transform_cls(contexts[name], state, name), tree)
    for name, context in contexts.items():
        if context.scratch:
            trees[name] = AddImportsVisitor(context).transform_module(trees[name])
    return {name: tree.code for name, tree in trees.items()}, state


def _apply(transform: Transform, tree: cst.Module) -> cst.Module:
    apply = getattr(transform, "apply", None)  # the entry point porter.rewrite uses
    return apply(tree) if apply is not None else transform.transform_module(tree)


def transformed(source: str, transform: Transforms = REGISTRY) -> tuple[str, PortState]:
    """`run_transforms` for a single inline file: (new source, state)."""
    files, state = run_transforms({FILENAME: source}, transform)
    return files[FILENAME], state


def check_transformed(before: str, after: str, transform: Transforms = REGISTRY) -> PortState:
    """`before` becomes exactly `after` (both dedented), compiles, records changes and no diagnostics."""
    output, state = transformed(before, transform)
    assert output == textwrap.dedent(after)
    compile(output, FILENAME, "exec")
    assert state.changes, "a rewrite happened but no change was recorded"
    assert not state.diagnostics, [d.render() for d in state.diagnostics]
    return state


def check_noop(src: str, transform: Transforms = REGISTRY, *, diagnostics: bool = False) -> PortState:
    """`src` comes back unchanged with no change recorded; diagnostics only where asked for."""
    source = textwrap.dedent(src)
    output, state = transformed(source, transform)
    assert output == source
    assert not state.changes, [c.as_dict() for c in state.changes]
    if diagnostics:
        assert state.diagnostics, "expected a diagnostic"
    else:
        assert not state.diagnostics, [d.render() for d in state.diagnostics]
    return state


def check_idempotent(src: str, transform: Transforms = REGISTRY) -> str:
    """A second run over the first run's output changes nothing; returns the first output."""
    once, _ = transformed(src, transform)
    compile(once, FILENAME, "exec")
    twice, state = transformed(once, transform)
    assert twice == once
    assert not state.changes, [c.as_dict() for c in state.changes]
    return once
