"""Tests for porter.weights: finding, streaming and exactly converting checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from porter.errors import BadInput
from porter.weights import (
    ConversionReport,
    WeightOp,
    convert_checkpoint,
    find_weight_files,
    iter_source_tensors,
    load_state_dict_keys,
    parse_shard_size,
)

# ---------------------------------------------------------------- helpers


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (NaN payloads and -0.0 included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8),
                       b.contiguous().reshape(-1).view(torch.uint8))


def read_output(out_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor in a converted checkpoint, checking each file's metadata."""
    tensors = {}
    for path in sorted(out_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                assert name not in tensors
                tensors[name] = f.get_tensor(name)
    return tensors


def mixed_state_dict() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    special = torch.tensor([float("nan"), -0.0, 0.0, float("inf"), -float("inf"), 1e-40])
    return {
        "embed.weight": torch.randn(16, 8, generator=gen),
        "layer.bf16": torch.randn(4, 8, generator=gen).to(torch.bfloat16),
        "layer.fp16": torch.randn(3, 5, generator=gen).to(torch.float16),
        "layer.int64": torch.arange(-5, 7, dtype=torch.int64).reshape(3, 4),
        "layer.special": special,
        "layer.bool": torch.tensor([True, False, True]),
        "layer.scalar": torch.tensor(3.5, dtype=torch.float64),
        "layer.empty": torch.zeros(0, 4),
    }


def write_sharded_bin(repo: Path, shards: list[dict[str, torch.Tensor]]) -> None:
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"pytorch_model-{i:05d}-of-{len(shards):05d}.bin"
        torch.save(shard, repo / name)
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (repo / "pytorch_model.bin.index.json").write_text(json.dumps(index))


def write_index(repo: Path, weight_map: dict[str, str], name: str) -> None:
    (repo / name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


class Evil:
    """Pickles into a call to os.system: must never run on load."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


# ---------------------------------------------------------------- conversion


def test_single_bin_converts_bit_for_bit(tmp_path: Path) -> None:
    repo, out = tmp_path / "repo", tmp_path / "out"
    repo.mkdir()
    source = mixed_state_dict()
    torch.save(source, repo / "pytorch_model.bin")

    files = find_weight_files(repo)
    assert files == [repo / "pytorch_model.bin"]
    report = convert_checkpoint(files, out)

    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    written = read_output(out)
    assert set(written) == set(source)
    for name, tensor in source.items():
        assert bits_equal(written[name], tensor), name
    # safetensors lays tensors out by alignment, so a single file has no name order to keep.
    assert sorted(load_state_dict_keys(out)) == sorted(source)
    assert report.verified
    assert report.tensors == len(source)
    assert report.bytes == sum(t.numel() * t.element_size() for t in source.values())
    assert report.output_files == [str(out / "model.safetensors")]
    assert report.as_dict()["dropped_duplicates"] == {}


def test_sharded_bin_with_index_gives_sharded_output(tmp_path: Path) -> None:
    repo, out = tmp_path / "repo", tmp_path / "out"
    repo.mkdir()
    shards = [
        {f"layers.{i}.weight": torch.full((64,), float(i)) for i in range(3)},
        {f"layers.{i}.weight": torch.full((64,), float(i)) for i in range(3, 6)},
    ]
    write_sharded_bin(repo, shards)
    files = find_weight_files(repo)
    assert [f.name for f in files] == ["pytorch_model-00001-of-00002.bin",
                                       "pytorch_model-00002-of-00002.bin"]

    # 64 float32 = 256 bytes per tensor; two fit in 600 bytes, so 6 tensors -> 3 shards.
    report = convert_checkpoint(files, out, max_shard_size=600)

    names = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert report.output_files == [str(out / n) for n in names]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 6 * 256
    expected_order = [f"layers.{i}.weight" for i in range(6)]
    assert list(index["weight_map"]) == expected_order
    assert load_state_dict_keys(out) == expected_order
    for name, shard in index["weight_map"].items():
        with safe_open(str(out / shard), framework="pt") as f:
            assert name in f.keys()  # noqa: SIM118 - safe_open is not a mapping
            assert torch.equal(f.get_tensor(name), torch.full((64,), float(name.split(".")[1])))
    assert not (out / "model.safetensors").exists()


def test_reconverting_replaces_previous_output(tmp_path: Path) -> None:
    repo, out = tmp_path / "repo", tmp_path / "out"
    repo.mkdir()
    torch.save({f"w{i}": torch.ones(64) for i in range(4)}, repo / "pytorch_model.bin")
    convert_checkpoint(find_weight_files(repo), out, max_shard_size=300)
    assert (out / "model.safetensors.index.json").exists()

    convert_checkpoint(find_weight_files(repo), out)
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]


def test_safetensors_source_and_preference(tmp_path: Path) -> None:
    repo, out = tmp_path / "repo", tmp_path / "out"
    repo.mkdir()
    save_file({"b": torch.ones(2), "a": torch.zeros(3)}, str(repo / "model.safetensors"))
    torch.save({"stale": torch.ones(1)}, repo / "pytorch_model.bin")

    files = find_weight_files(repo)
    assert files == [repo / "model.safetensors"]
    seen: list[tuple[int, int]] = []
    convert_checkpoint(files, out, progress=lambda done, total: seen.append((done, total)))
    assert set(read_output(out)) == {"a", "b"}
    assert seen == [(1, 2), (2, 2)]


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_nested_training_checkpoint_is_unwrapped(tmp_path: Path, wrapper: str) -> None:
    repo, out = tmp_path / "repo", tmp_path / "out"
    repo.mkdir()
    weights = {"encoder.weight": torch.randn(3, 3), "step": 7, "encoder.bias": torch.ones(3)}
    torch.save({wrapper: weights, "epoch": 3, "lr": 0.1}, repo / "last.ckpt")

    assert find_weight_files(repo) == [repo / "last.ckpt"]
    names = [name for name, _ in iter_source_tensors([repo / "last.ckpt"])]
    assert names == ["encoder.weight", "encoder.bias"]  # the int entry is skipped
    convert_checkpoint(find_weight_files(repo), out)
    written = read_output(out)
    assert torch.equal(written["encoder.weight"], weights["encoder.weight"])


def test_legacy_non_zip_pickle_is_read(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save({"w": torch.arange(4)}, path, _use_new_zipfile_serialization=False)
    [(name, tensor)] = list(iter_source_tensors([path]))
    assert name == "w" and torch.equal(tensor, torch.arange(4))


def test_tied_duplicate_is_dropped(tmp_path: Path) -> None:
    embed = torch.randn(10, 4)
    # lm_head comes first: the decision has to wait for its source.
    torch.save({"lm_head.weight": embed.clone(), "model.embed_tokens.weight": embed,
                "other.weight": torch.ones(2)}, tmp_path / "pytorch_model.bin")
    tied = {"lm_head.weight": "model.embed_tokens.weight"}

    report = convert_checkpoint([tmp_path / "pytorch_model.bin"], tmp_path / "out", tied=tied)

    assert report.dropped_duplicates == tied
    assert sorted(load_state_dict_keys(tmp_path / "out")) == ["model.embed_tokens.weight",
                                                              "other.weight"]


def test_tied_but_different_is_kept(tmp_path: Path) -> None:
    torch.save({"model.embed_tokens.weight": torch.zeros(3, 2), "lm_head.weight": torch.ones(3, 2)},
               tmp_path / "pytorch_model.bin")
    report = convert_checkpoint([tmp_path / "pytorch_model.bin"], tmp_path / "out",
                                tied={"lm_head.weight": "model.embed_tokens.weight"})
    assert report.dropped_duplicates == {}
    assert torch.equal(read_output(tmp_path / "out")["lm_head.weight"], torch.ones(3, 2))


def test_shared_storage_not_declared_tied_is_copied(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    # torch.save keeps the aliasing; mmap loading gives back tensors sharing one storage.
    torch.save({"a": base, "b": base, "row": base[1]}, tmp_path / "pytorch_model.bin")
    loaded = dict(iter_source_tensors([tmp_path / "pytorch_model.bin"]))
    assert loaded["a"].untyped_storage().data_ptr() == loaded["b"].untyped_storage().data_ptr()

    report = convert_checkpoint([tmp_path / "pytorch_model.bin"], tmp_path / "out")

    written = read_output(tmp_path / "out")
    assert report.dropped_duplicates == {}
    assert torch.equal(written["a"], base) and torch.equal(written["b"], base)
    assert torch.equal(written["row"], base[1])


def test_rename_and_split_ops(tmp_path: Path) -> None:
    q, k, v = (torch.randn(4, 6) for _ in range(3))
    gqa = torch.randn(6, 8)
    torch.save({
        "h.0.attn.qkv.weight": torch.cat([q, k, v]),
        "h.0.attn.kv.weight": gqa,
        "h.0.fc.weight": torch.ones(2),
        "h.0.norm.weight": torch.zeros(2),
    }, tmp_path / "pytorch_model.bin")
    ops = [
        WeightOp("split", r"(.*)\.qkv\.weight", (r"\1.q_proj.weight", r"\1.k_proj.weight",
                                                  r"\1.v_proj.weight")),
        WeightOp("split", r"(.*)\.kv\.weight", (r"\1.k.weight", r"\1.v.weight"),
                 dim=1, sizes=(3, 5)),
        WeightOp("rename", r"(.*)\.fc\.weight", (r"\1.mlp.weight",)),
    ]

    report = convert_checkpoint([tmp_path / "pytorch_model.bin"], tmp_path / "out", ops=ops)

    written = read_output(tmp_path / "out")
    assert bits_equal(written["h.0.attn.q_proj.weight"], q)
    assert bits_equal(written["h.0.attn.k_proj.weight"], k)
    assert bits_equal(written["h.0.attn.v_proj.weight"], v)
    assert bits_equal(written["h.0.attn.k.weight"], gqa[:, :3].contiguous())
    assert bits_equal(written["h.0.attn.v.weight"], gqa[:, 3:].contiguous())
    assert torch.equal(written["h.0.mlp.weight"], torch.ones(2))
    assert "h.0.norm.weight" in written and "h.0.fc.weight" not in written
    assert report.renamed == {"h.0.fc.weight": "h.0.mlp.weight"}
    assert report.split["h.0.attn.qkv.weight"] == ["h.0.attn.q_proj.weight",
                                                   "h.0.attn.k_proj.weight",
                                                   "h.0.attn.v_proj.weight"]


def test_split_that_does_not_divide_is_refused(tmp_path: Path) -> None:
    torch.save({"x.qkv.weight": torch.ones(5, 2)}, tmp_path / "w.pt")
    op = WeightOp("split", r"(.*)\.qkv\.weight", (r"\1.q", r"\1.k", r"\1.v"))
    with pytest.raises(BadInput, match="equal parts"):
        convert_checkpoint([tmp_path / "w.pt"], tmp_path / "out", ops=[op])


def test_two_outputs_with_same_name_are_refused(tmp_path: Path) -> None:
    torch.save({"a.old": torch.ones(1), "a.new": torch.zeros(1)}, tmp_path / "w.pt")
    with pytest.raises(BadInput, match="a.new"):
        convert_checkpoint([tmp_path / "w.pt"], tmp_path / "out",
                           ops=[WeightOp("rename", r"(.*)\.old", (r"\1.new",))])
    assert not (tmp_path / "out" / "model.safetensors").exists()


# ---------------------------------------------------------------- refusing bad input


def test_code_execution_pickle_is_refused(tmp_path: Path) -> None:
    repo, pwned = tmp_path / "repo", tmp_path / "pwned"
    repo.mkdir()
    torch.save({"w": Evil(f"touch {pwned}")}, repo / "pytorch_model.bin")

    with pytest.raises(BadInput, match="refused to load: the pickle contains objects other"):
        convert_checkpoint(find_weight_files(repo), tmp_path / "out")
    with pytest.raises(BadInput, match="pytorch_model.bin"):
        list(iter_source_tensors([repo / "pytorch_model.bin"]))
    assert not pwned.exists()


def test_garbage_file_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(BadInput, match="pytorch_model.bin"):
        list(iter_source_tensors([tmp_path / "pytorch_model.bin"]))


@pytest.mark.parametrize("shard", ["../x.bin", "/etc/passwd", "sub/../../x.bin"])
def test_index_shard_outside_repo_is_refused(tmp_path: Path, shard: str) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    torch.save({"w": torch.ones(1)}, tmp_path / "x.bin")
    write_index(repo, {"w": shard}, "pytorch_model.bin.index.json")
    with pytest.raises(BadInput, match="outside the repo"):
        find_weight_files(repo)


def test_symlink_outside_repo_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    torch.save({"w": torch.ones(1)}, tmp_path / "elsewhere.bin")
    (repo / "pytorch_model.bin").symlink_to(tmp_path / "elsewhere.bin")
    with pytest.raises(BadInput, match="resolves outside the repo"):
        find_weight_files(repo)


def test_symlink_inside_repo_is_accepted(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "blobs").mkdir(parents=True)
    save_file({"w": torch.ones(1)}, str(repo / "blobs" / "abc"))
    (repo / "model.safetensors").symlink_to(repo / "blobs" / "abc")
    assert find_weight_files(repo) == [repo / "model.safetensors"]


def test_missing_shard_is_named(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    save_file({"a": torch.ones(1)}, str(repo / "model-00001-of-00002.safetensors"))
    write_index(repo, {"a": "model-00001-of-00002.safetensors",
                       "b": "model-00002-of-00002.safetensors"}, "model.safetensors.index.json")
    with pytest.raises(BadInput, match="model-00002-of-00002.safetensors"):
        find_weight_files(repo)


def test_repo_without_weights_gives_empty_list(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert find_weight_files(tmp_path) == []


# ---------------------------------------------------------------- shard sizes


@pytest.mark.parametrize(("size", "expected"), [
    (1234, 1234),
    ("5GB", 5 * 10**9),
    ("500MB", 500 * 10**6),
    ("10KB", 10_000),
    ("2GiB", 2 * 2**30),
    ("1.5MiB", 3 * 2**19),
    (" 7 mb ", 7 * 10**6),
    ("300", 300),
])
def test_shard_size_parsing(size: int | str, expected: int) -> None:
    assert parse_shard_size(size) == expected


@pytest.mark.parametrize("size", ["", "5 GiGa", "GB", "-1GB", 0, -5])
def test_bad_shard_sizes_are_refused(size: int | str) -> None:
    with pytest.raises(ValueError, match="shard size"):
        parse_shard_size(size)


def test_report_as_dict_is_json_ready(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(1)}, tmp_path / "w.pt")
    report = convert_checkpoint([tmp_path / "w.pt"], tmp_path / "out", max_shard_size="1KB")
    assert isinstance(report, ConversionReport)
    assert json.loads(json.dumps(report.as_dict()))["verified"] is True
