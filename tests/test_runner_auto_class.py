"""The verification runner loads the class the repo's auto_map names, or fails saying so:
an Auto class the repo does not map would pick transformers' own model by `model_type`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

RUNNER_DIR = Path(__file__).resolve().parent.parent / "porter" / "verify"


@pytest.fixture()
def runner(monkeypatch):
    monkeypatch.syspath_prepend(str(RUNNER_DIR))  # the runner imports its sibling files as a script does
    import runner

    return runner


def _repo_with_auto_map(sample_repo: Path, tmp_path: Path, auto_map: dict) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    for path in sample_repo.glob("*.py"):
        shutil.copy2(path, repo / path.name)
    config = json.loads((sample_repo / "config.json").read_text())
    config["auto_map"] = auto_map
    (repo / "config.json").write_text(json.dumps(config))
    return repo


def test_an_auto_map_without_a_model_class_fails_with_a_diagnostic(runner, sample_repo: Path, tmp_path: Path) -> None:
    reference = json.loads((sample_repo / "config.json").read_text())["auto_map"]
    repo = _repo_with_auto_map(sample_repo, tmp_path, {
        "AutoConfig": reference["AutoConfig"],
        "AutoModelForSequenceClassification": reference["AutoModelForCausalLM"],
    })
    with pytest.raises(LookupError, match=r"auto_map names no model class.*AutoModelForSequenceClassification"):
        runner._load_model({"repo": str(repo)}, None)


def test_the_most_specific_mapped_class_is_chosen(runner) -> None:
    import transformers

    assert runner._auto_class_name({"AutoModel": "m.A", "AutoModelForCausalLM": "m.B"}, transformers) == "AutoModelForCausalLM"
    assert runner._auto_class_name({"AutoModel": "m.A"}, transformers) == "AutoModel"
