"""Imports from transformers that the installed release no longer has (LEGACY_PATTERNS D).

Each `from transformers... import name` is checked against the installed transformers,
so the transform follows whatever the current release removed. An availability probe
that is gone is replaced by the constant it now always returns; a removed name that the
code (after the other rewrites) no longer uses is dropped; a removed name still in use is
a diagnostic, never a silent guess.
"""

from __future__ import annotations

import importlib
import re

import libcst as cst

from transforms.base import Transform
from transforms.cst_utils import SharingTransformer, call_name, code_of, dotted, names_read, parse_stmts, spaced, walk
from transforms.legacy_helpers import legacy_definition

# Probes whose answer is fixed on every release port-model targets.
CONSTANT_PROBES = {
    "is_torch_fx_available": "False",  # removed with torch.fx tracing support
    "is_torch_sdpa_available": "True",  # torch >= 2.1 always has SDPA
}


def installed_has(module: str, name: str) -> bool:
    """Whether `from module import name` works with the installed transformers."""
    try:
        imported = importlib.import_module(module)
    except Exception:
        return False
    if hasattr(imported, name):
        return True
    try:
        importlib.import_module(f"{module}.{name}")
        return True
    except Exception:
        return False


class RemovedImports(Transform):
    name = "removed-imports"
    summary = "Drop or replace imports of names the installed transformers removed."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        missing: dict[str, tuple[str, str]] = {}  # name the code uses -> (module, imported name)
        where: dict[str, cst.ImportFrom] = {}
        for node in walk(tree):
            if isinstance(node, cst.ImportFrom) and node.relative == [] or (
                isinstance(node, cst.ImportFrom) and not node.relative
            ):
                module = dotted(node.module) if node.module else None
                if not module or not (module == "transformers" or module.startswith("transformers.")):
                    continue
                if isinstance(node.names, cst.ImportStar):
                    continue
                for alias in node.names:
                    name = dotted(alias.name)
                    if name and not installed_has(module, name):
                        bound = alias.asname.name.value if alias.asname else name
                        missing[bound] = (module, name)
                        where[bound] = node
        if not missing:
            return tree
        probes = {b: CONSTANT_PROBES[n] for b, (_, n) in missing.items() if n in CONSTANT_PROBES}
        tree = tree.visit(_ReplaceProbes(self, probes))
        removed = {b for b in missing if b not in probes}
        tree = self._drop_dependent_code(tree, removed)
        used = _names_used_outside_imports(tree)
        still_used = {b for b in removed if b in used}
        tree, defined = self._define_legacy_helpers(tree, {b: missing[b] for b in still_used})
        still_used -= defined
        for bound in sorted(still_used):
            module, name = missing[bound]
            self.refuse(where[bound], f"uses {name} from {module}, which the installed transformers no longer has", name)
        # A name still in use keeps its import: the failure stays visible where it is.
        return tree.visit(_DropImports(set(missing) - still_used, self))

    def _define_legacy_helpers(self, tree: cst.Module, used: dict[str, tuple[str, str]]) -> tuple[cst.Module, set[str]]:
        """A removed helper whose old behaviour is known (`legacy_helpers`) and that a
        module-level import brought in gets a local definition right after that import."""
        body = list(tree.body)
        defined: set[str] = set()
        for bound, (module, name) in sorted(used.items()):
            source = legacy_definition(module, name, bound)
            index = _top_level_import_index(body, module, bound)
            if source is None or index is None:
                continue
            if not _imports_torch(body):
                source = "import torch\n\n\n" + source
            body[index + 1:index + 1] = [spaced(stmt) for stmt in parse_stmts(source)]
            defined.add(bound)
            self.record(body[index], f"{bound}: {name} from {module} is gone from transformers; defined locally as transformers 4.30.2 had it")
        return tree.with_changes(body=body), defined

    def _drop_dependent_code(self, tree: cst.Module, removed: set[str]) -> cst.Module:
        """Code that only exists to use a removed API goes with it: a class no entry point
        needs (an ONNX export config, a head with a removed pooling helper), or methods only
        such code calls (head pruning, naive model parallelism)."""
        entry_points = getattr(self.state.analysis, "entry_points", set())
        body = []
        for stmt in tree.body:
            if isinstance(stmt, cst.ClassDef) and names_read(stmt) & removed:
                others = "\n".join(code_of(s) for s in tree.body if s is not stmt)
                if stmt.name.value not in entry_points and not _mentions(others, stmt.name.value):
                    needed = sorted(names_read(stmt) & removed)
                    self.record(stmt, f"removed {stmt.name.value}: it needs {', '.join(needed)}, gone from transformers")
                    continue
            body.append(stmt)
        tree = tree.with_changes(body=body)
        dead = _dead_methods(tree, removed)
        if not dead:
            return tree
        body = []
        for stmt in tree.body:
            if isinstance(stmt, cst.ClassDef):
                members = []
                for member in stmt.body.body:
                    if isinstance(member, cst.FunctionDef) and (stmt.name.value, member.name.value) in dead:
                        self.record(member, f"removed {stmt.name.value}.{member.name.value}: it relies on an API gone from transformers")
                        continue
                    members.append(member)
                stmt = stmt.with_changes(body=stmt.body.with_changes(body=members))
            body.append(stmt)
        return tree.with_changes(body=body)


def _dead_methods(tree: cst.Module, removed: set[str]) -> set[tuple[str, str]]:
    """Methods that use a removed name, or call only-dead methods, and that no living code calls."""
    methods = {
        (cls.name.value, fn.name.value): fn
        for cls in tree.body
        if isinstance(cls, cst.ClassDef)
        for fn in cls.body.body
        if isinstance(fn, cst.FunctionDef) and fn.name.value not in ("forward", "__init__")
    }
    dead = {key for key, fn in methods.items() if names_read(fn) & removed}
    changed = True
    while changed:
        changed = False
        dead_names = {name for _, name in dead}
        for key, fn in methods.items():
            if key not in dead and any(f".{name}(" in code_of(fn) for name in dead_names):
                dead.add(key)
                changed = True
    living = "\n".join(
        code_of(s) for cls in tree.body if isinstance(cls, cst.ClassDef)
        for s in cls.body.body if not (isinstance(s, cst.FunctionDef) and (cls.name.value, s.name.value) in dead)
    )
    return {key for key in dead if f".{key[1]}(" not in living}


def _bound_names(node: cst.ImportFrom) -> set[str]:
    if isinstance(node.names, cst.ImportStar):
        return set()
    return {_bound_name(a) for a in node.names}


def _top_level_import_index(body: list[cst.BaseStatement], module: str, bound: str) -> int | None:
    """Index of the module-level statement `from module import ... as bound`, if there is one."""
    for index, stmt in enumerate(body):
        if isinstance(stmt, cst.SimpleStatementLine):
            for small in stmt.body:
                if isinstance(small, cst.ImportFrom) and small.module and dotted(small.module) == module and bound in _bound_names(small):
                    return index
    return None


def _imports_torch(body: list[cst.BaseStatement]) -> bool:
    return any(
        isinstance(small, cst.Import) and any(dotted(a.name) == "torch" and a.asname is None for a in small.names)
        for stmt in body if isinstance(stmt, cst.SimpleStatementLine) for small in stmt.body
    )


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\b", text) is not None


def _names_used_outside_imports(tree: cst.Module) -> set[str]:
    used: set[str] = set()
    for stmt in tree.body:
        if isinstance(stmt, cst.SimpleStatementLine) and all(isinstance(s, (cst.Import, cst.ImportFrom)) for s in stmt.body):
            continue
        used |= _names_without_imports(stmt)
    return used


def _names_without_imports(node: cst.CSTNode) -> set[str]:
    if isinstance(node, (cst.Import, cst.ImportFrom)):
        return set()
    if isinstance(node, cst.SimpleStatementLine):
        found: set[str] = set()
        for small in node.body:
            found |= _names_without_imports(small)
        return found
    if isinstance(node, (cst.If, cst.Try, cst.IndentedBlock, cst.Else, cst.ExceptHandler, cst.Finally)):
        found = set()
        if isinstance(node, cst.If):
            found |= names_read(node.test)
        for child in node.children:
            if isinstance(child, (cst.BaseSuite, cst.BaseStatement, cst.Else, cst.ExceptHandler, cst.Finally, cst.If)):
                found |= _names_without_imports(child)
        return found
    return names_read(node)


class _ReplaceProbes(SharingTransformer):
    """`probe()` -> constant; an `if` on a constant keeps only the branch that runs."""

    def __init__(self, transform: Transform, probes: dict[str, str]):
        self.transform = transform
        self.probes = probes
        self.elifs: set[int] = set()

    def visit_If(self, node: cst.If) -> None:
        if isinstance(node.orelse, cst.If):
            self.elifs.add(id(node.orelse))

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        name = call_name(updated)
        if name in self.probes:
            self.transform.record(original, f"{name}() -> {self.probes[name]} (removed from transformers)")
            return cst.Name(self.probes[name])
        return updated

    def leave_If(self, original: cst.If, updated: cst.If):
        test = code_of(updated.test)
        if id(original) in self.elifs:  # an `elif`: it must stay an If or become an Else
            if test == "True":
                return cst.Else(body=updated.body)
            if test == "False" and updated.orelse is not None:
                return updated.orelse
            return updated
        if test == "False":
            if updated.orelse is None:
                return cst.RemoveFromParent()
            if isinstance(updated.orelse, cst.Else):
                return cst.FlattenSentinel(updated.orelse.body.body)
            return updated.orelse
        if test == "True":
            return cst.FlattenSentinel(updated.body.body)
        return updated


def _bound_name(alias: cst.ImportAlias) -> str | None:
    return alias.asname.name.value if alias.asname else dotted(alias.name)


class _DropImports(SharingTransformer):
    def __init__(self, names: set[str], transform: Transform):
        self.names = names
        self.transform = transform

    def leave_ImportFrom(self, original: cst.ImportFrom, updated: cst.ImportFrom):
        if isinstance(updated.names, cst.ImportStar):
            return updated
        kept = [a for a in updated.names if _bound_name(a) not in self.names]
        if len(kept) == len(updated.names):
            return updated
        dropped = sorted({dotted(a.name) for a in updated.names} - {dotted(a.name) for a in kept})
        self.transform.record(original, f"removed import of {', '.join(dropped)} (gone from transformers)")
        if not kept:
            return cst.RemoveFromParent()
        kept[-1] = kept[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
        return updated.with_changes(names=kept)

    def leave_IndentedBlock(self, original: cst.IndentedBlock, updated: cst.IndentedBlock) -> cst.IndentedBlock:
        if not updated.body:  # a block that only imported removed names
            return updated.with_changes(body=[cst.SimpleStatementLine(body=[cst.Pass()])])
        return updated
