"""What a legacy repo holds: its config, code files, weight files and everything else."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import libcst as cst

from porter.errors import BadInput

CODE_PREFIXES = ("configuration_", "modeling_", "processing_", "image_processing_", "tokenization_")
MAX_CODE_BYTES = 5_000_000  # a modeling file larger than this is not source code a person wrote
MAX_CONFIG_BYTES = 20_000_000  # config.json is read whole: a larger one is not a model config


@dataclass
class LegacyRepo:
    """A repo on disk, read once; `code` maps file name to source text."""

    root: Path
    config: dict
    code: dict[str, str]
    weight_files: list[Path]
    other_files: list[Path] = field(default_factory=list)

    @property
    def auto_map(self) -> dict[str, str]:
        """Auto class -> `module.Class`; a list (tokenizers: slow, fast) gives its first entry set."""
        value = self.config.get("auto_map") or {}
        if not isinstance(value, dict):
            return {}
        found = {}
        for auto_class, reference in value.items():
            if isinstance(reference, list):
                reference = next((r for r in reference if r), None)
            if reference:
                found[auto_class] = reference
        return found

    @property
    def transformers_version(self) -> str | None:
        return self.config.get("transformers_version")

    def modules(self) -> dict[str, cst.Module]:
        return {name: parse_code(self.root / name, text) for name, text in self.code.items() if name.endswith(".py")}


def parse_code(path: Path, text: str) -> cst.Module:
    try:
        return parse_tree(text)
    except cst.ParserSyntaxError as exc:
        raise BadInput.at(f"{path}:{exc.raw_line}", f"syntax error: {exc.message}") from None
    except NotReadBack as exc:
        raise BadInput.at(f"{path}:{exc.line}", "libcst does not write this line back as it reads it (a line "
                          "continuation it misplaces?): any rewrite of the file would change its code") from None


class NotReadBack(Exception):
    """libcst's tree of a file does not give the file's text back."""

    def __init__(self, line: int):
        super().__init__(f"line {line}")
        self.line = line


@functools.lru_cache(maxsize=8)
def parse_tree(text: str) -> cst.Module:
    """libcst trees are immutable, so a file that several stages read (the auto_map check
    when loading, the analysis and rewrite, the checks) is parsed once. A few trees are
    kept: one repo's code files.

    A tree whose code is not the text it was parsed from is refused: libcst misreads some
    rare shapes (a backslash alone on a line moves the next statement into the block
    above), and every file written from such a tree would be changed there, silently."""
    tree = cst.parse_module(text)
    code = tree.code
    if code != text:
        written, read = code.splitlines(), text.splitlines()
        line = next((i for i, (a, b) in enumerate(zip(written, read, strict=False)) if a != b), min(len(written), len(read)))
        raise NotReadBack(line + 1)
    return tree


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False
    except (OSError, RuntimeError):  # a symlink loop resolves nowhere
        raise BadInput.at(path, "symlink cannot be resolved (a loop?)") from None


def check_compiles(path: Path, text: str) -> None:
    """Python itself must accept the code: a file it cannot compile is not ported (the
    rewrite would carry the error into the output, or hide it)."""
    try:
        compile(text, str(path), "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise BadInput.at(f"{path}:{exc.lineno}", f"does not compile: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, absurd nesting
        raise BadInput.at(path, f"does not compile: {exc}") from None


def load_repo(src: Path) -> LegacyRepo:
    """Read and validate a repo folder; every problem is a BadInput naming the file."""
    from porter.weights import find_weight_files

    src = Path(src)
    if not src.is_dir():
        raise BadInput.at(src, "not a folder")
    config_path = src / "config.json"
    if not config_path.is_file():
        raise BadInput.at(config_path, "missing: a model repo needs a config.json")
    if config_path.stat().st_size > MAX_CONFIG_BYTES:
        raise BadInput.at(config_path, f"larger than {MAX_CONFIG_BYTES} bytes: not a model config")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BadInput.at(config_path, f"not valid JSON: {exc or 'nested too deeply'}") from None
    if not isinstance(config, dict):
        raise BadInput.at(config_path, "not a JSON object")

    code: dict[str, str] = {}
    others: list[Path] = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part.startswith(".") for part in rel.parts) or "__pycache__" in rel.parts:
            continue
        if path.is_symlink() and not _inside(src, path):
            raise BadInput.at(path, "symlink points outside the repo")
        if not path.is_file():
            continue
        if path.suffix == ".py" and len(rel.parts) == 1:
            if path.stat().st_size > MAX_CODE_BYTES:
                raise BadInput.at(path, f"code file larger than {MAX_CODE_BYTES} bytes")
            try:
                code[path.name] = path.read_text()
            except UnicodeDecodeError:
                raise BadInput.at(path, "not UTF-8 text") from None
            check_compiles(path, code[path.name])
        else:
            others.append(path)

    repo = LegacyRepo(src, config, code, weight_files=[], other_files=others)
    _check_auto_map(repo)
    if not any(name.startswith("modeling_") for name in code) and not _auto_map_names_a_model(repo):
        raise BadInput.at(src, "no modeling_*.py file and no model class in auto_map: nothing to port")
    repo.weight_files = find_weight_files(src)
    weight_set = {p.resolve() for p in repo.weight_files}
    repo.other_files = [p for p in others if p.resolve() not in weight_set and not _is_weight_index(p)]
    return repo


WEIGHT_NAME = re.compile(r"^(pytorch_model|model|tf_model|flax_model)(-\d+-of-\d+)?\.(bin|safetensors|h5|msgpack)(\.index\.json)?$")


def _is_weight_index(path: Path) -> bool:
    """Checkpoint files the port replaces, including a second format of the same weights."""
    return bool(WEIGHT_NAME.match(path.name))


def _auto_map_names_a_model(repo: LegacyRepo) -> bool:
    """Some Hub repos keep the model in a file of another name (`<name>_hf_model.py`,
    `<name>_model.py`); their auto_map names it (checked to exist by `_check_auto_map`)."""
    return any(auto_class.startswith("AutoModel") for auto_class in repo.auto_map)


def _check_auto_map(repo: LegacyRepo) -> None:
    config_path = repo.root / "config.json"
    if not repo.auto_map:
        raise BadInput.at(config_path, "no auto_map: not a remote-code repo")
    for auto_class, reference in repo.auto_map.items():
        if not isinstance(reference, str):
            raise BadInput.at(config_path, f"auto_map[{auto_class!r}] = {reference!r} is not a `module.Class` name")
        if "--" in reference or "/" in reference or reference.count(".") != 1:
            raise BadInput.at(config_path, f"auto_map[{auto_class!r}] = {reference!r} names code outside the repo")
        module_name, class_name = reference.split(".")
        filename = f"{module_name}.py"
        if filename not in repo.code:
            raise BadInput.at(config_path, f"auto_map[{auto_class!r}] names {filename}, which does not exist")
        module = parse_code(repo.root / filename, repo.code[filename])
        defined = {s.name.value for s in module.body if isinstance(s, cst.ClassDef)}
        if class_name not in defined:
            raise BadInput.at(
                config_path, f"auto_map[{auto_class!r}] names class {class_name}, which {filename} does not define"
            )
