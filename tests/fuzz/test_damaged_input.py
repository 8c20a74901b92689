"""Damaged legacy code never crashes the tool: it is refused with a diagnostic or ported
into output that compiles, with an honest report. A few deterministic cases here;
`benchmarks/fuzz_damage.py` runs thousands and prints the counts."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz.damage import Broken, build_case, damaged_repo, port_damaged


@pytest.fixture(scope="module")
def sources(sample_repo: Path) -> list[Path]:
    return [sample_repo]


def test_damaged_sample_is_refused_or_ported_honestly(sources: list[Path]) -> None:
    @settings(max_examples=6, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(damaged_repo(sources, max_edits=2))
    def case(drawn):
        source, files, edits = drawn
        with tempfile.TemporaryDirectory() as tmp:
            repo = build_case(source, files, Path(tmp))
            try:
                port_damaged(repo, Path(tmp) / "out")
            except Broken as exc:
                raise AssertionError(f"{'; '.join(map(str, edits))}: {exc}") from None

    case()
