"""The record a port builds stage by stage (CONTRACT G2), and its renderings."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass
class Check:
    """One contract item proven (or not) on the ported repo, with its figures."""

    item: str  # CONTRACT item, e.g. "F2"
    name: str
    status: str
    detail: str = ""
    figures: dict = field(default_factory=dict)
    file: str | None = None  # where the code that decides it is, when one place does
    line: int | None = None
    fixable: bool | None = None  # whether porting fixes a failure; None: not known or not failing


@dataclass
class Report:
    source: str
    output: str | None = None
    hub: dict = field(default_factory=dict)  # repo_id, revision and exact commit sha of a Hub source
    status: str = "pending"  # ported | unchanged | verification-failed | partial | needs-porting
    versions: dict = field(default_factory=dict)
    device: str = "cpu"
    reference: dict = field(default_factory=dict)
    transforms: list[dict] = field(default_factory=list)
    diagnostics: list[dict] = field(default_factory=list)
    weights: dict = field(default_factory=dict)
    dependencies: list[dict] = field(default_factory=list)  # undeclared runtime dependencies of the code
    checks: list[Check] = field(default_factory=list)
    files: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def verified(self) -> bool:
        """No check failed and equivalence with the legacy model (F2) was actually shown."""
        return not self.failed and any(c.item == "F2" and c.status == PASS for c in self.checks)

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def as_dict(self) -> dict:
        data = asdict(self)
        data["verified"] = self.verified
        return data

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, default=str) + "\n"

    def summary_table(self) -> str:
        """Fixed-width table for the terminal and for PORTING.md."""
        rows = [("item", "check", "status", "figures")]
        for c in self.checks:
            figures = ", ".join(f"{k}={_fmt(v)}" for k, v in c.figures.items() if not isinstance(v, (list, dict)))
            rows.append((c.item, c.name, c.status, figures or c.detail[:60]))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = []
        for i, row in enumerate(rows):
            lines.append("  ".join(row[j].ljust(widths[j]) for j in range(3)) + "  " + row[3])
            if i == 0:
                lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 7)
        return "\n".join(lines)

    def to_markdown(self) -> str:
        lines = [
            "# Porting report",
            "",
            f"- Source: `{self.source}`",
            *([f"- Hub: `{self.hub['repo_id']}` at commit `{self.hub['sha']}`"] if self.hub else []),
            f"- Status: **{self.status}**" + (" (verified)" if self.verified else ""),
            "- Versions: " + ", ".join(f"{k} {v}" for k, v in self.versions.items()),
            f"- Device: {self.device}",
        ]
        if self.reference:
            lines.append(
                f"- Reference: legacy code run under transformers {self.reference.get('transformers_version')}"
                f" ({self.reference.get('kind', 'own environment')})"
            )
            lines += [f"  - {note}" for note in self.reference.get("notes", [])]
            if self.reference.get("shims"):
                lines.append("  - shims installed: " + ", ".join(f"`{name}`" for name in self.reference["shims"]))
        lines += ["", "## Checks", "", "```", self.summary_table(), "```", "", "## Transforms applied", ""]
        for t in self.transforms:
            where = f"{t['file']}:{t['line']}" if t.get("line") else t["file"]
            lines.append(f"- `{t['transform']}` {where}: {t['message']}")
        if self.dependencies:
            lines += ["", "## Runtime dependencies the code does not declare (added to requirements.txt)", ""]
            lines += [f"- `{d['distribution']}`: imported at {d['file']}:{d['line']}" for d in self.dependencies]
        if self.diagnostics:
            lines += ["", "## Not understood", ""]
            lines += [f"- {d['file']}:{d['line']}: {d['message']}" for d in self.diagnostics]
        lines.append("")
        return "\n".join(lines)


def versions() -> dict:
    import libcst
    import torch
    import transformers

    from porter import __version__

    return {
        "port-model": __version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "libcst": getattr(libcst, "__version__", "?"),
        "python": platform.python_version(),
    }


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.2e}" if value and (abs(value) < 1e-2 or abs(value) > 1e4) else f"{value:.4g}"
    return str(value)
