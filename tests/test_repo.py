"""Reading a legacy repo: each code file is parsed once, however many stages read it."""

from __future__ import annotations

import shutil
from pathlib import Path

import libcst as cst
import pytest

from porter.errors import BadInput
from porter.pipeline import load, rewrite_code
from porter.repo import parse_code, parse_tree


def test_loading_and_rewriting_parse_each_code_file_once(sample_repo: Path, monkeypatch) -> None:
    texts = {p.read_text(): p.name for p in sample_repo.glob("*.py")}
    parsed: list[str] = []
    parse_module = cst.parse_module

    def counting(text, *args, **kwargs):
        if text in texts:
            parsed.append(texts[text])
        return parse_module(text, *args, **kwargs)

    monkeypatch.setattr(cst, "parse_module", counting)
    parse_tree.cache_clear()
    result = rewrite_code(load(sample_repo))  # the auto_map check parses the model file, then the rewrite
    assert result.files
    assert sorted(parsed) == sorted(texts.values())


def test_a_syntax_error_is_reported_every_time(tmp_path: Path) -> None:
    text = "def broken(:\n    pass\n"
    for _ in range(2):
        with pytest.raises(BadInput, match="modeling_x.py:.*syntax error"):
            parse_code(tmp_path / "modeling_x.py", text)


def test_a_file_that_libcst_does_not_write_back_as_read_is_refused_at_its_line(sample_repo: Path, tmp_path: Path) -> None:
    """A backslash alone on a blank line: Python joins it to the next line, while libcst
    moves that statement into the block above. Found by the damage fuzzer; a port must
    refuse it rather than write the changed code."""
    text = "def f(x):\n    if x:\n        x = 1\n\\\n    return x\n"
    compile(text, "f.py", "exec")
    assert cst.parse_module(text).code != text  # the libcst behaviour this guards against
    with pytest.raises(BadInput, match=r"configuration_x.py:4: libcst does not write this line back"):
        parse_code(tmp_path / "configuration_x.py", text)

    repo = tmp_path / "repo"
    shutil.copytree(sample_repo, repo)
    config = next(repo.glob("configuration_*.py"))
    config.write_text(config.read_text() + "\n\n" + text)
    with pytest.raises(BadInput, match=rf"{config.name}:\d+: libcst does not write this line back"):
        load(repo)
