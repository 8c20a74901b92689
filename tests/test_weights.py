"""Tests for porter.weights: finding, streaming and exactly converting checkpoints."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import porter.weights as weights
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


def test_a_renamed_tensor_is_still_split(tmp_path: Path) -> None:
    """A composite's tower moves under its base model (a rename) and its fused projection is
    split: both apply, whichever op comes first; renames never chain."""
    q, k = torch.randn(4, 6), torch.randn(4, 6)
    torch.save({"vision.attn.qkv.weight": torch.cat([q, k]), "text.fc.weight": torch.ones(2)},
               tmp_path / "pytorch_model.bin")
    ops = [
        WeightOp("rename", r"^(?!text\.)(.*)$", (r"model.\1",)),
        WeightOp("rename", r"^text\.(.*)$", (r"model.text.\1",)),
        WeightOp("split", r"((?:.+\.)?vision\.attn\.)qkv\.(weight)", (r"\g<1>q.\g<2>", r"\g<1>k.\g<2>")),
    ]
    report = convert_checkpoint([tmp_path / "pytorch_model.bin"], tmp_path / "out", ops=ops)
    written = read_output(tmp_path / "out")
    assert set(written) == {"model.vision.attn.q.weight", "model.vision.attn.k.weight", "model.text.fc.weight"}
    assert bits_equal(written["model.vision.attn.q.weight"], q) and bits_equal(written["model.vision.attn.k.weight"], k)
    assert report.renamed["vision.attn.qkv.weight"] == "model.vision.attn.qkv.weight"


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


# ---------------------------------------------------------------- merge and permute


def rotary_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The reference: convert_llama_weights_to_hf.permute (interleaved -> half-split rotary)."""
    dim1, dim2 = w.shape
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


QKV_MERGE = WeightOp("merge", r"(.*)\.(?P<part>q|k|v)_proj\.weight", (r"\1.qkv_proj.weight",),
                     parts=("q", "k", "v"))


def test_merge_concatenates_parts_in_declared_order(tmp_path: Path) -> None:
    q, k, v = (torch.randn(4, 6).to(torch.bfloat16) for _ in range(3))
    # Stored v, q, k and across two shard files: the declared order wins, not the file order.
    repo = tmp_path / "repo"
    repo.mkdir()
    write_sharded_bin(repo, [{"l.0.v_proj.weight": v, "l.0.q_proj.weight": q, "other": torch.ones(2)},
                             {"l.0.k_proj.weight": k}])

    report = convert_checkpoint(find_weight_files(repo), tmp_path / "out", ops=[QKV_MERGE])

    written = read_output(tmp_path / "out")
    assert set(written) == {"l.0.qkv_proj.weight", "other"}
    assert bits_equal(written["l.0.qkv_proj.weight"], torch.cat([q, k, v]))
    assert report.merged == {"l.0.qkv_proj.weight": ["l.0.q_proj.weight", "l.0.k_proj.weight",
                                                     "l.0.v_proj.weight"]}


def test_merge_along_dim_1_and_split_round_trip(tmp_path: Path) -> None:
    gate, up = torch.arange(12.0).reshape(3, 4), -torch.arange(6.0).reshape(3, 2)
    torch.save({"mlp.gate": gate, "mlp.up": up}, tmp_path / "w.pt")
    merge = WeightOp("merge", r"(.*)\.(?P<part>gate|up)", (r"\1.gate_up",), dim=-1,
                     parts=["gate", "up"])
    convert_checkpoint([tmp_path / "w.pt"], tmp_path / "merged", ops=[merge])
    fused = read_output(tmp_path / "merged")["mlp.gate_up"]
    assert bits_equal(fused, torch.tensor([[0.0, 1, 2, 3, -0.0, -1], [4, 5, 6, 7, -2, -3],
                                           [8, 9, 10, 11, -4, -5]]))

    split = WeightOp("split", r"(.*)\.gate_up", (r"\1.gate", r"\1.up"), dim=1, sizes=(4, 2))
    convert_checkpoint([tmp_path / "merged" / "model.safetensors"], tmp_path / "back", ops=[split])
    back = read_output(tmp_path / "back")
    assert bits_equal(back["mlp.gate"], gate) and bits_equal(back["mlp.up"], up)


def test_incomplete_merge_is_refused_and_nothing_written(tmp_path: Path) -> None:
    torch.save({"a.q_proj.weight": torch.ones(2, 2), "a.k_proj.weight": torch.ones(2, 2)},
               tmp_path / "w.pt")
    with pytest.raises(BadInput, match=r"merge into 'a.qkv_proj.weight': no source tensor for "
                                       r"part\(s\) v"):
        convert_checkpoint([tmp_path / "w.pt"], tmp_path / "out", ops=[QKV_MERGE])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("k", "message"), [
    (torch.ones(2, 3), "does not fit"),
    (torch.ones(2, 2, dtype=torch.float16), "torch.float16"),
])
def test_merge_of_mismatched_parts_is_refused(tmp_path: Path, k: torch.Tensor, message: str) -> None:
    torch.save({"a.q_proj.weight": torch.ones(2, 2), "a.k_proj.weight": k,
                "a.v_proj.weight": torch.ones(2, 2)}, tmp_path / "w.pt")
    with pytest.raises(BadInput, match=message):
        convert_checkpoint([tmp_path / "w.pt"], tmp_path / "out", ops=[QKV_MERGE])


def test_permute_matches_the_rotary_reference(tmp_path: Path) -> None:
    n_heads, head_dim, hidden = 4, 6, 8
    q = torch.arange(n_heads * head_dim * hidden, dtype=torch.float32).reshape(-1, hidden)
    k = torch.randn(n_heads * head_dim, hidden).to(torch.bfloat16)
    torch.save({"l.q_proj.weight": q, "l.k_proj.weight": k, "l.o_proj.weight": q},
               tmp_path / "w.pt")
    op = WeightOp("permute", r"(.*)\.(q|k)_proj\.weight", (r"\1.\2_proj.weight",),
                  view_shape=(n_heads, head_dim // 2, 2, -1), perm_spec=(0, 2, 1, 3))

    report = convert_checkpoint([tmp_path / "w.pt"], tmp_path / "out", ops=[op])

    written = read_output(tmp_path / "out")
    assert bits_equal(written["l.q_proj.weight"], rotary_permute(q, n_heads))
    assert bits_equal(written["l.k_proj.weight"], rotary_permute(k, n_heads))
    assert bits_equal(written["l.o_proj.weight"], q)
    # Row r of head h moves from 2*i + j to j*half + i: spot-check exact rows of head 0.
    assert torch.equal(written["l.q_proj.weight"][:, 0][:6], torch.tensor([0.0, 16, 32, 8, 24, 40]))
    assert report.permuted == {"l.q_proj.weight": "l.q_proj.weight",
                               "l.k_proj.weight": "l.k_proj.weight"}


def test_permute_without_view_shape_transposes(tmp_path: Path) -> None:
    w = torch.arange(6, dtype=torch.int32).reshape(2, 3)
    torch.save({"proj": w}, tmp_path / "w.pt")
    op = WeightOp("permute", r"proj", ("proj_t",), perm_spec=(1, 0))
    convert_checkpoint([tmp_path / "w.pt"], tmp_path / "out", ops=[op])
    assert bits_equal(read_output(tmp_path / "out")["proj_t"],
                      torch.tensor([[0, 3], [1, 4], [2, 5]], dtype=torch.int32))


def test_permute_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(5, 4)}, tmp_path / "w.pt")
    op = WeightOp("permute", "w", ("w",), view_shape=(3, 2, -1), perm_spec=(1, 0, 2))
    with pytest.raises(BadInput, match=r"w: cannot view shape \(5, 4\) as \(3, 2, -1\)"):
        convert_checkpoint([tmp_path / "w.pt"], tmp_path / "out", ops=[op])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kind": "merge", "source": r"(.*)\.(q|k)", "targets": ("x",), "parts": ("q", "k")},
     "group named 'part'"),
    ({"kind": "merge", "source": r"(?P<part>q|k)", "targets": ("x",), "parts": ("q",)},
     "two or more distinct parts"),
    ({"kind": "merge", "source": r"(?P<part>q|k)", "targets": ("x", "y"), "parts": ("q", "k")},
     "exactly one target"),
    ({"kind": "permute", "source": "w", "targets": ("w",), "perm_spec": (0, 2)}, "permutation"),
    ({"kind": "permute", "source": "w", "targets": ("w",)}, "permutation"),
    ({"kind": "permute", "source": "w", "targets": ("w",), "perm_spec": (1, 0),
      "view_shape": (2, 3, 4)}, "has 3 dims"),
    ({"kind": "permute", "source": "w", "targets": ("w",), "perm_spec": (1, 0),
      "view_shape": (-1, -1)}, "at most one -1"),
    ({"kind": "transpose", "source": "w", "targets": ("w",)}, "unknown weight op kind"),
])
def test_bad_ops_fail_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WeightOp(**kwargs)


def test_ops_round_trip_through_json() -> None:
    for op in (QKV_MERGE, WeightOp("permute", "w", ("w",), perm_spec=[0, 2, 1, 3],
                                   view_shape=[4, 3, 2, -1])):
        assert WeightOp(**json.loads(json.dumps(dataclasses.asdict(op)))) == op


def test_small_blocks_stream_every_layout_exactly(tmp_path: Path, monkeypatch) -> None:
    """Blocks of 64 bytes cut every tensor, merge and permute into many pieces."""
    monkeypatch.setattr(weights, "BLOCK_BYTES", 64)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(n, 8, generator=gen) for n in (11, 12, 12))  # 11: a block spans q and v
    fused = torch.randn(10, 6, generator=gen).to(torch.float16)
    plain = torch.randn(7, 5, generator=gen).to(torch.float64)
    rot = torch.randn(36, 3, generator=gen).to(torch.bfloat16)  # 6 heads of 6 rows; 6-byte rows
    torch.save({"a.q_proj.weight": q, "a.k_proj.weight": k[:5], "b.k_proj.weight": k,
                "a.v_proj.weight": v, "fused": fused, "plain": plain, "odd": torch.ones(3, 40, 1),
                "rot": rot}, tmp_path / "w.pt")
    ops = [
        WeightOp("merge", r"(.*)\.(?P<part>q|v)_proj\.weight", (r"\1.qv.weight",), parts=("q", "v")),
        WeightOp("split", "fused", ("f1", "f2"), dim=1, sizes=(1, 5)),
        WeightOp("permute", r"(.*)\.k_proj\.weight", (r"\1.k.weight",), perm_spec=(1, 0)),
        WeightOp("permute", "plain", ("plain",), view_shape=(7, 5), perm_spec=(1, 0)),
        WeightOp("permute", "rot", ("rot",), view_shape=(6, 3, 2, -1), perm_spec=(0, 2, 1, 3)),
    ]
    convert_checkpoint([tmp_path / "w.pt"], tmp_path / "out", ops=ops, max_shard_size=400)
    written = read_output(tmp_path / "out")
    assert bits_equal(written["a.qv.weight"], torch.cat([q, v]))
    assert bits_equal(written["f1"], fused[:, :1].contiguous())
    assert bits_equal(written["f2"], fused[:, 1:].contiguous())
    assert bits_equal(written["a.k.weight"], k[:5].t().contiguous())
    assert bits_equal(written["b.k.weight"], k.t().contiguous())
    assert bits_equal(written["plain"], plain.t().contiguous().reshape(7, 5))
    assert bits_equal(written["odd"], torch.ones(3, 40, 1))
    assert bits_equal(written["rot"], rotary_permute(rot, 6))  # blocks of 10 rows cut across heads


# ---------------------------------------------------------------- written format and checks


def test_written_file_is_aligned_and_loads_with_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    source = mixed_state_dict()
    torch.save(source, tmp_path / "w.pt")
    convert_checkpoint([tmp_path / "w.pt"], tmp_path / "out")
    path = tmp_path / "out" / "model.safetensors"
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert length % 8 == 0
    header = json.loads(raw[8:8 + length])
    assert header.pop("__metadata__") == {"format": "pt"}
    for name, entry in header.items():
        start, end = entry["data_offsets"]
        assert start % source[name].element_size() == 0, name  # every tensor aligned
    assert max(e["data_offsets"][1] for e in header.values()) == len(raw) - 8 - length
    loaded = load_file(str(path))
    for name, tensor in source.items():
        assert bits_equal(loaded[name], tensor), name


def test_verification_catches_a_corrupted_write(tmp_path: Path, monkeypatch) -> None:
    torch.save({"w": torch.zeros(16), "v": torch.ones(4)}, tmp_path / "w.pt")
    write = weights._write_tensor

    def write_then_flip_last_byte(fd, name, out, mappings, end):
        write(fd, name, out, mappings, end)
        last = int(list(out.blocks())[-1][-1])
        os.pwrite(fd, bytes([last ^ 1]), end - 1)

    monkeypatch.setattr(weights, "_write_tensor", write_then_flip_last_byte)
    with pytest.raises(RuntimeError, match="verification failed: '.' differs from its source"):
        convert_checkpoint([tmp_path / "w.pt"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_tensor_that_does_not_fill_its_place_in_the_file_is_refused(tmp_path: Path) -> None:
    """Bytes are compared as soon as they are written, so a tensor must end exactly where the
    header says: the writer never goes back over bytes already compared."""
    out = weights._Out.of(torch.arange(10, dtype=torch.int32))
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        weights._write_tensor(fd, "t", out, weights._Mappings(), end=40)
        with pytest.raises(RuntimeError, match="'t': its 40 bytes do not end at byte 81 of the file"):
            weights._write_tensor(fd, "t", out, weights._Mappings(), end=81)
    finally:
        os.close(fd)


def test_verification_catches_a_header_changed_after_the_tensors_were_compared(tmp_path: Path,
                                                                           monkeypatch) -> None:
    torch.save({"w": torch.zeros(2, 8)}, tmp_path / "w.pt")
    check_file = weights._ShardVerifier.check_file

    def reshape_then_check(self, path, header):
        # In place, at the same length: the file stays mapped while its comparisons may still
        # run, and truncating a mapped file would end the process with SIGBUS.
        at = path.read_bytes().index(b'"shape":[2,8]')
        with open(path, "r+b") as f:
            f.seek(at)
            f.write(b'"shape":[8,2]')
        check_file(self, path, header)

    monkeypatch.setattr(weights._ShardVerifier, "check_file", reshape_then_check)
    with pytest.raises(RuntimeError, match="verification failed: the header of .* differs"):
        convert_checkpoint([tmp_path / "w.pt"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_without_copy_file_range_the_bytes_are_written(tmp_path: Path, monkeypatch) -> None:
    def unsupported(*args, **kwargs):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "copy_file_range", unsupported, raising=False)
    source = {"a": torch.randn(64, 3), "b": torch.arange(10)}
    torch.save(source, tmp_path / "pytorch_model.bin")
    convert_checkpoint([tmp_path / "pytorch_model.bin"], tmp_path / "out")
    written = read_output(tmp_path / "out")
    assert all(bits_equal(written[n], t) for n, t in source.items())


def test_dropping_mapped_pages_keeps_the_data(tmp_path: Path) -> None:
    source = torch.randn(256, 1024)  # 1 MiB
    torch.save({"w": source}, tmp_path / "pytorch_model.bin")
    mappings = weights._Mappings()
    [(_, tensor)] = list(weights._read([tmp_path / "pytorch_model.bin"], mappings))
    if weights._MADVISE is None:
        pytest.skip("page tracking is Linux only")
    assert [r.path for r in mappings.regions] == [os.path.realpath(tmp_path / "pytorch_model.bin")]
    assert bits_equal(tensor, source)
    mappings.release()
    assert bits_equal(tensor, source)  # faulted back in from the file
    mappings.close()
    assert mappings.regions == []


# ---------------------------------------------------------------- truncated and corrupt files


def truncate_to_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors"])
def test_truncated_file_is_bad_input_and_nothing_written(tmp_path: Path, fmt: str) -> None:
    repo, out = tmp_path / "repo", tmp_path / "out"
    repo.mkdir()
    state = {f"w{i}": torch.randn(32, 32) for i in range(4)}
    if fmt == "safetensors":
        path = repo / "model.safetensors"
        save_file(state, str(path))
    else:
        path = repo / "pytorch_model.bin"
        torch.save(state, path, _use_new_zipfile_serialization=fmt == "zip")
    truncate_to_half(path)

    with pytest.raises(BadInput, match=rf"{path.name}: cannot read .*truncated or corrupt"):
        convert_checkpoint(find_weight_files(repo), out)
    assert not out.exists()


def test_corrupt_safetensors_header_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(4)}, str(path))
    data = bytearray(path.read_bytes())
    data[8:12] = b"!!!!"  # the JSON header is no longer JSON
    path.write_bytes(bytes(data))
    with pytest.raises(BadInput, match="model.safetensors: cannot read safetensors file"):
        convert_checkpoint([path], tmp_path / "out")


def test_failed_conversion_keeps_an_existing_output_dir(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("mine")
    (tmp_path / "pytorch_model.bin").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(BadInput, match="pytorch_model.bin"):
        convert_checkpoint([tmp_path / "pytorch_model.bin"], out)
    assert sorted(p.name for p in out.iterdir()) == ["README.md"]
