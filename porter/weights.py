"""Streaming, exact conversion of a legacy checkpoint to safetensors.

A legacy repo ships its weights as pickled ``pytorch_model.bin`` files (possibly
sharded), a bare ``*.pt``/``*.ckpt``/``*.pth``, or already as safetensors. This
module finds those files, streams their tensors one at a time, applies the layout
changes implied by a code port (renames, splits of fused weights), drops declared
tied duplicates and writes Hub-style safetensors shards. Every written tensor is
then reloaded and compared bit for bit with its source, so a finished conversion
is known to be exact.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from porter.errors import BadInput

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
PICKLE_SUFFIXES = (".pt", ".ckpt", ".pth")
METADATA = {"format": "pt"}

# Names this module writes into an output directory; anything else there is left alone.
_OUTPUT_NAME = re.compile(
    r"model\.safetensors|model-\d{5}-of-\d{5}\.safetensors|model\.safetensors\.index\.json"
)
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*", re.IGNORECASE)
_UNITS = {
    "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class WeightOp:
    """A layout change implied by a code change, applied to matching tensor names.

    ``source`` is a regex that must match a whole tensor name; ``targets`` are
    replacement templates (``\\1``, ``\\g<name>``): one for a rename, N for a split.
    """

    kind: str
    source: str
    targets: tuple[str, ...]
    dim: int = 0
    sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("rename", "split"):
            raise ValueError(f"unknown weight op kind {self.kind!r}")
        if self.kind == "rename" and len(self.targets) != 1:
            raise ValueError(f"rename op {self.source!r} needs exactly one target")
        if self.kind == "split":
            if len(self.targets) < 2:
                raise ValueError(f"split op {self.source!r} needs at least two targets")
            if self.sizes is not None and len(self.sizes) != len(self.targets):
                raise ValueError(f"split op {self.source!r}: {len(self.sizes)} sizes for "
                                 f"{len(self.targets)} targets")
        re.compile(self.source)  # fail at construction, not halfway through a conversion


@dataclass
class ConversionReport:
    """What a conversion read, wrote and changed."""

    source_files: list[str]
    output_files: list[str]
    tensors: int
    bytes: int
    dropped_duplicates: dict[str, str] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)
    split: dict[str, list[str]] = field(default_factory=dict)
    verified: bool = False

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- finding weights


def find_weight_files(repo_dir: Path) -> list[Path]:
    """Return the checkpoint files of a repo, in load order (empty if it has none).

    Safetensors are preferred over pickles when both exist. Sharded checkpoints
    are read through their index; every file must exist and stay inside the repo.
    """
    repo_dir = Path(repo_dir)
    if not repo_dir.is_dir():
        raise BadInput.at(repo_dir, "not a directory")
    for index_name, single_name, shard_glob in (
        (SAFE_INDEX, SAFE_SINGLE, "model-*-of-*.safetensors"),
        (BIN_INDEX, BIN_SINGLE, "pytorch_model-*-of-*.bin"),
    ):
        if _present(repo_dir / index_name):
            return _files_from_index(repo_dir, repo_dir / index_name)
        if _present(repo_dir / single_name):
            return [_checked_file(repo_dir, single_name)]
        strays = sorted(p.name for p in repo_dir.glob(shard_glob))
        if strays:
            raise BadInput.at(repo_dir, f"sharded weights {strays[0]}... without {index_name}")
    candidates = sorted(p.name for p in repo_dir.iterdir()
                        if p.suffix in PICKLE_SUFFIXES and (p.is_file() or p.is_symlink()))
    if len(candidates) > 1:
        raise BadInput.at(repo_dir, f"several candidate checkpoints, cannot tell which: "
                                    f"{', '.join(candidates)}")
    return [_checked_file(repo_dir, name) for name in candidates]


def _present(path: Path) -> bool:
    # A dangling symlink still counts: it must be reported, not silently skipped.
    return path.exists() or path.is_symlink()


def _files_from_index(repo_dir: Path, index_path: Path) -> list[Path]:
    """Shard files named by a Hub index's weight_map, sorted and de-duplicated."""
    _checked_file(repo_dir, index_path.name)
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BadInput.at(index_path, f"unreadable index ({e})") from e
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise BadInput.at(index_path, "weight_map must map tensor names to file names")
    return [_checked_file(repo_dir, name, index_path) for name in sorted(set(weight_map.values()))]


def _checked_file(repo_dir: Path, name: str, named_in: Path | None = None) -> Path:
    """Resolve ``name`` under ``repo_dir``, refusing escapes and missing files."""
    where = named_in or repo_dir
    if (not name or PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute()
            or ".." in PurePosixPath(name.replace("\\", "/")).parts):
        raise BadInput.at(where, f"weight file {name!r} points outside the repo")
    path = repo_dir / name
    try:
        target, root = path.resolve(), repo_dir.resolve()
    except (OSError, RuntimeError) as e:  # symlink loops
        raise BadInput.at(where, f"weight file {name!r} cannot be resolved ({e})") from e
    if not target.is_relative_to(root):
        raise BadInput.at(where, f"weight file {name!r} resolves outside the repo (to {target})")
    if not path.is_file():
        raise BadInput.at(where, f"weight file {name!r} is missing")
    return path


# ---------------------------------------------------------------- reading weights


def iter_source_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` from each file in turn, never loading data eagerly.

    Pickles are loaded with ``weights_only=True`` (no code execution) and memory
    mapped; safetensors are read through ``safe_open``. Non-tensor entries are
    skipped. Unreadable or unsafe files raise ``BadInput`` naming the file.
    """
    for path in files:
        path = Path(path)
        if path.suffix == ".safetensors":
            yield from _iter_safetensors(path)
        else:
            yield from _iter_pickle(path)


def _iter_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            # offset_keys() is storage order (the writer's order); keys() is sorted.
            names = f.offset_keys() if hasattr(f, "offset_keys") else f.keys()
            for name in names:
                yield name, _read_safetensor(f, path, name)
    except BadInput:
        raise
    except Exception as e:  # safetensors raises its own SafetensorError, OSError, ...
        raise BadInput.at(path, f"cannot read safetensors file ({e})") from e


def _read_safetensor(handle, path: Path, name: str) -> torch.Tensor:
    try:
        return handle.get_tensor(name)
    except Exception as e:
        raise BadInput.at(path, f"cannot read tensor {name!r} ({e})") from e


def _iter_pickle(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    state = _unwrap_state_dict(path, _load_pickle(path))
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            yield str(name), value


def _load_pickle(path: Path) -> object:
    # mmap needs the zip format; legacy (pre-1.6) pickles must be read into memory.
    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as e:
        raise BadInput.at(path, "refused to load: the pickle contains objects other than "
                                f"tensors ({_refusal_reason(e)})") from e
    except Exception as e:
        raise BadInput.at(path, f"cannot read checkpoint ({type(e).__name__}: {e})") from e


def _refusal_reason(error: Exception) -> str:
    """The one informative line of torch's long weights_only error message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines[1:] if not line.startswith("Check the documentation")]
    reason = useful[0] if useful else (lines[0] if lines else type(error).__name__)
    return reason[:200]


def _unwrap_state_dict(path: Path, obj: object) -> Mapping:
    """Dig the state dict out of training checkpoints ({"state_dict": ...}, {"model": ...})."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)),
                     None)
        if inner is None:
            return obj
        obj = inner
    raise BadInput.at(path, f"expected a dict of tensors, found {type(obj).__name__}")


# ---------------------------------------------------------------- size parsing


def parse_shard_size(size: int | str) -> int:
    """Bytes in ``size``: an int, or "5GB"/"500MB"/"10KB" (decimal) or "2GiB" (binary)."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    elif isinstance(size, str):
        match = _SIZE.fullmatch(size)
        if not match:
            raise ValueError(f"invalid shard size {size!r}; use e.g. 5GB, 500MB or 2GiB")
        value = int(float(match[1]) * _UNITS[(match[2] or "b").lower()])
    else:
        raise TypeError(f"shard size must be an int or a string, got {size!r}")
    if value <= 0:
        raise ValueError(f"shard size must be positive, got {size!r}")
    return value


# ---------------------------------------------------------------- ops


def _apply_ops(name: str, tensor: torch.Tensor, ops: Iterable[WeightOp],
               report: ConversionReport | None = None) -> list[tuple[str, torch.Tensor]]:
    """The output tensors one source tensor becomes; the first matching op wins."""
    for op in ops:
        match = re.fullmatch(op.source, name)
        if match is None:
            continue
        targets = [match.expand(t) for t in op.targets]
        if op.kind == "rename":
            if report is not None:
                report.renamed[name] = targets[0]
            return [(targets[0], tensor)]
        parts = _split(name, tensor, op)
        if report is not None:
            report.split[name] = targets
        return list(zip(targets, parts, strict=True))
    return [(name, tensor)]


def _split(name: str, tensor: torch.Tensor, op: WeightOp) -> list[torch.Tensor]:
    if tensor.dim() == 0 or not -tensor.dim() <= op.dim < tensor.dim():
        raise BadInput(f"{name}: cannot split along dim {op.dim} of shape {tuple(tensor.shape)}")
    length, parts = tensor.shape[op.dim], len(op.targets)
    if op.sizes is None:
        if length % parts:
            raise BadInput(f"{name}: dim {op.dim} of size {length} does not split into "
                           f"{parts} equal parts")
        sizes = [length // parts] * parts
    else:
        sizes = list(op.sizes)
        if sum(sizes) != length:
            raise BadInput(f"{name}: split sizes {sizes} do not add up to {length}")
    return [part.contiguous() for part in torch.split(tensor, sizes, dim=op.dim)]


# ---------------------------------------------------------------- comparison


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def _identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes; unlike torch.equal this also tells NaNs and -0.0 apart."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    try:
        return torch.equal(_bits(a), _bits(b))
    except RuntimeError:  # dtypes that cannot be viewed as bytes
        return torch.equal(a, b)


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


# ---------------------------------------------------------------- writing


class _ShardWriter:
    """Accumulates tensors into shards no larger than ``max_bytes`` and writes them.

    Shards go to temporary names first; ``commit`` gives them their Hub names once
    the number of shards is known, so a failed run never leaves a half checkpoint.
    """

    def __init__(self, out_dir: Path, max_bytes: int):
        self.out_dir = out_dir
        self.max_bytes = max_bytes
        self.current: dict[str, torch.Tensor] = {}
        self.current_bytes = 0
        self.temp_files: list[Path] = []
        self.shard_of: dict[str, int] = {}  # tensor name -> shard number (0-based)
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if tensor.layout != torch.strided:
            raise BadInput(f"{name}: {tensor.layout} tensors cannot be stored in safetensors")
        size = _tensor_bytes(tensor)
        # Like the Hub: start a new shard when this tensor would overflow a non-empty one;
        # a tensor larger than the limit gets a shard of its own.
        if self.current and self.current_bytes + size > self.max_bytes:
            self.flush()
        self.current[name] = self._materialise(tensor)
        self.current_bytes += size
        self.total_bytes += size
        self.shard_of[name] = len(self.temp_files)

    def _materialise(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().contiguous()
        # safetensors refuses tensors sharing storage within one file, so a tensor that
        # aliases one already in this shard (untied shared weights, split parts) is copied.
        storage = tensor.untyped_storage().data_ptr()
        if storage and any(kept.untyped_storage().data_ptr() == storage
                           for kept in self.current.values()):
            tensor = tensor.clone()
        return tensor

    def flush(self) -> None:
        if not self.current:
            return
        path = self.out_dir / f".model-partial-{len(self.temp_files):05d}.safetensors"
        self.temp_files.append(path)
        save_file(self.current, str(path), metadata=METADATA)
        self.current, self.current_bytes = {}, 0

    def final_names(self) -> list[str]:
        count = len(self.temp_files)
        if count == 1:
            return [SAFE_SINGLE]
        return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]

    def commit(self) -> list[Path]:
        """Replace any previous output in out_dir with the new shards (and index)."""
        names = self.final_names()
        for stale in self.out_dir.iterdir():
            if _OUTPUT_NAME.fullmatch(stale.name):
                stale.unlink()
        finals = [self.out_dir / name for name in names]
        for temp, final in zip(self.temp_files, finals, strict=True):
            os.replace(temp, final)
        self.temp_files = []
        if len(finals) > 1:
            index = {
                "metadata": {"total_size": self.total_bytes},
                "weight_map": {n: names[i] for n, i in self.shard_of.items()},
            }
            (self.out_dir / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n",
                                                   encoding="utf-8")
        return finals

    def discard(self) -> None:
        for temp in self.temp_files:
            temp.unlink(missing_ok=True)
        self.temp_files = []


# ---------------------------------------------------------------- conversion


class _TiedFilter:
    """Drops declared tied targets that are bit-identical to their source.

    Names are output names (after ops). A target seen before its source is held
    back (a reference only: mmap'd pickles cost no RAM) until the source arrives.
    Sources are remembered the same way so a later target can be compared.
    """

    def __init__(self, tied: Mapping[str, str], report: ConversionReport):
        chained = sorted(set(tied) & set(tied.values()))
        if chained:
            raise BadInput(f"tied weights: {chained[0]!r} is both a tied target and a source")
        self.tied = dict(tied)
        self.report = report
        self.sources: dict[str, torch.Tensor] = {}
        self.waiting: dict[str, torch.Tensor] = {}

    def feed(self, name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """Tensors to write now, given the next output tensor."""
        source = self.tied.get(name)
        if source is not None:
            if source not in self.sources:
                self.waiting[name] = tensor
                return []
            return self._keep_unless_identical(name, tensor, self.sources[source])
        out = [(name, tensor)]
        if name in self.tied.values():
            self.sources[name] = tensor
            for target in [t for t, s in self.tied.items() if s == name and t in self.waiting]:
                out += self._keep_unless_identical(target, self.waiting.pop(target), tensor)
        return out

    def _keep_unless_identical(self, target: str, tensor: torch.Tensor,
                               source: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        if _identical(tensor, source):
            self.report.dropped_duplicates[target] = self.tied[target]
            return []
        return [(target, tensor)]

    def leftovers(self) -> list[tuple[str, torch.Tensor]]:
        """Targets whose source never appeared: they are real weights and are kept."""
        out, self.waiting = list(self.waiting.items()), {}
        return out


def convert_checkpoint(
    files: list[Path],
    out_dir: Path,
    *,
    ops: Iterable[WeightOp] = (),
    tied: dict[str, str] | None = None,
    max_shard_size: int | str = "50GB",
    progress: Callable[[int, int], None] | None = None,
) -> ConversionReport:
    """Convert ``files`` to Hub-style safetensors in ``out_dir`` and verify the result.

    Tensors keep dtype, values and source order; ``ops`` rename/split matching
    names; ``tied`` (target -> source, output names) drops identical duplicates.
    At most one shard of tensors is held in memory. Raises ``BadInput`` for bad
    input and ``RuntimeError`` if the written files do not match the source.
    """
    files = [Path(f) for f in files]
    if not files:
        raise BadInput("no weight files to convert")
    out_dir = Path(out_dir)
    _refuse_overwriting_sources(files, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ops = list(ops)
    report = ConversionReport(source_files=[str(f) for f in files], output_files=[],
                              tensors=0, bytes=0)
    writer = _ShardWriter(out_dir, parse_shard_size(max_shard_size))
    try:
        _write_all(files, ops, _TiedFilter(tied or {}, report), writer, report, progress)
        if not writer.shard_of:
            raise BadInput.at(files[0], "the checkpoint contains no tensors")
        weight_map = {n: writer.temp_files[i] for n, i in writer.shard_of.items()}
        _verify(files, ops, set(report.dropped_duplicates), weight_map)
        finals = writer.commit()
    finally:
        writer.discard()
    report.output_files = [str(p) for p in finals]
    report.tensors = len(writer.shard_of)
    report.bytes = writer.total_bytes
    report.verified = True
    return report


def _refuse_overwriting_sources(files: list[Path], out_dir: Path) -> None:
    # Writing model.safetensors over a source that is still being read (mmap) would corrupt it.
    out = out_dir.resolve()
    for f in files:
        if f.resolve().parent == out and _OUTPUT_NAME.fullmatch(f.name):
            raise BadInput.at(f, f"output directory {out_dir} would overwrite this source file")


def _write_all(files: list[Path], ops: list[WeightOp], tied: _TiedFilter, writer: _ShardWriter,
               report: ConversionReport, progress: Callable[[int, int], None] | None) -> None:
    """Stream every source tensor through ops and the tied filter into the writer."""
    total = _count_tensors(files)
    origin: dict[str, str] = {}  # output name -> source name, for duplicate messages
    for done, (source_name, tensor) in enumerate(iter_source_tensors(files), start=1):
        for name, out in _apply_ops(source_name, tensor, ops, report):
            if name in origin:
                raise BadInput(f"two tensors would be written as {name!r}: from "
                               f"{origin[name]!r} and {source_name!r}")
            origin[name] = source_name
            for keep_name, keep in tied.feed(name, out):
                writer.add(keep_name, keep)
        if progress is not None:
            progress(done, total)
    for keep_name, keep in tied.leftovers():
        writer.add(keep_name, keep)
    writer.flush()


def _count_tensors(files: list[Path]) -> int:
    """Number of source tensors when cheap to know (safetensors headers), else 0."""
    if not all(f.suffix == ".safetensors" for f in files):
        return 0
    try:
        total = 0
        for f in files:
            with safe_open(str(f), framework="pt") as handle:
                total += len(handle.keys())
        return total
    except (OSError, SafetensorError):  # the real read reports unreadable files with a proper message
        return 0


def _verify(files: list[Path], ops: list[WeightOp], dropped: set[str],
            weight_map: Mapping[str, Path]) -> None:
    """Reload every written tensor and compare it bit for bit with the source after ops."""
    with ExitStack() as stack:
        handles = {path: stack.enter_context(safe_open(str(path), framework="pt"))
                   for path in dict.fromkeys(weight_map.values())}
        _check_written_names(handles, weight_map)
        unchecked = set(weight_map)
        for source_name, tensor in iter_source_tensors(files):
            for name, expected in _apply_ops(source_name, tensor, ops):
                if name in dropped:
                    continue
                if name not in unchecked:
                    raise RuntimeError(f"verification failed: {name!r} was not written")
                if not _identical(handles[weight_map[name]].get_tensor(name), expected):
                    raise RuntimeError(f"verification failed: {name!r} differs from its source")
                unchecked.discard(name)
        if unchecked:
            raise RuntimeError(f"verification failed: {min(unchecked)!r} has no source tensor")


def _check_written_names(handles: Mapping[Path, Any], weight_map: Mapping[str, Path]) -> None:
    """The files hold exactly the tensors the weight map assigns them, with our metadata."""
    written: dict[str, Path] = {}
    for path, handle in handles.items():
        if handle.metadata() != METADATA:
            raise RuntimeError(f"verification failed: {path.name} lacks format metadata")
        written.update(dict.fromkeys(handle.keys(), path))
    mismatched = sorted(set(written) ^ set(weight_map))
    if mismatched:
        name = mismatched[0]
        state = "unexpected" if name in written else "missing"
        raise RuntimeError(f"verification failed: tensor {name!r} is {state} in the output")
    misplaced = [name for name, path in written.items() if weight_map[name] != path]
    if misplaced:
        raise RuntimeError(f"verification failed: tensor {misplaced[0]!r} is in the wrong shard")


# ---------------------------------------------------------------- reading output


def load_state_dict_keys(out_dir: Path) -> list[str]:
    """Tensor names in a written checkpoint, through its index or its single file."""
    out_dir = Path(out_dir)
    index = out_dir / SAFE_INDEX
    if index.is_file():
        try:
            return list(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
        except (ValueError, KeyError, TypeError) as e:
            raise BadInput.at(index, f"unreadable index ({e})") from e
    single = out_dir / SAFE_SINGLE
    if not single.is_file():
        raise BadInput.at(out_dir, "no safetensors checkpoint found")
    with safe_open(str(single), framework="pt") as f:
        return list(f.offset_keys() if hasattr(f, "offset_keys") else f.keys())
