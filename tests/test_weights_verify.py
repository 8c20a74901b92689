"""Verification of converted weights: each tensor read back from its file and compared as
soon as its bytes are written, in worker threads while the next tensor is written, and each
finished file reopened (porter.weights._ShardVerifier)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch

import porter.weights as weights
from porter.weights import WeightOp, convert_checkpoint

# Five tensors of 2 KiB: with 4 KiB shards, three shards (big.0 and big.1, big.2 and big.3, big.4).
SHARD_BYTES = 4096


def checkpoint(path: Path) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    state = {f"big.{i}": torch.randn(64, 8, generator=gen) for i in range(5)}
    torch.save(state, path)
    return state


@pytest.fixture
def small_pieces(monkeypatch) -> None:
    """Blocks of 64 bytes compared one per task: every tensor is cut into 32 pieces."""
    monkeypatch.setattr(weights, "BLOCK_BYTES", 64)
    monkeypatch.setattr(weights, "CHUNK_BLOCKS", 1)


def record_events(monkeypatch, corrupt: tuple[str, float] | None = None) -> list[str]:
    """Log each tensor written, each tensor piece compared and each file reopened, in the
    order they happen; optionally flip a bit of one tensor right after it is written,
    ``position`` of the way into its bytes."""
    events: list[str] = []
    write, compare, check_file = weights._write_tensor, weights._compare, weights._ShardVerifier.check_file

    def logged_write(fd, name, out, mappings, end):
        write(fd, name, out, mappings, end)
        if corrupt is not None and corrupt[0] == name:
            at = end - out.nbytes + int(out.nbytes * corrupt[1])
            byte = int(torch.cat(list(out.blocks()))[at - (end - out.nbytes)])
            os.pwrite(fd, bytes([byte ^ 1]), at)
        events.append(f"write {name}")

    def logged_compare(name, written, source, mappings):
        compare(name, written, source, mappings)
        events.append(f"compare {name}")

    def logged_check_file(self, path, header):
        check_file(self, path, header)
        events.append("file")

    monkeypatch.setattr(weights, "_write_tensor", logged_write)
    monkeypatch.setattr(weights, "_compare", logged_compare)
    monkeypatch.setattr(weights._ShardVerifier, "check_file", logged_check_file)
    return events


def test_each_tensor_is_compared_once_written_before_the_next(tmp_path: Path, monkeypatch,
                                                              small_pieces) -> None:
    monkeypatch.setattr(weights, "VERIFY_THREADS", 1)  # comparisons in the writing thread
    checkpoint(tmp_path / "w.pt")
    events = record_events(monkeypatch)
    report = convert_checkpoint([tmp_path / "w.pt"], tmp_path / "out", max_shard_size=SHARD_BYTES)
    assert report.verified and len(report.output_files) == 3
    expected = []
    for shard in (["big.0", "big.1"], ["big.2", "big.3"], ["big.4"]):
        for name in shard:  # 2 KiB in pieces of 64 bytes
            expected += [f"write {name}", *[f"compare {name}"] * 32]
        expected.append("file")
    assert events == expected


def test_threaded_verification_compares_every_piece(tmp_path: Path, monkeypatch,
                                                    small_pieces) -> None:
    monkeypatch.setattr(weights, "VERIFY_THREADS", 3)
    state = checkpoint(tmp_path / "w.pt")
    events = record_events(monkeypatch)
    report = convert_checkpoint([tmp_path / "w.pt"], tmp_path / "out", max_shard_size=SHARD_BYTES)
    assert report.verified
    assert sorted(e for e in events if e.startswith("compare")) == [
        f"compare {name}" for name in sorted(state) for _ in range(32)]
    assert events.count("file") == 3


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize(("name", "position"), [("big.0", 0.0), ("big.1", 0.5), ("big.4", 0.999)])
def test_a_flipped_bit_in_any_tensor_fails_the_conversion(tmp_path: Path, monkeypatch, small_pieces,
                                                          threads: int, name: str, position: float) -> None:
    monkeypatch.setattr(weights, "VERIFY_THREADS", threads)
    checkpoint(tmp_path / "w.pt")
    events = record_events(monkeypatch, corrupt=(name, position))
    with pytest.raises(RuntimeError, match=rf"verification failed: '{name}' differs from its source"):
        convert_checkpoint([tmp_path / "w.pt"], tmp_path / "out", max_shard_size=SHARD_BYTES)
    assert not (tmp_path / "out").exists()  # temporary shards removed, nothing committed
    if threads == 1 and name == "big.0":
        assert [e for e in events if e.startswith("write")] == ["write big.0"]  # stopped at once


class CountingLock:
    """A re-entrant lock that records how many threads held it at once, and how often."""

    def __init__(self) -> None:
        self.lock, self.guard = threading.RLock(), threading.Lock()
        self.depth: dict[int, int] = {}
        self.holders = self.most = self.holds = 0

    def __enter__(self):
        self.lock.__enter__()
        with self.guard:
            me = threading.get_ident()
            self.depth[me] = self.depth.get(me, 0) + 1
            if self.depth[me] == 1:
                self.holders += 1
                self.holds += 1
                self.most = max(self.most, self.holders)

    def __exit__(self, *exc):
        with self.guard:
            me = threading.get_ident()
            self.depth[me] -= 1
            if self.depth[me] == 0:
                self.holders -= 1
        return self.lock.__exit__(*exc)


def test_whole_tensors_are_built_one_at_a_time_across_threads(tmp_path: Path, monkeypatch) -> None:
    """Permutes that move the leading dimension build the whole tensor; the writing thread
    and the verification threads must never hold two of them at once (memory)."""
    monkeypatch.setattr(weights, "VERIFY_THREADS", 3)
    lock = CountingLock()
    monkeypatch.setattr(weights, "_WHOLE_TENSOR", lock)
    gen = torch.Generator().manual_seed(4)
    state = {f"w.{i}": torch.randn(32, 16, generator=gen) for i in range(12)}
    torch.save(state, tmp_path / "w.pt")
    ops = [WeightOp("permute", r"w\.(\d+)", (r"t.\1",), view_shape=(32, 16), perm_spec=(1, 0))]
    report = convert_checkpoint([tmp_path / "w.pt"], tmp_path / "out", ops=ops, max_shard_size=4096)
    assert report.verified and len(report.permuted) == 12
    assert lock.holds == 24  # each tensor built once to be written, once to be compared
    assert lock.most == 1
