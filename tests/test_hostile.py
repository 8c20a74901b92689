"""Hostile input: what a stranger's repo may hold to make the tool run, read or write what
it should not. Each case is refused with a BadInput naming the file (CLI exit 2), or, where
the input is harmless to the tool, ported without ever executing the stranger's payload.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import porter
from porter.errors import BadInput

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "tiny_legacy_lm"
MODELING = "modeling_tiny_legacy_lm.py"
HUGE = 8 * 2**30  # sparse: costs no disk, but a tool that read it would run out of memory


class Payload:
    """A pickle that runs a shell command when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def code_only(tmp_path: Path) -> Path:
    """The legacy sample's config and code, no weights: enough for the load stage."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for path in SAMPLE.iterdir():
        if path.suffix in (".py", ".json"):
            shutil.copy2(path, repo / path.name)
    return repo


@pytest.fixture
def with_weights(sample_repo: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(sample_repo, repo)
    return repo


def _set_config(repo: Path, **changes) -> None:
    config = json.loads((repo / "config.json").read_text())
    config.update(changes)
    (repo / "config.json").write_text(json.dumps(config))


# -- pickles -------------------------------------------------------------------------------
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy-format"])
def test_pickle_payload_checkpoint_is_refused_and_never_runs(code_only: Path, tmp_path: Path, zip_format) -> None:
    marker = tmp_path / "pwned"
    torch.save({"w": Payload(marker)}, code_only / "pytorch_model.bin", _use_new_zipfile_serialization=zip_format)
    with pytest.raises(BadInput, match="pytorch_model.bin.*refused to load"):
        porter.convert_checkpoint(porter.load(code_only).weight_files, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_pickles_the_port_does_not_need_are_never_unpickled(with_weights: Path, tmp_path: Path) -> None:
    """Safetensors weights beside a poisoned training pickle and a poisoned .bin: the port
    reads only the safetensors and copies the rest as bytes."""
    marker = tmp_path / "pwned"
    state = torch.load(with_weights / "pytorch_model.bin", weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(with_weights / "model.safetensors"))
    torch.save({"w": Payload(marker)}, with_weights / "pytorch_model.bin")
    torch.save(Payload(marker), with_weights / "training_args.bin")
    result = porter.port(with_weights, tmp_path / "out", verify=False)
    assert result.report.status == "ported"
    assert not marker.exists()
    assert (tmp_path / "out" / "training_args.bin").read_bytes() == (with_weights / "training_args.bin").read_bytes()


# -- paths that leave the repo -------------------------------------------------------------
@pytest.mark.parametrize("link", [MODELING, "tokenizer.json", "assets", "sub/vocab.txt"])
def test_symlink_out_of_the_repo_is_refused(code_only: Path, tmp_path: Path, link: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.py").write_text("SECRET = 1\n")
    target = code_only / link
    target.parent.mkdir(exist_ok=True)
    if target.exists():
        target.unlink()
    target.symlink_to(outside if link == "assets" else outside / "secret.py")
    with pytest.raises(BadInput, match="symlink points outside the repo"):
        porter.load(code_only)


def test_symlink_loop_is_refused(code_only: Path) -> None:
    (code_only / "loop").symlink_to(code_only / "loop")
    with pytest.raises(BadInput, match="cannot be resolved"):
        porter.load(code_only)


@pytest.mark.parametrize("shard", ["../outside.bin", "/tmp/outside.bin", "a/../../outside.bin", "..\\outside.bin"])
def test_index_shard_climbing_out_is_refused_and_never_read(code_only: Path, tmp_path: Path, shard: str) -> None:
    marker = tmp_path / "pwned"
    torch.save({"w": Payload(marker)}, tmp_path / "outside.bin")
    index = {"metadata": {}, "weight_map": {"w": shard}}
    (code_only / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(BadInput, match="outside the repo"):
        porter.load(code_only)
    assert not marker.exists()


@pytest.mark.parametrize(
    "reference",
    [
        "someone/other-repo--modeling_tiny_legacy_lm.TinyLegacyLMModel",  # the Hub's cross-repo form
        "../modeling_tiny_legacy_lm.TinyLegacyLMModel",
        "/tmp/modeling_tiny_legacy_lm.TinyLegacyLMModel",
        "os.system",  # a module that is not a file of the repo
        "transformers.models.llama.modeling_llama.LlamaModel",
        "modeling_tiny_legacy_lm",
        5,
        {"module": "modeling_tiny_legacy_lm"},
    ],
)
def test_auto_map_naming_code_outside_the_repo_is_refused(code_only: Path, reference) -> None:
    config = json.loads((code_only / "config.json").read_text())
    _set_config(code_only, auto_map={**config["auto_map"], "AutoModel": reference})
    with pytest.raises(BadInput, match="auto_map"):
        porter.load(code_only)


@pytest.mark.parametrize("auto_map", [["modeling_tiny_legacy_lm.TinyLegacyLMModel"], "modeling_x.X", {}])
def test_auto_map_of_the_wrong_type_is_refused(code_only: Path, auto_map) -> None:
    _set_config(code_only, auto_map=auto_map)
    with pytest.raises(BadInput, match="auto_map"):
        porter.load(code_only)


def test_tokenizer_pair_with_an_empty_slot_is_read(code_only: Path) -> None:
    """`[null, "tokenization_x.Fast"]` is how the Hub writes a repo with only a fast tokenizer."""
    config = json.loads((code_only / "config.json").read_text())
    pair = [None, "modeling_tiny_legacy_lm.TinyLegacyLMModel"]
    _set_config(code_only, auto_map={**config["auto_map"], "AutoTokenizer": pair})
    assert porter.load(code_only).auto_map["AutoTokenizer"] == pair[1]


# -- enormous files ------------------------------------------------------------------------
@pytest.mark.parametrize("name", [MODELING, "config.json", "model.safetensors.index.json"])
def test_enormous_file_is_refused_without_being_read(code_only: Path, name: str) -> None:
    with open(code_only / name, "r+b" if (code_only / name).exists() else "wb") as f:
        f.truncate(HUGE)
    started = time.monotonic()
    with pytest.raises(BadInput, match=f"{name}.*larger than"):
        porter.load(code_only)
    assert time.monotonic() - started < 10  # reading 8 GiB would take far longer, or fail


# -- code that runs at import time ---------------------------------------------------------
IMPORT_TIME_CODE = """

import json as _json, os as _os, time as _time
with open({marker!r}, "a") as _f:
    _f.write(_json.dumps({{"pid": _os.getpid(), "token": _os.environ.get("HF_TOKEN"),
                          "hub_token": _os.environ.get("HUGGING_FACE_HUB_TOKEN"),
                          "offline": _os.environ.get("HF_HUB_OFFLINE")}}) + "\\n")
_time.sleep(3600)
"""


def test_import_time_code_runs_only_in_a_child_offline_tokenless_and_time_limited(
    with_weights: Path, tmp_path: Path, monkeypatch, cache_dir: Path
) -> None:
    """A modeling file that records where it was imported and then hangs: the port never
    imports it itself; the legacy run imports it in a child with no token, offline, and
    stops it at the time limit with a failed check, not a hang."""
    marker = tmp_path / "imported.jsonl"
    modeling = with_weights / MODELING
    modeling.write_text(modeling.read_text() + IMPORT_TIME_CODE.format(marker=str(marker)))
    monkeypatch.setenv("HF_TOKEN", "hf_secret_parent_token")
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_secret_parent_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    limit = 25.0
    started = time.monotonic()
    result = porter.port(with_weights, tmp_path / "out", cache_dir=cache_dir, timeout=limit)
    elapsed = time.monotonic() - started

    reference = next(c for c in result.checks if c.item == "F1")
    assert reference.status == "FAIL" and "time limit" in reference.detail
    assert not result.verified
    imports = [json.loads(line) for line in marker.read_text().splitlines()]
    assert imports, "the legacy child never reached the modeling file"
    assert all(i["pid"] != os.getpid() for i in imports)
    assert all(i["token"] is None and i["hub_token"] is None for i in imports)
    assert all(i["offline"] == "1" for i in imports)
    assert elapsed < limit + 120  # the port went on after the limit (rewrite and weights took the rest)


# -- the command line ----------------------------------------------------------------------
def test_cli_refuses_hostile_input_with_exit_2_and_no_traceback(code_only: Path, tmp_path: Path) -> None:
    (code_only / "loop").symlink_to(code_only / "loop")
    done = subprocess.run([sys.executable, "-m", "porter.cli", str(code_only), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "cannot be resolved" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
