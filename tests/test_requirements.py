"""Undeclared runtime dependencies: reported with their import's place, added to requirements.txt."""

from __future__ import annotations

import porter
from porter.requirements import merged_requirements, undeclared_requirements
from tests.conftest import tree_digest
from tests.tiny_repos import tiny_repo_files

CODE = {
    "modeling_x.py": (
        "import json\n"
        "import numpy as np\n"  # transformers requires numpy: always there
        "import torch\n"
        "from einops import rearrange\n"
        "import libcst\n"
        "import configuration_x\n"  # the repo's own file
        "from transformers import PreTrainedModel\n"
        "from .configuration_x import XConfig\n"
        "try:\n    import flash_attn\nexcept ImportError:\n    pass\n"  # optional, as transformers reads it
    ),
    "configuration_x.py": "from einops.layers.torch import Rearrange\n",
}


def test_only_what_neither_transformers_nor_torch_brings():
    found = {r.distribution: r for r in undeclared_requirements(CODE)}
    assert set(found) == {"einops", "libcst"}
    assert (found["einops"].file, found["einops"].line) == ("configuration_x.py", 1)  # first place, files sorted
    assert found["libcst"].known  # installed here, so its distribution name is known


def test_merge_keeps_every_existing_line():
    requirements = undeclared_requirements(CODE)
    existing = "--extra-index-url https://example.org/simple\nEinops>=0.6  # pinned by the authors\nsentencepiece"
    merged = merged_requirements(existing, requirements)
    assert merged.startswith(existing + "\n")
    added = merged[len(existing) + 1 :].splitlines()
    assert [line.split()[0] for line in added] == ["libcst"]  # einops is there already, whatever its spelling
    assert "modeling_x.py:5" in added[0]
    assert merged_requirements(merged, requirements) == merged


def test_the_port_writes_requirements_and_reports_them(tmp_path):
    src = tmp_path / "tiny"
    src.mkdir()
    for name, data in tiny_repo_files().items():
        (src / name).write_bytes(data)
    modeling = src / "modeling_tiny.py"
    modeling.write_text("import libcst\n" + modeling.read_text())
    (src / "requirements.txt").write_text("sentencepiece\n")
    before = tree_digest(src)
    result = porter.port(src, tmp_path / "out", verify=False)
    assert tree_digest(src) == before
    assert (tmp_path / "out" / "requirements.txt").read_text().splitlines()[:2] == [
        "sentencepiece",
        "libcst  # imported by modeling_tiny.py:1",
    ]
    assert result.report.dependencies == [
        {"distribution": "libcst", "module": "libcst", "file": "modeling_tiny.py", "line": 1, "known": True}
    ]
    assert "imported at modeling_tiny.py:1" in (tmp_path / "out" / "PORTING.md").read_text()
