"""Where the legacy code runs: the nearest installable release, and `--reference current`
(the installed transformers with compatibility shims, a weaker reference)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from porter.environments import (
    choose_release,
    ensure_nearest_env,
    ensure_reference_env,
    nearest_release,
    registry_releases,
)
from porter.errors import ReferenceUnavailable
from porter.verify import make_inputs
from porter.verify.child import RUNNER, current_python, run_model
from porter.verify.reference import CURRENT, OWN, OWN_OR_CURRENT, prepare_reference
from tests.corpus import CORPUS

INDEX = ["4.35.2", "4.36.0", "4.36.1", "4.36.2", "4.37.0rc1", "4.38.1", "4.38.2", "5.0.0"]


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("4.36.99", "4.36.2"),  # same minor, nearest patch
        ("4.36.1", "4.36.1"),
        ("4.37.0.dev0", "4.38.2"),  # no 4.37 final: nearest minor (newer on a tie), its newest patch
        ("4.40.0", "4.38.2"),
        ("4.20.0", "4.35.2"),
        ("3.5.1", None),  # never another major version
    ],
)
def test_nearest_release(requested, expected):
    assert nearest_release(requested, INDEX) == expected


def test_choose_release_states_why(tmp_path):
    choice = choose_release("4.36.99", tmp_path, available=INDEX)
    assert choice.version == "4.36.2"
    assert "4.36.99" in choice.reason and "4.36.2" in choice.reason
    assert choose_release("4.36.1", tmp_path, available=INDEX).reason is None
    with pytest.raises(ReferenceUnavailable, match="no release of the same major version"):
        choose_release("3.5.1", tmp_path, available=INDEX)


def test_a_release_the_index_lacks_gets_the_cached_nearest_one(cache_dir):
    """A real package-index query; 4.36.2 is built already, so nothing is downloaded."""
    ensure_reference_env("4.36.2", cache_dir)  # built by the corpus tests; reused here
    try:
        registry_releases()
    except ReferenceUnavailable as exc:
        pytest.skip(f"package index unreachable: {exc}")
    env, choice = ensure_nearest_env("4.36.99", cache_dir)
    assert (choice.requested, choice.version, env.transformers_version) == ("4.36.99", "4.36.2", "4.36.2")
    assert env.reused and "nearest release, 4.36.2" in choice.reason


def test_without_opt_in_an_unavailable_reference_fails_with_a_hint(tmp_path):
    with pytest.raises(ReferenceUnavailable, match="names no transformers_version") as caught:
        prepare_reference(tmp_path, None, OWN, tmp_path, print)
    assert "--reference own-or-current" in str(caught.value)


def test_opt_in_falls_back_to_the_shimmed_reference_and_says_why(tmp_path):
    reference = prepare_reference(tmp_path, None, OWN_OR_CURRENT, tmp_path, print)
    assert reference.shims and reference.info["weaker"]
    assert "names no transformers_version" in reference.info["own_release_error"]
    assert reference.check_name() != "reference run" and "weaker" in reference.check_name()
    assert prepare_reference(tmp_path, "4.36.2", CURRENT, tmp_path, print).shims


SHIM_PROBE = r"""
import sys, json
sys.path.insert(0, sys.argv[1])
import legacy_shims
installed = legacy_shims.install()
import torch, transformers
from transformers import DynamicCache, LlamaConfig, PretrainedConfig
from transformers.onnx import OnnxConfigWithPast
from transformers.utils import is_torch_fx_available
from transformers.pytorch_utils import find_pruneable_heads_and_indices
from transformers.modeling_utils import SequenceSummary, apply_chunking_to_forward
from transformers.cache_utils import HybridCache
legacy = tuple((torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)) for _ in range(2))
cache = DynamicCache.from_legacy_cache(legacy)
back = cache.to_legacy_cache()
out = {
    "installed": installed,
    "again": legacy_shims.install(),
    "roundtrip": all(torch.equal(k, bk) and torch.equal(v, bv) for (k, v), (bk, bv) in zip(legacy, back)),
    "seen_tokens": cache.seen_tokens,
    "usable": cache.get_usable_length(1, 0),
    "max_length": cache.get_max_length(),
    "rope_scaling_plain": LlamaConfig().rope_scaling,
    "rope_scaling_linear": LlamaConfig(rope_scaling={"type": "linear", "factor": 2.0}).rope_scaling["type"],
    "pad_token_id": PretrainedConfig().pad_token_id,
    "is_decoder": PretrainedConfig().is_decoder,
    "fx": is_torch_fx_available(),
}
try:
    HybridCache()
except NotImplementedError as exc:
    out["hybrid"] = str(exc)
print(json.dumps(out))
"""


def test_shims_restore_the_removed_api_under_the_installed_transformers():
    completed = subprocess.run(
        [sys.executable, "-c", SHIM_PROBE, str(RUNNER.parent)], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = json.loads(completed.stdout.strip().splitlines()[-1])
    assert "DynamicCache legacy API" in out["installed"] and "transformers.onnx" in out["installed"]
    assert out["again"] == []  # each shim only where the name is missing, so only once
    assert out["roundtrip"] and out["seen_tokens"] == 3 and out["usable"] == 3 and out["max_length"] is None
    assert out["rope_scaling_plain"] is None and out["rope_scaling_linear"] == "linear"
    assert out["pad_token_id"] is None and out["is_decoder"] is False and out["fx"] is True
    assert "shimmed for import only" in out["hybrid"]


def test_legacy_gpt2_under_shims_matches_its_own_release(cache_dir, tmp_path):
    """transformers 4.30.2's GPT-2 (tuple caches, transformers.onnx, an _init_weights that
    writes parameters, a causal-mask buffer) gives the same logits and greedy tokens under
    the installed transformers with shims as in its own release."""
    entry = next(m for m in CORPUS if m.id == "gpt2-4.30.2")
    repo = entry.build(cache_dir)
    config = json.loads((repo / "config.json").read_text())
    save_file(make_inputs(config), str(tmp_path / "inputs.safetensors"))
    spec = {"inputs": str(tmp_path / "inputs.safetensors"), "generate": True, "max_new_tokens": 8,
            "pad_token_id": 0, "device": "cpu", "attn_implementations": ["eager"]}
    own = run_model(ensure_reference_env("4.30.2", cache_dir).python, repo, spec, tmp_path / "own", 600)
    shimmed = run_model(current_python(), repo, {**spec, "shims": True}, tmp_path / "shimmed", 600)
    assert own.ok, own.error
    assert shimmed.ok, shimmed.error
    assert "transformers.onnx" in shimmed.result["shims"]
    assert not shimmed.result["runs"]["eager"]["loading_info"]
    expected, actual = load_file(str(own.outputs)), load_file(str(shimmed.outputs))
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.allclose(expected[key].float(), actual[key].float(), atol=1e-5), key


def test_every_shim_is_documented():
    import importlib.util

    spec = importlib.util.spec_from_file_location("legacy_shims", RUNNER.with_name("legacy_shims.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the shims; installs nothing
    page = (RUNNER.parents[2] / "docs" / "reference-shims.md").read_text()
    assert [name for name, _, _ in module.SHIMS if f"| `{name}` |" not in page] == []
