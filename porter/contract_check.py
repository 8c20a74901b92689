"""`port-model check REPO`: every item of CONTRACT parts A to E that applies, PASS/FAIL/SKIP.

Static checks (`porter.contract`) read the code as written. The rewrite then runs in
memory, never written: a failure that the rewritten code no longer has is one porting
fixes, and the changes that fix it are named, so on a legacy repo the check explains what
porting will change. Dynamic checks run the repo under the installed transformers in a
child process (`porter.verify.standalone`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import libcst as cst

from porter.config_json import updated_config
from porter.contract import Code, static_checks
from porter.errors import BadInput
from porter.repo import load_repo
from porter.report import FAIL, PASS, SKIP, Check, versions
from porter.rewrite import rewrite

# Which contract item each transform's changes serve.
TRANSFORM_ITEMS = {
    "attention-classes": "B1",
    "attention-interface": "B1",
    "backend-flags": "B4",
    "buffer-init": "A2",
    "cache-api": "C4",
    "tuple-cache": "C4",
    "config-defaults": "A2",
    "generation": "A3",
    "kwargs-threading": "C1",
    "kv-heads-config": "C5",
    "layer-index": "B3",
    "masks": "B5",
    "post-init": "A3",
    "removed-imports": "A2",
    "removed-methods": "A2",
    "rope-config": "A2",
    "rope-positions": "C3",
    "tied-weights": "A3",
}
# Changes that replace an API transformers 5 removed: code without them cannot load. Other
# A2 transforms (buffers, rope tables, config defaults) also fire on code that loads.
REMOVED_API_TRANSFORMS = {"removed-imports", "removed-methods"}
DYNAMIC_ITEMS = ("A3", "B1", "B3", "B4", "C1", "C3", "C4", "C5")


@dataclass
class ContractResult:
    """The checks of one repo, with what porting would change in it."""

    source: str
    checks: list[Check]
    changes: list[dict] = field(default_factory=list)
    diagnostics: list[dict] = field(default_factory=list)
    versions: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not any(c.status == FAIL for c in self.checks)

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "passed": self.passed,
            "needs_porting": bool(self.changes),
            "versions": self.versions,
            "checks": [asdict(c) for c in self.checks],
            "changes": self.changes,
            "diagnostics": self.diagnostics,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, default=str) + "\n"

    def table(self) -> str:
        """One line per check: item, status, whether porting fixes it, where, what and why."""
        lines = []
        for c in self.checks:
            fix = {True: "fix", False: "no-fix"}.get(c.fixable, "") if c.status == FAIL else ""
            where = f"{c.file}:{c.line}" if c.file and c.line else (c.file or "")
            reason = c.detail if c.status != PASS or not c.figures else _figures(c.figures)
            text = f"{c.name}: {reason}" if reason else c.name
            lines.append(f"{c.item:<5} {c.status:<4} {fix:<6} {where + '  ' if where else ''}{text}")
        return "\n".join(lines)


def _figures(figures: dict) -> str:
    return ", ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
                     if not isinstance(v, (list, dict)))


def _static_a2(changes: list[dict]) -> Check:
    removed = [c for c in changes if c["transform"] in REMOVED_API_TRANSFORMS]
    name = "no API that transformers 5 removed"
    if not removed:
        return Check("A2", name, PASS)
    detail = "; ".join(f"{_at(c)}: {c['message']}" for c in removed[:5]) + (" ..." if len(removed) > 5 else "")
    return Check("A2", name, FAIL, detail, file=removed[0]["file"], line=removed[0]["line"])


def _mark_fixable(before: list[Check], after: list[Check], changes: list[dict], diagnostics: list[dict]) -> None:
    """A failure is fixable when the rewritten code passes the same check and nothing the
    rewrite refused belongs to that item; the changes that serve the item are named."""
    after_status = {(c.item, c.name): c.status for c in after}
    for check in before:
        if check.status != FAIL:
            continue
        refused = [d for d in diagnostics if TRANSFORM_ITEMS.get(_transform_of(d["message"])) == check.item]
        check.fixable = after_status.get((check.item, check.name), FAIL) != FAIL and not refused
        serving = [c for c in changes if TRANSFORM_ITEMS.get(c["transform"]) == check.item]
        if serving:
            check.detail += " | porting changes: " + "; ".join(
                f"{c['transform']} {_at(c)}: {c['message']}" for c in serving[:3]
            ) + (f" (+{len(serving) - 3} more)" if len(serving) > 3 else "")
        if refused:
            check.detail += " | port-model does not understand: " + "; ".join(
                f"{_at(d)}: {d['message']}" for d in refused
            )


def _at(entry: dict) -> str:
    return f"{entry['file']}:{entry['line']}" if entry.get("line") else entry["file"]


def _transform_of(message: str) -> str:
    return message[1 : message.index("]")] if message.startswith("[") and "]" in message else ""


def _dynamic(repo, device: str, timeout: float, static: list[Check]) -> list[Check]:
    from porter.verify.standalone import run_alone

    checks = run_alone(repo.root, repo.config, device, timeout)
    failed_static = {c.item: c.fixable for c in static if c.status == FAIL}
    loaded = not (len(checks) == 1 and checks[0].item == "A2" and checks[0].status == FAIL)
    for check in checks:
        if check.status == FAIL:
            check.fixable = failed_static.get(check.item)
    if not loaded:
        reason = "not run: the model does not load and run under the installed transformers (A2)"
        checks += [Check(item, "engine-style runs", SKIP, reason) for item in DYNAMIC_ITEMS if item != "A3"]
    return checks


def check_contract(
    src: Path | str,
    run: bool = True,
    device: str = "auto",
    timeout: float = 600.0,
    progress: Callable[[str], None] = lambda message: None,
) -> ContractResult:
    """Check the repo at `src` against CONTRACT parts A to E; raises BadInput when it cannot."""
    from porter.pipeline import resolve_device

    progress(f"reading {src}")
    repo = load_repo(Path(src))
    modules = repo.modules()
    code = Code.read(repo.config, modules)
    progress("reading the code against the contract")
    static = static_checks(code)
    progress("rewriting in memory to see what porting changes")
    rewritten = rewrite(modules, code.analysis, {"config_json": repo.config})
    changes = [c.as_dict() for c in rewritten.changes]
    diagnostics = [d.as_dict() for d in rewritten.diagnostics]
    try:
        new_modules = {n: cst.parse_module(t) for n, t in rewritten.files.items() if n.endswith(".py")}
    except cst.ParserSyntaxError as exc:  # a transform produced broken code: say so, do not guess
        raise BadInput(f"the rewrite produced code that does not parse: {exc.message}") from None
    static.insert(1, _static_a2(changes))
    # the ported config too: the port adds auto_map entries (AutoModel for a split base model)
    ported = Code.read(updated_config(repo.config, rewritten.facts), new_modules)
    _mark_fixable(static, [_static_a2([]), *static_checks(ported)], changes, diagnostics)
    checks = list(static)
    if run and repo.weight_files:
        progress("running the model under the installed transformers (probe, packed call, continuous batching)")
        checks += _dynamic(repo, resolve_device(device), timeout, static)
    else:
        reason = "not run: --no-run" if not run else "not run: the repo has no weights"
        checks += [Check(item, "engine-style runs", SKIP, reason) for item in DYNAMIC_ITEMS if item != "A3"]
    order = {item: i for i, item in enumerate(sorted({c.item for c in checks}))}
    checks.sort(key=lambda c: order[c.item])
    return ContractResult(str(src), checks, changes, diagnostics, versions())
