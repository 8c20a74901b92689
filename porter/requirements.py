"""Undeclared runtime dependencies of remote code, and the ported repo's `requirements.txt`.

Remote code may import packages that neither transformers nor torch bring (`einops` is
the usual one); nothing in the repo declares them, so a user learns of them from an
ImportError. The port lists each one with the file and line of its import and writes it
into `requirements.txt`, the file the Hub's remote-code repos use for this, keeping every
line an existing one had.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
from dataclasses import asdict, dataclass

from porter.environments import _torch_closure, required_imports

# Always present where the ported code runs: transformers, torch and what they require.
PROVIDED_ROOTS = ("torch", "transformers")


@dataclass(frozen=True)
class Requirement:
    distribution: str
    module: str
    file: str
    line: int
    # False: not installed here, so the distribution name is the module's name, unconfirmed.
    known: bool

    def as_dict(self) -> dict:
        return asdict(self)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def undeclared_requirements(sources: dict[str, str]) -> list[Requirement]:
    """One entry per distribution the code needs beyond transformers and torch (the first import names the place)."""
    provided = {_normalise(d.metadata["Name"]) for d in _torch_closure(PROVIDED_ROOTS)}
    owners = metadata.packages_distributions()
    found: dict[str, Requirement] = {}
    for imported in required_imports(sources):
        distributions = owners.get(imported.module)
        known = bool(distributions)
        distribution = distributions[0] if distributions else imported.module
        if _normalise(distribution) in provided | {_normalise(r) for r in PROVIDED_ROOTS}:
            continue
        found.setdefault(
            _normalise(distribution),
            Requirement(distribution, imported.module, imported.file, imported.line, known),
        )
    return list(found.values())


def _requirement_name(line: str) -> str | None:
    text = line.split("#", 1)[0].strip()
    if not text or text.startswith("-"):
        return None
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", text)
    return _normalise(match[0]) if match else None


def merged_requirements(existing: str, requirements: list[Requirement]) -> str:
    """`existing` (the repo's requirements.txt, or "") with each requirement it does not name appended."""
    named = {_requirement_name(line) for line in existing.splitlines()}
    lines = [r for r in requirements if _normalise(r.distribution) not in named]
    if not lines:
        return existing
    text = existing if not existing or existing.endswith("\n") else existing + "\n"
    for r in lines:
        why = f"imported by {r.file}:{r.line}"
        if not r.known:
            why += f"; not installed where the port ran, so the distribution is assumed to be named like `{r.module}`"
        text += f"{r.distribution}  # {why}\n"
    return text
