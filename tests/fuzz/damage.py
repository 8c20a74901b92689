"""Damaged legacy repos, and what the tool must do with them.

A case is a real legacy repo whose code files were damaged by a few edits: a statement
removed, a name renamed (everywhere or at one use), two sibling statements swapped, or
the syntax broken (a token inserted, a line cut short or re-indented, the file truncated).
`port_damaged` ports it (rewrite and write, no verification) and says how it ended:

- "refused": a PortError (exit 2) with a message, and nothing written;
- "ported" / "unchanged": output written, every code file in it compiles, and the report
  tells the truth about what changed;
- anything else (another exception, output that does not compile, a report that lies)
  is a failure, raised as `Broken`.

The edits are drawn by hypothesis (`damaged_repo`), so a failure shrinks to the smallest
damage that shows it.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

import porter
from porter.errors import PortError

SYNTAX_BREAKERS = ["(", ")", ":", "def ", "class", " = ", "'", '"""', "\\", "@", "lambda", "\t", "    ", "return"]
KEYWORDS = {"self", "cls", "None", "True", "False"}


class Broken(AssertionError):
    """The tool did something other than refuse cleanly or write honest, compiling output."""


@dataclass
class Edit:
    kind: str
    file: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} in {self.file}: {self.detail}"


# -- edits on source text ------------------------------------------------------------------
def _statements(tree: ast.AST) -> list[list[ast.stmt]]:
    """Every statement body in the file (module, classes, functions, blocks)."""
    bodies = []
    for node in ast.walk(tree):
        for attr in ("body", "orelse", "finalbody"):
            body = getattr(node, attr, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                bodies.append(body)
    return bodies


def _span(stmt: ast.stmt) -> tuple[int, int]:
    """0-based line range [start, end) of a statement, decorators included."""
    start = min([stmt.lineno, *(d.lineno for d in getattr(stmt, "decorator_list", []))])
    return start - 1, stmt.end_lineno


def remove_statement(text: str, pick: int) -> tuple[str, str]:
    lines = text.splitlines(keepends=True)
    stmts = [s for body in _statements(ast.parse(text)) for s in body]
    if not stmts:
        return text, "no statement to remove"
    stmt = stmts[pick % len(stmts)]
    start, end = _span(stmt)
    indent = re.match(r"\s*", lines[start]).group(0)
    # A body left empty gets `pass`, so the damage is semantic, not a syntax error.
    replacement = [f"{indent}pass\n"] if _only_child(text, stmt) else []
    return "".join(lines[:start] + replacement + lines[end:]), f"removed line {start + 1}-{end}: {lines[start].strip()[:60]}"


def _only_child(text: str, stmt: ast.stmt) -> bool:
    return any(len(body) == 1 and body[0].lineno == stmt.lineno for body in _statements(ast.parse(text)))


def swap_statements(text: str, pick: int) -> tuple[str, str]:
    lines = text.splitlines(keepends=True)
    pairs = [(body[i], body[i + 1]) for body in _statements(ast.parse(text)) for i in range(len(body) - 1)]
    if not pairs:
        return text, "no sibling statements"
    first, second = pairs[pick % len(pairs)]
    (a0, a1), (b0, b1) = _span(first), _span(second)
    if a1 > b0:  # overlapping spans (one line holding both): nothing to swap
        return text, "statements share a line"
    swapped = lines[:a0] + lines[b0:b1] + lines[a1:b0] + lines[a0:a1] + lines[b1:]
    return "".join(swapped), f"swapped lines {a0 + 1} and {b0 + 1}"


def _identifiers(text: str) -> list[str]:
    names = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return sorted(names - KEYWORDS)


def rename(text: str, pick: int, everywhere: bool, occurrence: int) -> tuple[str, str]:
    names = _identifiers(text)
    if not names:
        return text, "no name to rename"
    name = names[pick % len(names)]
    new = f"{name}_x"
    pattern = re.compile(rf"\b{re.escape(name)}\b")
    if everywhere:
        return pattern.sub(new, text), f"renamed {name} -> {new} everywhere"
    matches = list(pattern.finditer(text))
    match = matches[occurrence % len(matches)]
    line = text.count("\n", 0, match.start()) + 1
    return text[: match.start()] + new + text[match.end() :], f"renamed one {name} (line {line}) -> {new}"


def break_syntax(text: str, how: int, position: int, token: int) -> tuple[str, str]:
    lines = text.splitlines(keepends=True)
    if not lines:
        return text + "(", "inserted '(' into an empty file"
    index = position % len(lines)
    where = f"line {index + 1}"
    kind = how % 4
    if kind == 0:
        breaker = SYNTAX_BREAKERS[token % len(SYNTAX_BREAKERS)]
        column = position % max(len(lines[index]), 1)
        lines[index] = lines[index][:column] + breaker + lines[index][column:]
        return "".join(lines), f"inserted {breaker!r} at {where}:{column}"
    if kind == 1:
        lines[index] = lines[index][: len(lines[index]) // 2] + "\n"
        return "".join(lines), f"cut {where} in half"
    if kind == 2:
        lines[index] = "   " + lines[index]
        return "".join(lines), f"re-indented {where}"
    return text[: position % len(text)], f"truncated at character {position % len(text)}"


@st.composite
def edit_of(draw, files: dict[str, str]) -> tuple[str, str, Edit]:
    name = draw(st.sampled_from(sorted(files)))
    text = files[name]
    kind = draw(st.sampled_from(["remove", "rename", "swap", "syntax"]))
    numbers = st.integers(min_value=0, max_value=10**6)
    try:
        ast.parse(text)
    except SyntaxError:
        kind = "syntax"  # an earlier edit already broke it: only text edits apply
    if kind == "remove":
        new, detail = remove_statement(text, draw(numbers))
    elif kind == "rename":
        new, detail = rename(text, draw(numbers), draw(st.booleans()), draw(numbers))
    elif kind == "swap":
        new, detail = swap_statements(text, draw(numbers))
    else:
        new, detail = break_syntax(text, draw(numbers), draw(numbers), draw(numbers))
    return name, new, Edit(kind, name, detail)


@st.composite
def damaged_repo(draw, sources: list[Path], max_edits: int = 3):
    """(source repo, {file: damaged text}, edits) for one of `sources`."""
    source = draw(st.sampled_from(sources))
    files = {p.name: p.read_text() for p in sorted(source.glob("*.py"))}
    edits = []
    for _ in range(draw(st.integers(min_value=1, max_value=max_edits))):
        name, text, edit = draw(edit_of(files))
        files[name] = text
        edits.append(edit)
    return source, files, edits


# -- running a case ------------------------------------------------------------------------
def build_case(source: Path, files: dict[str, str], folder: Path) -> Path:
    """The source repo's config and code, code replaced by `files`. Weights stay behind:
    the code is under test, and converting them would only slow every case down."""
    repo = folder / source.name
    repo.mkdir(parents=True)
    shutil.copy2(source / "config.json", repo / "config.json")
    for name, text in files.items():
        (repo / name).write_text(text)
    return repo


def port_damaged(repo: Path, out: Path) -> str:
    """Port `repo` without verification; the outcome name, or `Broken` with the reason."""
    code_before = {p.name: p.read_text() for p in repo.glob("*.py")}
    try:
        result = porter.port(repo, out, verify=False)
    except PortError as exc:
        if not str(exc).strip():
            raise Broken("PortError without a message") from exc
        if out.exists():
            raise Broken(f"refused ({exc}) but {out} was written") from exc
        return "refused"
    except Exception as exc:
        raise Broken(f"crashed:\n{traceback.format_exc()}") from exc
    check_output(out, code_before, result.report.status)
    return result.report.status


def check_output(out: Path, code_before: dict[str, str], status: str) -> None:
    """Every code file compiles; the report's status and changes match what was written."""
    report = json.loads((out / "porting_report.json").read_text())
    if report["status"] != status or status not in ("ported", "unchanged"):
        raise Broken(f"status {status!r} (report says {report['status']!r}) for a port without --allow-partial")
    changed = set()
    for name, before in code_before.items():
        after = (out / name).read_text()
        try:
            compile(after, name, "exec")
        except SyntaxError as exc:
            raise Broken(f"output {name} does not compile: {exc}") from None
        if after != before:
            changed.add(name)
    recorded = {change["file"] for change in report["transforms"]}
    if changed - recorded:
        raise Broken(f"{sorted(changed - recorded)} changed but the report names no change there")
    if (status == "unchanged") != (not changed):
        raise Broken(f"status {status!r} but changed files: {sorted(changed)}")
    if report.get("diagnostics"):
        raise Broken(f"diagnostics in a port reported as {status!r}: {report['diagnostics']}")
