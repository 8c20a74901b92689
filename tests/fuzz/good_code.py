"""Run the rewrite over transformers' own modeling files (CONTRACT G3).

A file that already routes attention through `ALL_ATTENTION_FUNCTIONS` is good code: the
transforms must leave it (and its configuration file) exactly as it is. Other files are
legacy as far as the contract goes; the tool may rewrite or refuse them, but must never
crash on them.
"""

from __future__ import annotations

import ast
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import libcst as cst

from porter.analysis import analyse
from porter.errors import PortError
from porter.rewrite import rewrite

INTERFACE = "ALL_ATTENTION_FUNCTIONS"


def installed_modeling_files() -> list[Path]:
    import transformers

    return sorted(Path(transformers.__file__).parent.glob("models/*/modeling_*.py"))


def as_remote_code(text: str) -> str:
    """Package-relative imports made absolute, as the file would sit in a remote-code repo."""
    text = re.sub(r"from \.\.\.(\w)", r"from transformers.\1", text)
    text = re.sub(r"from \.\.\. import", "from transformers import", text)
    return re.sub(r"from \.\.(\w)", r"from transformers.models.\1", text)


def entry_points(text: str) -> set[str]:
    """What an auto_map would name: the file's `__all__`, else every class it defines."""
    tree = ast.parse(text)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            try:
                return set(ast.literal_eval(node.value))
            except ValueError:
                break
    return {node.name for node in tree.body if isinstance(node, ast.ClassDef)}


@dataclass
class Outcome:
    """What the rewrite did to one modeling file (and its configuration file)."""

    path: Path
    on_interface: bool
    kind: str  # "unchanged", "changed", "refused" (diagnostics or PortError), "crashed"
    detail: str = ""
    changed_files: list[str] = field(default_factory=list)
    transforms: list[str] = field(default_factory=list)  # the transforms that changed or refused something

    @property
    def good_code_harmed(self) -> bool:
        """Good code must come out exactly as it went in, with nothing refused."""
        return self.on_interface and self.kind != "unchanged"


def rewrite_installed_file(path: Path) -> Outcome:
    """Rewrite `path` with its sibling configuration file, as one remote-code repo would hold them."""
    files = {path.name: as_remote_code(path.read_text())}
    config = path.with_name(path.name.replace("modeling_", "configuration_", 1))
    if config.exists():
        files[config.name] = as_remote_code(config.read_text())
    on_interface = INTERFACE in files[path.name]
    try:
        modules = {name: cst.parse_module(text) for name, text in files.items()}
        result = rewrite(modules, analyse(modules, entry_points(files[path.name])))
    except PortError as exc:
        return Outcome(path, on_interface, "refused", exc.render())
    except Exception:  # the sweep exists to find these
        return Outcome(path, on_interface, "crashed", traceback.format_exc())
    changed = result.changed_files(files)
    acted = sorted({c.transform for c in result.changes} | {_transform_of(d.message) for d in result.diagnostics})
    if result.diagnostics:
        detail = "\n".join(d.render() for d in result.diagnostics)
        return Outcome(path, on_interface, "refused", detail, changed, acted)
    if changed:
        return Outcome(path, on_interface, "changed", result.diff(files), changed, acted)
    return Outcome(path, on_interface, "unchanged")


def _transform_of(message: str) -> str:
    """Diagnostics from transforms start with `[name]`."""
    return message[1:].split("]", 1)[0] if message.startswith("[") else "?"
