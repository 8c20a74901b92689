"""Errors that end a port, each carrying what a user needs to act on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Diagnostic:
    """A precise statement about one place in the input: file, line, what and why."""

    file: str
    line: int | None
    message: str
    symbol: str | None = None

    def render(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        what = f"{self.symbol}: " if self.symbol else ""
        return f"{where}: {what}{self.message}"

    def as_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "symbol": self.symbol, "message": self.message}


class PortError(Exception):
    """The input cannot be ported as given (CLI exit code 2)."""

    exit_code = 2

    def __init__(self, message: str, diagnostics: list[Diagnostic] | None = None):
        super().__init__(message)
        self.diagnostics = list(diagnostics or [])

    def render(self) -> str:
        lines = [str(self)]
        lines += ["  " + d.render() for d in self.diagnostics]
        return "\n".join(lines)


class BadInput(PortError):
    """The repo is malformed: missing files, broken JSON, unreadable weights."""

    @classmethod
    def at(cls, path: Path | str, problem: str) -> BadInput:
        return cls(f"{path}: {problem}")


class UnsupportedPattern(PortError):
    """The code holds a shape no transform understands; diagnostics say where."""


class WeightsMismatch(PortError):
    """A written tensor differs from its source: the conversion is not trusted (exit 1)."""

    exit_code = 1


class ReferenceUnavailable(Exception):
    """The legacy code could not be run in any environment to produce a reference."""
