"""Streaming, exact conversion of a legacy checkpoint to safetensors.

A legacy repo ships its weights as pickled ``pytorch_model.bin`` files (possibly
sharded), a bare ``*.pt``/``*.ckpt``/``*.pth``, or already as safetensors. This
module finds those files, streams their tensors, applies the layout changes implied
by a code port (renames, splits of fused weights, merges, permutations), drops
declared tied duplicates and writes Hub-style safetensors shards. Every tensor is read
back from its file as soon as its bytes are written and compared bit for bit with its
source (in worker threads, while the next tensor is written), and every finished file is
reopened with safetensors and its header checked, so a finished conversion is known to be
exact.

Memory: sources are memory-mapped (``torch.load(..., mmap=True)``, ``safe_open``), so
a tensor is a reference to pages of a file until its bytes are used. Writing and
comparing go through a tensor a block of rows at a time (``BLOCK_BYTES``), and the
pages already used are dropped from the process again (see ``_Mappings``), so the
resident set stays near one block whatever the size of the checkpoint or its shards.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import os
import pickle
import re
import struct
import sys
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from porter.errors import BadInput

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
MAX_INDEX_BYTES = 100_000_000  # an index names tensors and files; this is far beyond any real one
PICKLE_SUFFIXES = (".pt", ".ckpt", ".pth")
METADATA = {"format": "pt"}
OP_KINDS = ("rename", "split", "merge", "permute")
# Bytes of one tensor handled at a time when writing or comparing (at least one row).
BLOCK_BYTES = 16 * 2**20
# Bytes of one tensor compared by one verification task (a whole number of blocks).
CHUNK_BLOCKS = 4


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# Threads that compare written shards with their sources. torch.equal and the page faults
# of mapped files run without the GIL, so the comparison spreads over the cores.
VERIFY_THREADS = min(4, _usable_cpus())

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
# safetensors dtype names; those this torch lacks are left out.
_ST_DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, attr) for name, attr in (
        ("F64", "float64"), ("F32", "float32"), ("F16", "float16"), ("BF16", "bfloat16"),
        ("I64", "int64"), ("I32", "int32"), ("I16", "int16"), ("I8", "int8"),
        ("U64", "uint64"), ("U32", "uint32"), ("U16", "uint16"), ("U8", "uint8"),
        ("BOOL", "bool"), ("C64", "complex64"),
        ("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"),
        ("F8_E4M3FNUZ", "float8_e4m3fnuz"), ("F8_E5M2FNUZ", "float8_e5m2fnuz"),
    ) if hasattr(torch, attr)
}
_ST_NAMES = {dtype: name for name, dtype in _ST_DTYPES.items()}


# --------------------------------------------------------------------------- data


def _int_tuple(value: Iterable[int] | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    out = tuple(value)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in out):
        raise ValueError(f"expected integers, got {out!r}")
    return out


@dataclass(frozen=True)
class WeightOp:
    """A layout change implied by a code change, applied to matching tensor names.

    ``source`` is a regex that must match a whole tensor name; ``targets`` are
    replacement templates (``\\1``, ``\\g<name>``) expanded from that match:

    - ``rename``: one target.
    - ``split``: N targets; the tensor is cut along ``dim`` into N equal parts, or into
      ``sizes``.
    - ``merge``: one target; ``source`` has a group named ``part`` and ``parts`` lists its
      values in concatenation order. The matching tensors that expand to the same target
      are concatenated along ``dim`` once all parts have been read.
    - ``permute``: one target; the tensor is reshaped to ``view_shape`` (optional, one
      entry may be -1), its dimensions reordered by ``perm_spec`` (as ``tensor.permute``)
      and, when a ``view_shape`` was given, reshaped back to its own shape (a 2-D weight
      stays 2-D, e.g. rows reordered for a rotary layout). Without ``view_shape`` the
      output has the permuted shape (``perm_spec=(1, 0)`` transposes).

    All fields are strings and integers, so an op is JSON-able.
    """

    kind: str
    source: str
    targets: tuple[str, ...]
    dim: int = 0
    sizes: tuple[int, ...] | None = None
    parts: tuple[str, ...] | None = None
    perm_spec: tuple[int, ...] | None = None
    view_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        # Accept lists (e.g. from JSON) but store tuples, so ops stay hashable.
        set_ = object.__setattr__
        set_(self, "targets", (self.targets,) if isinstance(self.targets, str) else tuple(self.targets))
        set_(self, "sizes", _int_tuple(self.sizes))
        set_(self, "perm_spec", _int_tuple(self.perm_spec))
        set_(self, "view_shape", _int_tuple(self.view_shape))
        if self.parts is not None:
            set_(self, "parts", (self.parts,) if isinstance(self.parts, str) else tuple(self.parts))
        if self.kind not in OP_KINDS:
            raise ValueError(f"unknown weight op kind {self.kind!r}")
        pattern = re.compile(self.source)  # fail at construction, not halfway through a conversion
        if self.kind != "split" and len(self.targets) != 1:
            raise ValueError(f"{self.kind} op {self.source!r} needs exactly one target")
        if self.kind == "split":
            if len(self.targets) < 2:
                raise ValueError(f"split op {self.source!r} needs at least two targets")
            if self.sizes is not None and len(self.sizes) != len(self.targets):
                raise ValueError(f"split op {self.source!r}: {len(self.sizes)} sizes for "
                                 f"{len(self.targets)} targets")
        if self.kind == "merge":
            if "part" not in pattern.groupindex:
                raise ValueError(f"merge op {self.source!r} needs a group named 'part', "
                                 r"e.g. (?P<part>q|k|v)")
            if self.parts is None or len(self.parts) < 2 or len(set(self.parts)) != len(self.parts):
                raise ValueError(f"merge op {self.source!r} needs two or more distinct parts")
        if self.kind == "permute":
            self._check_permutation()

    def _check_permutation(self) -> None:
        perm, view = self.perm_spec, self.view_shape
        if perm is None or sorted(perm) != list(range(len(perm))):
            raise ValueError(f"permute op {self.source!r}: perm_spec must be a permutation of "
                             f"0..n-1, got {perm!r}")
        if view is not None:
            if len(view) != len(perm):
                raise ValueError(f"permute op {self.source!r}: view_shape {view!r} has "
                                 f"{len(view)} dims, perm_spec {len(perm)}")
            if view.count(-1) > 1 or any(v < 1 and v != -1 for v in view):
                raise ValueError(f"permute op {self.source!r}: view_shape {view!r} needs "
                                 "positive sizes and at most one -1")


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
    merged: dict[str, list[str]] = field(default_factory=dict)
    permuted: dict[str, str] = field(default_factory=dict)

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
    if index_path.stat().st_size > MAX_INDEX_BYTES:  # read whole: refuse before reading
        raise BadInput.at(index_path, f"larger than {MAX_INDEX_BYTES} bytes: not a checkpoint index")
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
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
    skipped. Unreadable, truncated or unsafe files raise ``BadInput`` naming the file.
    """
    yield from _read(files, None)


def _read(files: Iterable[Path], mappings: _Mappings | None) -> Iterator[tuple[str, torch.Tensor]]:
    """iter_source_tensors, registering the files' memory maps with ``mappings``."""
    for path in files:
        path = Path(path)
        if path.suffix == ".safetensors":
            yield from _iter_safetensors(path, mappings)
        else:
            yield from _iter_pickle(path, mappings)


def _iter_safetensors(path: Path, mappings: _Mappings | None) -> Iterator[tuple[str, torch.Tensor]]:
    try:
        # Opening validates the header: a truncated file fails here ("file not fully covered").
        with safe_open(str(path), framework="pt") as f:
            # offset_keys() is storage order (the writer's order); keys() is sorted.
            names = f.offset_keys() if hasattr(f, "offset_keys") else f.keys()
            for name in names:
                tensor = _read_safetensor(f, path, name)
                if mappings is not None and sys.byteorder == "little":
                    mappings.track(path, tensor)
                yield name, tensor
    except BadInput:
        raise
    except Exception as e:  # safetensors raises its own SafetensorError, OSError, ...
        raise BadInput.at(path, f"cannot read safetensors file, truncated or corrupt ({e})") from e


def _read_safetensor(handle, path: Path, name: str) -> torch.Tensor:
    try:
        return handle.get_tensor(name)
    except Exception as e:
        raise BadInput.at(path, f"cannot read tensor {name!r} ({e})") from e


def _iter_pickle(path: Path, mappings: _Mappings | None) -> Iterator[tuple[str, torch.Tensor]]:
    obj, mmapped = _load_pickle(path)
    state = _unwrap_state_dict(path, obj)
    # torch byte-swaps a foreign-endian file in place, i.e. in the (private) mapping: such
    # pages must never be dropped or copied from the file, so that file is not tracked.
    track = mappings is not None and mmapped and _native_byte_order(path)
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            if track:
                mappings.track(path, value)
            yield str(name), value


def _load_pickle(path: Path) -> tuple[object, bool]:
    """The unpickled object, and whether its tensors are memory-mapped from the file."""
    # mmap needs the zip format; legacy (pre-1.6) pickles must be read into memory.
    # A zip file cut short has lost its central directory, so it is not mmapped either
    # and fails below with torch's "failed finding central directory".
    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True), mmap
    except pickle.UnpicklingError as e:
        raise BadInput.at(path, "refused to load: the pickle contains objects other than "
                                f"tensors ({_refusal_reason(e)})") from e
    except Exception as e:
        raise BadInput.at(path, "cannot read checkpoint, truncated or corrupt "
                                f"({type(e).__name__}: {_first_line(e)})") from e


def _native_byte_order(path: Path) -> bool:
    """Whether torch.load leaves this zip checkpoint's bytes as they are in the file."""
    if sys.byteorder != "little":
        return False
    try:
        with zipfile.ZipFile(path) as z:
            record = next((n for n in z.namelist() if n.rsplit("/", 1)[-1] == "byteorder"), None)
            return record is None or z.read(record).decode().strip() == sys.byteorder
    except (OSError, ValueError, zipfile.BadZipFile):
        return False


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:200]


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


# ---------------------------------------------------------------- memory


_MADV_DONTNEED = 4  # Linux


def _libc_madvise() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


_MADVISE = _libc_madvise()


def _libc_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _libc_malloc_trim() if sys.platform.startswith("linux") else None


@dataclass(frozen=True)
class _Region:
    """One private, file-backed memory map: addresses [start, end) hold ``path`` from ``offset``."""

    start: int
    end: int
    offset: int
    path: str


def _find_mapping(address: int, path: str) -> _Region | None:
    """The private mapping of ``path`` that contains ``address``, from /proc/self/maps."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) < 6:
                    continue
                start, end = (int(x, 16) for x in fields[0].split("-"))
                if start <= address < end and fields[1].endswith("p") and fields[5].rstrip("\n") == path:
                    return _Region(start, end, int(fields[2], 16), path)
    except (OSError, ValueError):
        pass
    return None


class _Mappings:
    """The file-backed memory maps that the tensors being read live in.

    Reading a memory-mapped tensor pulls its pages into this process, where they count
    in its resident set until unmapped. ``release`` drops them (MADV_DONTNEED: for a
    private file mapping whose pages were never written this only unmaps them; the data
    stays in the page cache and is faulted back in if read again), so that streaming a
    checkpoint keeps the resident set near one block. ``copy`` moves a block that lies
    in a mapped file straight from that file into the output with copy_file_range, as
    ``cp`` does, without touching its pages at all.

    Only mappings found in /proc/self/maps as a private map of the very file a tensor
    was read from are tracked, and a reference to the storage keeps each one alive while
    it is tracked. Elsewhere than on Linux nothing is tracked and both are no-ops.

    The writing thread and the verification threads share one instance: dropping pages
    another thread is reading only makes it fault them in again from the page cache.
    """

    def __init__(self) -> None:
        self.regions: list[_Region] = []
        self._keep: list[torch.UntypedStorage] = []
        self._untracked: set[str] = set()
        self._fds: dict[str, int] = {}
        self._touched = 0
        self._copy_ok = hasattr(os, "copy_file_range")
        self._buffers: dict[tuple[int, int], torch.Tensor] = {}
        self._lock = threading.Lock()

    def buffer(self, number: int) -> torch.Tensor:
        """This thread's scratch space of one block for gathering non-contiguous blocks
        (see _Out.blocks)."""
        key = (threading.get_ident(), number)
        with self._lock:
            if key not in self._buffers:
                self._buffers[key] = torch.empty(BLOCK_BYTES, dtype=torch.uint8)
            return self._buffers[key]

    def track(self, path: Path | str, tensor: torch.Tensor) -> None:
        """Register the memory map that ``tensor`` (read from ``path``) lives in, if any."""
        if _MADVISE is None:
            return
        storage = tensor.untyped_storage()
        address = storage.data_ptr()
        if not address or storage.nbytes() == 0:
            return
        real = os.path.realpath(path)
        with self._lock:
            if self._region_of(address, 1) is not None or real in self._untracked:
                return
            region = _find_mapping(address, real)
            if region is None:
                self._untracked.add(real)  # read into memory (or a copy): nothing to drop
                return
            self.regions = [*self.regions, region]  # a new list: other threads may be reading it
            self._keep.append(storage)

    def _region_of(self, address: int, size: int) -> _Region | None:
        return next((r for r in self.regions if r.start <= address and address + size <= r.end), None)

    def touched(self, nbytes: int) -> None:
        """Note that ``nbytes`` of mapped data were read; drop them once a block's worth is in."""
        with self._lock:
            self._touched += nbytes
            full = self._touched >= BLOCK_BYTES
            if full:
                self._touched = 0
        if full:
            self.release()

    def release(self) -> None:
        if _MADVISE is not None:
            for r in self.regions:
                _MADVISE(r.start, r.end - r.start, _MADV_DONTNEED)
        # Blocks gathered or concatenated in varying sizes leave freed memory in glibc's
        # heap, which it keeps (the resident set grew by ~150 MiB over a 2 GiB run): give
        # it back too.
        if _MALLOC_TRIM is not None:
            _MALLOC_TRIM(0)

    def copy(self, block: torch.Tensor, fd: int) -> bool:
        """Append ``block`` (contiguous uint8) to ``fd`` from its file if it lies in one."""
        size = block.numel()
        region = self._region_of(block.data_ptr(), size) if self._copy_ok else None
        if region is None:
            return False
        with self._lock:
            source = self._fds.get(region.path)
            if source is None:
                source = self._fds[region.path] = os.open(region.path, os.O_RDONLY)
        position = region.offset + block.data_ptr() - region.start
        done = 0
        try:
            while done < size:
                copied = os.copy_file_range(source, fd, size - done, position + done)
                if copied <= 0:
                    break
                done += copied
        except OSError:  # e.g. not supported between these file systems: write instead
            self._copy_ok = False
        if done < size:
            _write_fully(fd, block[done:])
            self.touched(size - done)
        return True

    def close(self) -> None:
        self.release()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self.regions = []
        self._keep.clear()
        self._buffers.clear()


def _write_fully(fd: int, data: bytes | torch.Tensor) -> None:
    view = memoryview(data.numpy()) if isinstance(data, torch.Tensor) else memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# ---------------------------------------------------------------- output tensors


def _byte_view(tensor: torch.Tensor) -> torch.Tensor:
    """A uint8 view of shape (*tensor.shape, itemsize), whatever the strides: no copy.

    Ops work on these bytes, so they are exact for every dtype by construction.
    """
    return tensor.detach().unsqueeze(-1).view(torch.uint8)


# Held while a whole output tensor is built (``_Out`` with ``make``), so that the writing
# thread and the verification threads never hold two of them at once (re-entrant: comparing
# two such tensors builds both in one thread).
_WHOLE_TENSOR = threading.RLock()


class _Out:
    """One output tensor, produced a block of leading rows at a time.

    ``rows(a, b)`` gives rows [a, b) as a byte view (see ``_byte_view``), any strides;
    alternatively ``make()`` gives the whole byte tensor, built when it is iterated and
    freed after (used where a layout change cannot be cut into rows). Built on memory-
    mapped sources, an ``_Out`` holds references, not data.
    """

    __slots__ = ("shape", "dtype", "_rows", "_make")

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype,
                 rows: Callable[[int, int], torch.Tensor] | None = None,
                 make: Callable[[], torch.Tensor] | None = None):
        self.shape, self.dtype, self._rows, self._make = tuple(shape), dtype, rows, make

    @classmethod
    def of(cls, tensor: torch.Tensor) -> _Out:
        data = _byte_view(tensor)
        if tensor.dim() == 0:
            return cls((), tensor.dtype, lambda a, b: data)
        return cls(tuple(tensor.shape), tensor.dtype, lambda a, b: data[a:b])

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def cuttable(self) -> bool:
        """Whether ``part`` works: the tensor has rows and is produced a block of rows at a time."""
        return self._rows is not None and len(self.shape) > 0

    def part(self, start: int, stop: int) -> _Out:
        """Rows [start, stop) as an ``_Out`` of their own (for a ``cuttable`` tensor)."""
        rows = self._rows
        return _Out((stop - start, *self.shape[1:]), self.dtype,
                    lambda a, b: rows(start + a, start + b))

    def blocks(self, limit: int | None = None, buffer: torch.Tensor | None = None
               ) -> Iterator[torch.Tensor]:
        """The tensor's bytes in order, as contiguous 1-D uint8 tensors of at most ``limit``
        (default ``BLOCK_BYTES``) bytes, or one row where a row is larger. Block boundaries
        depend on shape, dtype and limit only, so two tensors can be compared block by block.

        A block that is not already contiguous is gathered into ``buffer`` when it fits
        (reused, so a long stream does not allocate, and fragment the heap, block after
        block); a block is only valid until the next one is asked for.
        """
        if self.nbytes == 0:
            return
        limit = limit or BLOCK_BYTES
        if self._make is None:
            yield from self._blocks(self._rows, limit, buffer)
            return
        with _WHOLE_TENSOR:
            whole = [self._make()]
            try:
                yield from self._blocks(lambda a, b: whole[0][a:b], limit, buffer)
            finally:
                whole.clear()  # freed before another thread may build one

    def _blocks(self, rows: Callable[[int, int], torch.Tensor], limit: int,
                buffer: torch.Tensor | None) -> Iterator[torch.Tensor]:
        if not self.shape:
            yield _gather(rows(0, 1), buffer)
            return
        step = max(1, limit // (self.nbytes // self.shape[0]))
        for a in range(0, self.shape[0], step):
            yield _gather(rows(a, min(a + step, self.shape[0])), buffer)


def _gather(data: torch.Tensor, buffer: torch.Tensor | None) -> torch.Tensor:
    """``data`` (uint8, any strides) as a contiguous 1-D tensor, copied into ``buffer`` if need be."""
    if data.is_contiguous():
        return data.reshape(-1)
    if buffer is None or data.numel() > buffer.numel():
        return data.contiguous().reshape(-1)
    out = buffer[:data.numel()]
    out.view(data.shape).copy_(data)
    return out


# ---------------------------------------------------------------- ops


class _OpApplier:
    """Applies ops to source tensors in read order; one per pass over the sources.

    The first op whose ``source`` matches a name applies; after a rename, the split, permute
    and merge ops are tried on the new name (renames are one mapping and never chain). A merge
    holds the parts it has seen (references) until its last part arrives, then emits the target.
    """

    def __init__(self, ops: Iterable[WeightOp], report: ConversionReport | None = None):
        self.ops = list(ops)
        self.report = report
        self.pending: dict[str, tuple[WeightOp, dict[str, tuple[str, torch.Tensor]]]] = {}

    def feed(self, name: str, tensor: torch.Tensor) -> list[tuple[str, _Out]]:
        """The output tensors that are complete once ``tensor`` has been read."""
        if tensor.layout != torch.strided:
            raise BadInput(f"{name}: {tensor.layout} tensors cannot be stored in safetensors")
        return self._feed(name, tensor, self.ops)

    def _feed(self, name: str, tensor: torch.Tensor, ops: list[WeightOp]) -> list[tuple[str, _Out]]:
        for op in ops:
            match = re.fullmatch(op.source, name)
            if match is None or (op.kind == "merge" and match["part"] not in op.parts):
                continue
            targets = [match.expand(t) for t in op.targets]
            if op.kind == "rename":
                self._note("renamed", name, targets[0])
                # A moved tensor may still need splitting, permuting or merging (a composite's
                # tower moved under its base model, and its fused projection split).
                return self._feed(targets[0], tensor, [o for o in ops if o.kind != "rename"])
            if op.kind == "split":
                self._note("split", name, targets)
                return list(zip(targets, _split(name, tensor, op), strict=True))
            if op.kind == "permute":
                self._note("permuted", name, targets[0])
                return [(targets[0], _permute(name, tensor, op))]
            return self._merge_part(op, targets[0], match["part"], name, tensor)
        return [(name, _Out.of(tensor))]

    def _note(self, what: str, key: str, value: Any) -> None:
        if self.report is not None:
            getattr(self.report, what)[key] = value

    def _merge_part(self, op: WeightOp, target: str, part: str, name: str,
                    tensor: torch.Tensor) -> list[tuple[str, _Out]]:
        owner, parts = self.pending.setdefault(target, (op, {}))
        if owner is not op:
            raise BadInput(f"merge into {target!r}: two merge ops ({owner.source!r} and "
                           f"{op.source!r}) build it")
        if part in parts:
            raise BadInput(f"merge into {target!r}: part {part!r} comes from both "
                           f"{parts[part][0]!r} and {name!r}")
        parts[part] = (name, tensor)
        if len(parts) < len(op.parts):
            return []
        del self.pending[target]
        ordered = [parts[p] for p in op.parts]
        self._note("merged", target, [n for n, _ in ordered])
        return [(target, _merge(target, ordered, op.dim))]

    def finish(self) -> None:
        """Refuse merges left incomplete when the sources ran out."""
        for target, (op, parts) in self.pending.items():
            missing = [p for p in op.parts if p not in parts]
            found = ", ".join(repr(n) for n, _ in parts.values())
            raise BadInput(f"merge into {target!r}: no source tensor for part(s) "
                           f"{', '.join(missing)} (found {found})")


def _split(name: str, tensor: torch.Tensor, op: WeightOp) -> list[_Out]:
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
    # Views: a part is copied only a block at a time, when it is written.
    return [_Out.of(part) for part in torch.split(tensor, sizes, dim=op.dim)]


def _merge(target: str, parts: list[tuple[str, torch.Tensor]], dim: int) -> _Out:
    first_name, first = parts[0]
    if first.dim() == 0 or not -first.dim() <= dim < first.dim():
        raise BadInput(f"merge into {target!r}: cannot concatenate along dim {dim} of "
                       f"{first_name} {tuple(first.shape)}")
    dim %= first.dim()
    for name, tensor in parts[1:]:
        if tensor.dtype != first.dtype:
            raise BadInput(f"merge into {target!r}: {name} is {tensor.dtype}, "
                           f"{first_name} is {first.dtype}")
        if tensor.dim() != first.dim() or any(
                tensor.shape[i] != first.shape[i] for i in range(first.dim()) if i != dim):
            raise BadInput(f"merge into {target!r}: {name} {tuple(tensor.shape)} does not fit "
                           f"{first_name} {tuple(first.shape)} along dim {dim}")
    shape = list(first.shape)
    shape[dim] = sum(t.shape[dim] for _, t in parts)
    views = [_byte_view(t) for _, t in parts]
    if dim > 0:  # rows of the result are rows of every part, side by side
        return _Out(tuple(shape), first.dtype, lambda a, b: torch.cat([v[a:b] for v in views], dim))
    starts = [0]
    for v in views[:-1]:
        starts.append(starts[-1] + v.shape[0])

    def rows(a: int, b: int) -> torch.Tensor:  # the parts one after another
        pieces = [v[max(a - s, 0):b - s] for v, s in zip(views, starts, strict=True)
                  if s < b and a < s + v.shape[0]]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    return _Out(tuple(shape), first.dtype, rows)


def _permute(name: str, tensor: torch.Tensor, op: WeightOp) -> _Out:
    perm, view = op.perm_spec, op.view_shape
    if view is None:
        if len(perm) != tensor.dim():
            raise BadInput(f"{name}: perm_spec {perm} does not fit shape {tuple(tensor.shape)}")
        return _Out.of(tensor.permute(perm))  # a view; copied a block at a time when written
    known = math.prod(v for v in view if v != -1)
    numel = tensor.numel()
    if tensor.dim() == 0 or (numel % known != 0 if -1 in view else numel != known):
        raise BadInput(f"{name}: cannot view shape {tuple(tensor.shape)} as {view}")
    if numel == 0:  # nothing to move (and a -1 in view_shape would be ambiguous)
        return _Out.of(tensor)
    shape, itemsize = tuple(tensor.shape), tensor.dtype.itemsize
    moved = _byte_view(tensor).reshape(*view, itemsize).permute(*perm, len(view))  # views
    if perm[0] != 0:
        def make() -> torch.Tensor:  # the whole tensor, while it is written or compared
            return moved.contiguous().reshape(*shape, itemsize)

        return _Out(shape, tensor.dtype, make=make)
    # The leading dim stays in place (e.g. heads in a rotary permute): rows [a, b) of the
    # result come from the few leading slices they span, so a block needs only those.
    per_slice = moved[0].numel()
    row = math.prod(shape[1:]) * itemsize

    def rows(a: int, b: int) -> torch.Tensor:
        start, stop = a * row, b * row
        first, last = start // per_slice, -(-stop // per_slice)
        flat = moved[first:last].contiguous().reshape(-1)
        return flat[start - first * per_slice:stop - first * per_slice].view(b - a, *shape[1:], itemsize)

    return _Out(shape, tensor.dtype, rows)


# ---------------------------------------------------------------- comparison


def _equal_bytes(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Two contiguous 1-D uint8 tensors hold the same bytes (compared a word at a time)."""
    if x.numel() != y.numel():
        return False
    for word in (torch.int64, torch.int32, torch.int16):
        try:
            return torch.equal(x.view(word), y.view(word))
        except RuntimeError:  # length or offset not a multiple of the word size
            continue
    return torch.equal(x, y)


def _same(a: _Out, b: _Out, mappings: _Mappings | None = None) -> bool:
    """Same dtype, shape and bytes; unlike torch.equal this also tells NaNs and -0.0 apart."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    buffers = (mappings.buffer(0), mappings.buffer(1)) if mappings is not None else (None, None)
    for x, y in zip(a.blocks(buffer=buffers[0]), b.blocks(buffer=buffers[1]), strict=True):
        equal = _equal_bytes(x, y)
        if mappings is not None:
            mappings.touched(x.numel() + y.numel())
        if not equal:
            return False
    return True


# ---------------------------------------------------------------- writing


class _ShardWriter:
    """Groups tensors into shards no larger than ``max_bytes`` and writes them.

    A shard holds ``_Out`` references; ``flush`` writes it streaming (see
    ``_write_safetensors``), with ``verifier`` reading back each tensor once written and
    the whole file once complete. Shards go to temporary names first; ``commit`` gives
    them their Hub names once the number of shards is known, so a failed run never leaves
    a half checkpoint.
    """

    def __init__(self, out_dir: Path, max_bytes: int, mappings: _Mappings | None = None,
                 verifier: _ShardVerifier | None = None):
        self.out_dir = out_dir
        self.max_bytes = max_bytes
        self.mappings = mappings or _Mappings()
        self.verifier = verifier
        self.current: list[tuple[str, _Out]] = []
        self.current_bytes = 0
        self.temp_files: list[Path] = []
        self.shard_of: dict[str, int] = {}  # tensor name -> shard number (0-based)
        self.total_bytes = 0

    def add(self, name: str, out: _Out) -> None:
        if out.dtype not in _ST_NAMES:
            raise BadInput(f"{name}: dtype {out.dtype} cannot be stored in safetensors")
        if name == "__metadata__":
            raise BadInput(f"{name}: this tensor name is reserved in safetensors")
        size = out.nbytes
        # Like the Hub: start a new shard when this tensor would overflow a non-empty one;
        # a tensor larger than the limit gets a shard of its own.
        if self.current and self.current_bytes + size > self.max_bytes:
            self.flush()
        self.current.append((name, out))
        self.current_bytes += size
        self.total_bytes += size
        self.shard_of[name] = len(self.temp_files)

    def flush(self) -> None:
        if not self.current:
            return
        path = self.out_dir / f".model-partial-{len(self.temp_files):05d}.safetensors"
        self.temp_files.append(path)
        _write_safetensors(path, self.current, self.mappings, self.verifier)
        self.current, self.current_bytes = [], 0

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


def _write_safetensors(path: Path, entries: list[tuple[str, _Out]], mappings: _Mappings,
                       verifier: _ShardVerifier | None = None) -> None:
    """Write one safetensors file, a block at a time: the file format, built by hand.

    An 8-byte little-endian header length, the JSON header (``__metadata__`` and, per
    tensor, dtype, shape and data offsets) padded with spaces to a multiple of 8, then
    the tensors' bytes back to back. Wider dtypes come first, as safetensors itself
    orders them, so that every tensor starts at a multiple of its item size.

    The file is given its final size first, so that ``verifier`` can map it whole and
    compare each tensor as soon as its bytes are in, while the next one is written.
    Bytes are only ever appended at the file position, which is checked against the
    header after each tensor, so bytes already compared are never written again.
    """
    ordered = sorted(entries, key=lambda entry: -entry[1].dtype.itemsize)  # stable: source order
    header: dict[str, Any] = {"__metadata__": METADATA}
    offset = 0
    for name, out in ordered:
        header[name] = {"dtype": _ST_NAMES[out.dtype], "shape": list(out.shape),
                        "data_offsets": [offset, offset + out.nbytes]}
        offset += out.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    data_start = 8 + len(raw)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o666)
    try:
        os.ftruncate(fd, data_start + offset)
        _write_fully(fd, struct.pack("<Q", len(raw)) + raw)
        file_bytes = verifier.map_file(path, data_start + offset) if verifier is not None else None
        for name, out in ordered:
            start, end = (data_start + x for x in header[name]["data_offsets"])
            _write_tensor(fd, name, out, mappings, end)
            if file_bytes is not None:
                verifier.compare_later(name, out, file_bytes[start:end])
    finally:
        os.close(fd)
    if verifier is not None:
        verifier.check_file(path, raw)


def _write_tensor(fd: int, name: str, out: _Out, mappings: _Mappings, end: int) -> None:
    """Append one tensor's bytes at the file position of ``fd``, which must then be ``end``."""
    for block in out.blocks(buffer=mappings.buffer(0)):
        if not mappings.copy(block, fd):
            _write_fully(fd, block)
            mappings.touched(block.numel())
    if os.lseek(fd, 0, os.SEEK_CUR) != end:
        raise RuntimeError(f"writing {name!r}: its {out.nbytes} bytes do not end at byte {end} of the file")


# ---------------------------------------------------------------- conversion


class _TiedFilter:
    """Drops declared tied targets that are bit-identical to their source.

    Names are output names (after ops). A target seen before its source is held
    back (a reference only: mmap'd sources cost no RAM) until the source arrives.
    Sources are remembered the same way so a later target can be compared.
    """

    def __init__(self, tied: Mapping[str, str], report: ConversionReport,
                 mappings: _Mappings | None = None):
        chained = sorted(set(tied) & set(tied.values()))
        if chained:
            raise BadInput(f"tied weights: {chained[0]!r} is both a tied target and a source")
        self.tied = dict(tied)
        self.report = report
        self.mappings = mappings
        self.sources: dict[str, _Out] = {}
        self.waiting: dict[str, _Out] = {}

    def feed(self, name: str, out: _Out) -> list[tuple[str, _Out]]:
        """Tensors to write now, given the next output tensor."""
        source = self.tied.get(name)
        if source is not None:
            if source not in self.sources:
                self.waiting[name] = out
                return []
            return self._keep_unless_identical(name, out, self.sources[source])
        kept = [(name, out)]
        if name in self.tied.values():
            self.sources[name] = out
            for target in [t for t, s in self.tied.items() if s == name and t in self.waiting]:
                kept += self._keep_unless_identical(target, self.waiting.pop(target), out)
        return kept

    def _keep_unless_identical(self, target: str, out: _Out, source: _Out) -> list[tuple[str, _Out]]:
        if _same(out, source, self.mappings):
            self.report.dropped_duplicates[target] = self.tied[target]
            return []
        return [(target, out)]

    def leftovers(self) -> list[tuple[str, _Out]]:
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

    Tensors keep dtype, values and source order; ``ops`` rename, split, merge or permute
    matching tensors; ``tied`` (target -> source, output names) drops identical
    duplicates. Tensors are streamed a block at a time, so memory stays near one block
    (one tensor for a permute with ``view_shape``) whatever the shard size. Each tensor,
    once written, is read back from its file and compared with its source in worker
    threads (``VERIFY_THREADS``) while the next one is written, and every finished file is
    reopened and its header checked. Raises ``BadInput`` for bad input
    (nothing is written then) and ``RuntimeError`` if the written files do not match the
    source.
    """
    files = [Path(f) for f in files]
    if not files:
        raise BadInput("no weight files to convert")
    out_dir = Path(out_dir)
    _refuse_overwriting_sources(files, out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    ops = list(ops)
    report = ConversionReport(source_files=[str(f) for f in files], output_files=[],
                              tensors=0, bytes=0)
    mappings = _Mappings()
    verifier = _ShardVerifier(mappings)
    writer = _ShardWriter(out_dir, parse_shard_size(max_shard_size), mappings, verifier)
    try:
        try:
            _write_all(files, ops, _TiedFilter(tied or {}, report, mappings), writer, report,
                       progress)
            if not writer.shard_of:
                raise BadInput.at(files[0], "the checkpoint contains no tensors")
            _verify(verifier, writer)
            finals = writer.commit()
        finally:
            verifier.close()
            writer.discard()
            mappings.close()
    except BaseException:
        if created:  # leave no trace of a failed conversion
            _remove_empty_dir(out_dir)
        raise
    report.output_files = [str(p) for p in finals]
    report.tensors = len(writer.shard_of)
    report.bytes = writer.total_bytes
    report.verified = True
    return report


def _remove_empty_dir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


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
    applier = _OpApplier(ops, report)
    origin: dict[str, str] = {}  # output name -> source name, for duplicate messages
    for done, (source_name, tensor) in enumerate(_read(files, writer.mappings), start=1):
        for name, out in applier.feed(source_name, tensor):
            if name in origin:
                raise BadInput(f"two tensors would be written as {name!r}: from "
                               f"{origin[name]!r} and {source_name!r}")
            origin[name] = source_name
            for keep_name, keep in tied.feed(name, out):
                writer.add(keep_name, keep)
        if progress is not None:
            progress(done, total)
    applier.finish()
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


# ---------------------------------------------------------------- verification


class _ShardVerifier:
    """Reads every written tensor back from its file and compares it, bit for bit, with the
    source tensor (after ops) it was written from; reopens every finished file.

    ``map_file`` maps a shard file (already at its final size) privately, read only in
    practice; ``compare_later`` queues the comparison of one tensor's bytes in that map,
    called as soon as the writer has put them there, and the comparisons run in
    ``threads`` worker threads while the writer goes on with the next tensor.
    A tensor is compared in pieces of ``CHUNK_BLOCKS`` blocks, so one large tensor is
    spread over the threads too. ``check_file`` reopens the complete file with
    ``safe_open`` and checks its header, metadata and names. With one thread everything
    runs in the caller's thread.
    """

    def __init__(self, mappings: _Mappings, threads: int | None = None):
        threads = VERIFY_THREADS if threads is None else threads
        self.mappings = mappings
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="verify-weights") if threads > 1 else None
        self.pending: list[Future] = []
        self.checked: set[str] = set()

    def map_file(self, path: Path, size: int) -> torch.Tensor:
        """The bytes of ``path`` as a uint8 tensor over a private map of the file (a
        view of the page cache; the writes through ``fd`` show in it)."""
        file_bytes = torch.from_file(str(path), shared=False, size=size, dtype=torch.uint8)
        self.mappings.track(path, file_bytes)  # its pages are dropped again as compared
        return file_bytes

    def compare_later(self, name: str, expected: _Out, written_bytes: torch.Tensor) -> None:
        self._raise_failures(wait=False)  # stop writing early once a tensor is known bad
        written = _as_out(written_bytes, expected)
        for piece_written, piece_source in _pieces(written, expected, CHUNK_BLOCKS * BLOCK_BYTES):
            if self.pool is None:
                _compare(name, piece_written, piece_source, self.mappings)
            else:
                self.pending.append(self.pool.submit(_compare, name, piece_written, piece_source,
                                                     self.mappings))
        self.checked.add(name)

    def check_file(self, path: Path, header: bytes) -> None:
        """The complete file, reopened, holds the header the tensors were compared under."""
        with open(path, "rb") as f:
            if f.read(8 + len(header)) != struct.pack("<Q", len(header)) + header:
                raise RuntimeError(f"verification failed: the header of {path.name} differs from the one written")
        expected = json.loads(header)
        with safe_open(str(path), framework="pt") as handle:
            _check_written_names(path, handle, [n for n in expected if n != "__metadata__"])
            for name in handle.keys():
                piece = handle.get_slice(name)
                if (piece.get_dtype(), list(piece.get_shape())) != (expected[name]["dtype"], expected[name]["shape"]):
                    raise RuntimeError(f"verification failed: safetensors reads {name!r} in {path.name} "
                                       f"as {piece.get_dtype()} {piece.get_shape()}")

    def finish(self) -> None:
        """Wait for every queued comparison; raise the first that failed."""
        self._raise_failures(wait=True)

    def _raise_failures(self, wait: bool) -> None:
        finished = self.pending if wait else [f for f in self.pending if f.done()]
        for future in finished:
            future.result()  # re-raises a failed comparison's error
        done = set(finished)
        self.pending = [f for f in self.pending if f not in done]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _verify(verifier: _ShardVerifier, writer: _ShardWriter) -> None:
    """Wait for the shards' comparisons; every tensor written must have been compared."""
    verifier.finish()
    unchecked = set(writer.shard_of) - verifier.checked
    if unchecked:
        raise RuntimeError(f"verification failed: {min(unchecked)!r} was not compared")


def _pieces(written: _Out, source: _Out, limit: int) -> list[tuple[_Out, _Out]]:
    """The pairs of row ranges, of about ``limit`` bytes, to compare the two tensors by."""
    if (written.shape != source.shape or written.dtype != source.dtype or source.nbytes <= limit
            or not (written.cuttable and source.cuttable)):
        return [(written, source)]
    length = source.shape[0]
    step = max(1, limit // (source.nbytes // length))
    return [(written.part(a, min(a + step, length)), source.part(a, min(a + step, length)))
            for a in range(0, length, step)]


def _compare(name: str, written: _Out, source: _Out, mappings: _Mappings) -> None:
    if not _same(written, source, mappings):
        raise RuntimeError(f"verification failed: {name!r} differs from its source")


def _as_out(written_bytes: torch.Tensor, like: _Out) -> _Out:
    """A tensor's bytes as written (1-D uint8), read as an ``_Out`` of ``like``'s shape and dtype."""
    if not like.shape:
        return _Out((), like.dtype, lambda a, b: written_bytes)
    rows = written_bytes.view(*like.shape, like.dtype.itemsize)
    return _Out(like.shape, like.dtype, lambda a, b: rows[a:b])


def _check_written_names(path: Path, handle: Any, names: list[str]) -> None:
    """The file holds exactly the tensors assigned to it, with our metadata."""
    if handle.metadata() != METADATA:
        raise RuntimeError(f"verification failed: {path.name} lacks format metadata")
    written = set(handle.keys())
    mismatched = sorted(written ^ set(names))
    if mismatched:
        name = mismatched[0]
        state = "unexpected" if name in written else "missing"
        raise RuntimeError(f"verification failed: tensor {name!r} is {state} in the output")


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
