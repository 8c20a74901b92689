"""Isolated Python environments holding an old transformers release.

Legacy code is only trustworthy as a reference when it runs with the transformers it
was written for (CONTRACT F1). Each environment is built once, cached, and reuses the
torch that is already installed here through a link folder instead of downloading
another build of several gigabytes.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from porter.errors import ReferenceUnavailable

READY_MARKER = ".port-model-ready"


@dataclass(frozen=True)
class ReferenceEnv:
    """A built environment: its interpreter and the transformers release it holds."""

    root: Path
    python: Path
    transformers_version: str
    reused: bool
    build_seconds: float


def default_cache_dir() -> Path:
    """Where environments and downloads are kept; `PORT_MODEL_CACHE` overrides it."""
    env = os.environ.get("PORT_MODEL_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "port-model"


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def dependency_pins(transformers_version: str) -> list[str]:
    """Pins an old transformers release needs beside it to import on a current Python."""
    pins = [f"transformers=={transformers_version}"]
    version = _version_tuple(transformers_version)
    if version < (4, 42):
        pins.append("numpy<2")  # releases before 4.42 use numpy APIs that numpy 2 removed
    if version < (5,):
        pins.append("huggingface_hub<1.0")
    return pins


def _torch_closure(roots: tuple[str, ...] = ("torch",)) -> list[metadata.Distribution]:
    """torch (or `roots`) and the distributions it requires, as installed in this interpreter."""
    seen: dict[str, metadata.Distribution] = {}
    pending = list(roots)
    while pending:
        name = re.split(r"[ ;<>=!~\[(]", pending.pop(), maxsplit=1)[0].strip().lower()
        if not name or name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[name] = dist
        for requirement in dist.requires or []:
            if "extra ==" not in requirement:
                pending.append(requirement)
    return list(seen.values())


def _link_torch(link_dir: Path, roots: tuple[str, ...] = ("torch",)) -> None:
    """Fill `link_dir` with symlinks to torch (or `roots`) and its requirements (top-level entries)."""
    link_dir.mkdir(parents=True, exist_ok=True)
    for dist in _torch_closure(roots):
        for file in dist.files or []:
            top = file.parts[0]
            if top in ("..", "__pycache__") or top.endswith(".pth"):
                continue
            source = Path(dist.locate_file(top))
            target = link_dir / top
            if source.exists() and not target.exists():
                target.symlink_to(source)


def _shared_roots(transformers_version: str) -> tuple[str, ...]:
    """What an environment reuses from this interpreter: torch; for a transformers 5 release
    also what the installed transformers requires (their ranges are shared within 5.x), so
    pip downloads only transformers itself."""
    if _version_tuple(transformers_version)[:1] < (5,):
        return ("torch",)
    try:
        requires = metadata.distribution("transformers").requires or []
    except metadata.PackageNotFoundError:
        return ("torch",)
    return ("torch", *(r for r in requires if "extra ==" not in r))


def _site_packages(env_root: Path) -> Path:
    found = list(env_root.glob("lib/python*/site-packages"))
    if not found:
        raise ReferenceUnavailable(f"{env_root}: virtual environment has no site-packages")
    return found[0]


def _run(cmd: list[str], log_path: Path, timeout: float) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    if result.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise ReferenceUnavailable(f"`{' '.join(cmd[:6])}` failed:\n" + "\n".join(tail))


def _env_name(transformers_version: str) -> str:
    torch_version = metadata.version("torch").split("+")[0]
    return f"transformers-{transformers_version}-py{sys.version_info.major}{sys.version_info.minor}-torch{torch_version}"


def _env_root(transformers_version: str, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / "envs" / _env_name(transformers_version)


def ensure_reference_env(
    transformers_version: str,
    cache_dir: Path | None = None,
    *,
    timeout: float = 1200.0,
) -> ReferenceEnv:
    """Return a cached environment with `transformers_version`, building it if needed."""
    root = _env_root(transformers_version, cache_dir)
    name = root.name
    python = root / "bin" / "python"
    if (root / READY_MARKER).exists():
        return ReferenceEnv(root, python, transformers_version, reused=True, build_seconds=0.0)

    start = time.monotonic()
    building = root.with_name(f"{name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.parent.mkdir(parents=True, exist_ok=True)
    log_path = building.with_suffix(".log")
    try:
        _run([sys.executable, "-m", "venv", str(building)], log_path, timeout)
        # The link folder is appended to sys.path, after the environment's own packages,
        # so pip sees torch as installed and never fetches another build.
        link_dir = building / "torch-link"
        _link_torch(link_dir, _shared_roots(transformers_version))
        (_site_packages(building) / "port_model_torch.pth").write_text(str(root / "torch-link") + "\n")
        # While building, the .pth must point at the folder as it is now.
        (_site_packages(building) / "port_model_torch_build.pth").write_text(str(link_dir) + "\n")
        pip = [str(building / "bin" / "python"), "-m", "pip", "install", "--prefer-binary", "-q"]
        _run(pip + dependency_pins(transformers_version), log_path, timeout)
        (_site_packages(building) / "port_model_torch_build.pth").unlink()
        _fix_venv_paths(building, root)
        (building / READY_MARKER).write_text(transformers_version + "\n")
        if root.exists():  # another process finished first
            shutil.rmtree(building, ignore_errors=True)
        else:
            building.rename(root)
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(building, ignore_errors=True)
        raise ReferenceUnavailable(f"building the transformers {transformers_version} environment timed out") from exc
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    finally:
        log_path.unlink(missing_ok=True)
    check = subprocess.run(
        [str(python), "-c", "import torch, transformers; print(transformers.__version__)"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check.returncode != 0 or check.stdout.strip() != transformers_version:
        raise ReferenceUnavailable(
            f"the transformers {transformers_version} environment does not import: {check.stderr.strip()[-500:]}"
        )
    return ReferenceEnv(root, python, transformers_version, reused=False, build_seconds=time.monotonic() - start)


def _fix_venv_paths(building: Path, final: Path) -> None:
    """A venv records its own path in scripts and pyvenv.cfg; point them at the final place."""
    old, new = str(building), str(final)
    for path in [building / "pyvenv.cfg", *(building / "bin").iterdir()]:
        if path.is_symlink() or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        if old in text:
            path.write_text(text.replace(old, new))


def link_packages(env: ReferenceEnv, distributions: list[str]) -> list[str]:
    """Make pure additions such as `einops`, which remote code imports but no transformers
    release requires, importable in `env` by linking this interpreter's copy (as for torch).
    Returns the distributions that are not installed here."""
    missing = []
    for name in distributions:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    present = tuple(n for n in distributions if n not in missing)
    if present:
        _link_torch(env.root / "torch-link", present)
    return missing


@dataclass(frozen=True)
class CodeImport:
    module: str  # top-level name, e.g. "einops"
    file: str
    line: int


def required_imports(sources: dict[str, str]) -> list[CodeImport]:
    """Absolute imports the code cannot run without: module level, outside `try` blocks (as
    transformers' own `check_imports` reads them), neither stdlib nor the repo's own files."""
    import ast

    own = {Path(name).stem for name in sources}
    found = []
    for name, text in sorted(sources.items()):
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.Import):
                modules = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module.split(".")[0]]
            else:
                continue
            for module in modules:
                if module not in sys.stdlib_module_names and module not in own and module != "__future__":
                    found.append(CodeImport(module, name, node.lineno))
    return found


def read_code(repo: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8", errors="replace") for p in sorted(Path(repo).glob("*.py"))}


def remote_code_imports(repo: Path, env: ReferenceEnv) -> list[str]:
    """Distributions installed here that the repo's code imports and `env` lacks: the
    undeclared requirements of remote code (transformers refuses to load code whose
    imports are missing)."""
    owners = metadata.packages_distributions()
    in_env = {p.name.split("-")[0].lower().replace("_", "-") for p in _site_packages(env.root).glob("*.dist-info")}
    wanted = []
    for module in sorted({i.module for i in required_imports(read_code(repo))}):
        for dist in owners.get(module, []):
            if dist.lower().replace("_", "-") not in in_env | {"torch"} and dist not in wanted:
                wanted.append(dist)
    return wanted


# -- the nearest installable release --------------------------------------------------------------
def _release_parts(version: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a final release; None for pre-releases and other strings."""
    match = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?", version.strip())
    return (int(match[1]), int(match[2]), int(match[3] or 0)) if match else None


def nearest_release(requested: str, available: list[str]) -> str | None:
    """The final release in `available` closest to `requested` within its major version: the
    same minor first (nearest patch), then the nearest minor (its newest patch); newer on ties.
    `requested` may be a development or pre-release string such as `4.37.0.dev0`."""
    wanted = _version_tuple(requested)
    if len(wanted) < 2:
        return None
    wanted = (*wanted, 0)[:3]
    candidates = []
    for version in available:
        parts = _release_parts(version)
        if parts is None or parts[0] != wanted[0]:
            continue
        if parts[1] == wanted[1]:
            key = (0, abs(parts[2] - wanted[2]), -parts[2])
        else:
            key = (1, abs(parts[1] - wanted[1]), -parts[1], -parts[2])
        candidates.append((key, version))
    return min(candidates)[1] if candidates else None


def registry_releases(timeout: float = 120.0) -> list[str]:
    """transformers releases the package index offers for this Python (`pip index versions`,
    which leaves out yanked releases and those without a file for this interpreter)."""
    cmd = [sys.executable, "-m", "pip", "index", "versions", "transformers", "--disable-pip-version-check"]
    try:
        completed = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReferenceUnavailable(f"the package index could not be asked for transformers releases: {exc}") from None
    match = re.search(r"Available versions:\s*(.+)", completed.stdout)
    if completed.returncode != 0 or not match:
        reason = (completed.stderr or completed.stdout).strip().splitlines()[-1:] or ["no answer"]
        raise ReferenceUnavailable(f"the package index could not be asked for transformers releases: {reason[0]}")
    return [v.strip() for v in match[1].split(",") if v.strip()]


def cached_releases(cache_dir: Path | None = None) -> list[str]:
    """Releases installable without the package index: built environments for this Python and
    torch, and transformers wheels kept in the cache."""
    cache_dir = cache_dir or default_cache_dir()
    suffix = _env_name("").split("-", 2)[2]
    found = []
    for root in (cache_dir / "envs").glob(f"transformers-*-{suffix}"):
        if (root / READY_MARKER).exists():
            found.append(root.name[len("transformers-") : -len(suffix) - 1])
    for wheel in (cache_dir / "wheels").glob("transformers-*.whl"):
        found.append(wheel.name.split("-")[1])
    return sorted(set(found), key=_version_tuple)


@dataclass(frozen=True)
class ReleaseChoice:
    """The release a reference environment is built for, and why when it is not the one asked for."""

    requested: str
    version: str
    reason: str | None = None  # None: the requested release itself


def choose_release(requested: str, cache_dir: Path | None = None, available: list[str] | None = None) -> ReleaseChoice:
    """`requested` when it is built or installable, else the nearest release that is.

    `available` is the list of installable releases; by default the package index's, or,
    when the index cannot be reached, the releases in the cache (and then `requested` is
    tried as it is, since nothing says it does not exist)."""
    if _env_root(requested, cache_dir).joinpath(READY_MARKER).exists():
        return ReleaseChoice(requested, requested)
    index_known = available is not None
    if available is None:
        try:
            available = registry_releases()
            index_known = True
        except ReferenceUnavailable:
            available = cached_releases(cache_dir)
    if requested in available or not index_known:
        return ReleaseChoice(requested, requested)
    nearest = nearest_release(requested, available)
    if nearest is None:
        raise ReferenceUnavailable(
            f"transformers {requested} is not installable here and no release of the same major version is"
        )
    return ReleaseChoice(
        requested,
        nearest,
        f"transformers {requested} is not installable here (the package index offers no such release for "
        f"Python {sys.version_info.major}.{sys.version_info.minor}); the nearest release, {nearest}, was used",
    )


def ensure_nearest_env(
    requested: str, cache_dir: Path | None = None, available: list[str] | None = None
) -> tuple[ReferenceEnv, ReleaseChoice]:
    """The environment for `requested`, or for the nearest installable release (see `choose_release`)."""
    choice = choose_release(requested, cache_dir, available)
    return ensure_reference_env(choice.version, cache_dir), choice
