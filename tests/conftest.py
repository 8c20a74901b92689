"""Shared fixtures: a cache folder the tests control, and the legacy inputs built once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("PORT_MODEL_CACHE", ROOT / ".port-model-cache"))
os.environ["PORT_MODEL_CACHE"] = str(CACHE)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The sharded proof (two torchrun processes per port) runs where a test asks for it
# (tests/test_parallel.py), not in every port of the suite: it would add minutes to CI.
os.environ.setdefault("PORT_MODEL_SHARDED_PROOF", "0")


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    return CACHE


@pytest.fixture(scope="session")
def sample_repo(tmp_path_factory) -> Path:
    """The team-written legacy sample, with its weights generated, in a scratch folder."""
    target = tmp_path_factory.mktemp("sample") / "tiny_legacy_lm"
    shutil.copytree(ROOT / "samples" / "tiny_legacy_lm", target)
    subprocess.run([sys.executable, str(ROOT / "samples" / "make_weights.py"), str(target), "--quiet"], check=True)
    return target


@pytest.fixture(scope="session")
def llama_436(cache_dir) -> Path:
    """transformers 4.36.2's llama as a remote-code repo, checkpoint saved by that release."""
    from tests.corpus import llama_436 as build

    return build(cache_dir)


def tree_digest(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes: to prove an input was not modified."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
