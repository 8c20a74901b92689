"""Good code stays good (CONTRACT G3): transformers' own modeling files, already on the
attention interface, come out of the rewrite unchanged and unrefused.

The whole set (about 350 files on the interface, 180 legacy ones) runs in
`benchmarks/fuzz_good_code.py`; here a fixed sample, each file chosen for a shape a
transform once mistook for legacy code.
"""

from __future__ import annotations

import pytest

from tests.fuzz.good_code import installed_modeling_files, rewrite_installed_file

GOOD_SAMPLE = {
    # RMSNorm's `nn.Parameter(torch.ones(...))`; a `ROPE_INIT_FUNCTIONS[...]` lookup guarded
    # by `rope_type != "default"`.
    "llama": "modeling_llama.py",
    # `nn.Parameter(...) if use_mask_token else None`; buffers declared with `nn.Buffer`.
    "ijepa": "modeling_ijepa.py",
    # A prepare_inputs_for_generation override that wraps GenerationMixin's.
    "phi3": "modeling_phi3.py",
    # Unannotated **kwargs, a cross-attention call that does not pass them, and backend
    # flags the authors chose.
    "gpt2": "modeling_gpt2.py",
}
LEGACY_SAMPLE = {
    # Not on the interface: may be rewritten or refused, never a crash.
    "fnet": "modeling_fnet.py",
}


def _installed(folder: str, name: str):
    for path in installed_modeling_files():
        if path.parent.name == folder and path.name == name:
            return path
    pytest.skip(f"the installed transformers has no models/{folder}/{name}")


@pytest.mark.parametrize("folder", sorted(GOOD_SAMPLE))
def test_interface_code_is_left_unchanged(folder: str) -> None:
    outcome = rewrite_installed_file(_installed(folder, GOOD_SAMPLE[folder]))
    assert outcome.on_interface
    assert outcome.kind == "unchanged", f"{outcome.transforms}\n{outcome.detail}"


@pytest.mark.parametrize("folder", sorted(LEGACY_SAMPLE))
def test_legacy_code_is_rewritten_or_refused_never_crashes(folder: str) -> None:
    outcome = rewrite_installed_file(_installed(folder, LEGACY_SAMPLE[folder]))
    assert not outcome.on_interface
    assert outcome.kind != "crashed", outcome.detail
