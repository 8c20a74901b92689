"""Reading a legacy repo: each code file is parsed once, however many stages read it."""

from __future__ import annotations

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
