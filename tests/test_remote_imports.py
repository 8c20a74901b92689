"""Undeclared requirements of remote code reach the reference environment (einops)."""

from __future__ import annotations

from pathlib import Path

from porter.environments import ReferenceEnv, remote_code_imports


def _env(root: Path, installed: list[str]) -> ReferenceEnv:
    site = root / "lib" / "python3.11" / "site-packages"
    for dist in installed:
        (site / f"{dist}.dist-info").mkdir(parents=True)
    return ReferenceEnv(root, root / "bin" / "python", "4.44.2", reused=True, build_seconds=0.0)


def test_imports_the_environment_lacks_are_found(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "modeling_x.py").write_text(
        "import json\nimport torch\nfrom einops import rearrange\nfrom transformers import PreTrainedModel\n"
        "from .configuration_x import XConfig\n"
        "try:\n    import flash_attn\nexcept ImportError:\n    pass\n"
    )
    env = _env(tmp_path / "env", ["transformers-4.44.2", "numpy-1.26.4"])
    # einops is installed beside port-model; the stdlib, torch, transformers (in the
    # environment), relative and optional (try-block) imports are not requirements.
    assert remote_code_imports(repo, env) == ["einops"]


def test_nothing_when_the_environment_has_it(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "modeling_x.py").write_text("from einops import rearrange\n")
    assert remote_code_imports(repo, _env(tmp_path / "env", ["einops-0.8.2", "transformers-4.44.2"])) == []
