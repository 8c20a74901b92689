"""The whole registry over a realistic legacy repo: compiles, and a second run changes nothing."""

from __future__ import annotations

import textwrap
from pathlib import Path

import libcst as cst
import pytest

from porter.analysis import analyse
from porter.rewrite import rewrite
from tests.transforms.helpers import run_transforms
from transforms import REGISTRY

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "tiny_legacy_lm"


@pytest.fixture(scope="module")
def sample_sources() -> dict[str, str]:
    sources = {path.name: path.read_text() for path in sorted(SAMPLE.glob("*.py"))}
    assert "modeling_tiny_legacy_lm.py" in sources
    return sources


@pytest.fixture(scope="module")
def first_run(sample_sources):
    return run_transforms(sample_sources, REGISTRY)


def test_first_run_ports_without_diagnostics_and_compiles(first_run):
    files, state = first_run
    assert not state.diagnostics, [d.render() for d in state.diagnostics]
    for name, text in files.items():
        compile(text, name, "exec")
    modeling = files["modeling_tiny_legacy_lm.py"]
    assert "ALL_ATTENTION_FUNCTIONS.get_interface(" in modeling
    assert "create_causal_mask(" in modeling
    assert "TinyLegacyLMSdpaAttention" not in modeling
    assert '_tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}' in modeling
    # The sample already has layer indices and the Cache API, and uses no removed API, no Conv1D and
    # no concatenated [q|k|v].
    not_needed = {"rope-config", "removed-imports", "layer-index", "removed-methods", "config-defaults", "post-init"}
    not_needed |= {"attention-layout", "multimodal-config", "multimodal-features", "multimodal-delegation"}
    not_needed |= {"multimodal-processor", "multimodal-split", "multimodal-merge", "multimodal-placeholders"}
    not_needed |= {"conv1d-linear", "split-fused"}
    not_needed.add("attention-selection")  # its config takes no attn_implementation of its own
    not_needed.add("kv-heads-config")  # its attention reads num_key_value_heads
    not_needed.add("bias-rows")  # it has no position bias built from the padding mask
    not_needed.add("attention-config")  # its attention modules take the config already
    not_needed.add("window-layers")  # its config has no sliding window
    not_needed.add("custom-softmax")  # a refusal, never a change: its softmax is a plain one
    not_needed.add("window-layers")  # its config has no sliding window
    not_needed.add("base-model-prefix")  # its prefix names the attribute its heads use
    not_needed.add("value-head-padding")  # its value heads have the key head size
    not_needed.add("in-library-layers")  # a refusal, never a change: it builds no in-library layer
    not_needed.add("mask-positions")  # its positions are rotary, from position_ids
    not_needed.add("argument-updates")  # no forward updates an argument in place
    not_needed.add("window-switch-layers")  # no layer is switched to a window
    assert {c.transform for c in state.changes} == {t.name for t in REGISTRY} - not_needed


def test_second_run_changes_nothing(first_run):
    files, _ = first_run
    again, state = run_transforms(files, REGISTRY)
    assert again == files
    assert not state.changes, [c.as_dict() for c in state.changes]
    assert not state.diagnostics


def test_helper_mirrors_porter_rewrite():
    """The helper every transform test uses gives what the real rewrite stage gives."""
    from tests.transforms.test_kwargs_threading import LEGACY

    source = textwrap.dedent(LEGACY)
    modules = {"modeling_foo.py": cst.parse_module(source)}
    result = rewrite(modules, analyse(modules))
    files, state = run_transforms({"modeling_foo.py": source}, REGISTRY)
    assert result.files == files
    assert [c.as_dict() for c in result.changes] == [c.as_dict() for c in state.changes]
    assert result.diagnostics == state.diagnostics
