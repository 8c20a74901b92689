"""A Hub repo may keep its model in a file not named `modeling_*.py` (`yuan_hf_model.py`,
`gemma_model.py`): the auto_map names it, and that is enough to port it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import porter
from porter.errors import BadInput

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "tiny_legacy_lm"
RENAMED = "tiny_legacy_lm_hf_model.py"


def _renamed_sample(tmp_path: Path, auto_map_keys: tuple[str, ...]) -> Path:
    """The legacy sample's code with its model file renamed; auto_map keeps `auto_map_keys`."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for path in SAMPLE.glob("*.py"):
        shutil.copy2(path, repo / (RENAMED if path.name.startswith("modeling_") else path.name))
    config = json.loads((SAMPLE / "config.json").read_text())
    renamed = {k: v.replace("modeling_tiny_legacy_lm.", RENAMED[:-3] + ".") for k, v in config["auto_map"].items()}
    config["auto_map"] = {k: v for k, v in renamed.items() if k in auto_map_keys}
    (repo / "config.json").write_text(json.dumps(config))
    return repo


def test_a_model_file_named_by_auto_map_is_loaded(tmp_path: Path) -> None:
    """Every top-level code file is rewritten (whatever its name), so loading is what decides."""
    repo = porter.load(_renamed_sample(tmp_path, ("AutoConfig", "AutoModelForCausalLM")))
    assert RENAMED in repo.code and repo.auto_map["AutoModelForCausalLM"].startswith(RENAMED[:-3] + ".")


def test_a_repo_whose_auto_map_names_no_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no modeling_.*py file and no model class in auto_map"):
        porter.load(_renamed_sample(tmp_path, ("AutoConfig",)))
