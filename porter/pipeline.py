"""The port, stage by stage: load -> analyse -> rewrite -> convert weights -> verify -> write.

The CLI, the batch runner and the notebook API all call `run_port`. Each stage adds to
one Report; nothing flows backwards. Output is assembled in a temporary folder beside the
destination and renamed into place only when complete (CONTRACT G1).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from porter.analysis import RepoAnalysis, analyse
from porter.config_json import processor_settings, updated_config
from porter.errors import BadInput, UnsupportedPattern, WeightsMismatch
from porter.hub import resolve_source
from porter.repo import LegacyRepo, load_repo
from porter.report import SKIP, Check, Report, versions
from porter.requirements import merged_requirements, undeclared_requirements
from porter.rewrite import RewriteResult, rewrite
from porter.verify import VerifyOptions, verify
from porter.verify.sharded import prove_sharded
from porter.weights import convert_checkpoint
from transforms.cst_utils import children_cached

Progress = Callable[[str], None]


@dataclass
class PortOptions:
    out: Path | None = None
    verify: bool = True
    device: str = "auto"
    reference_transformers: str | None = None
    reference: str = "own"  # where the legacy code runs: own | current | own-or-current
    allow_partial: bool = False
    max_shard_size: str = "5GB"
    cache_dir: Path | None = None
    timeout: float = 900.0
    overwrite: bool = False
    # Run the parallel plan over 2 processes (CONTRACT D2); PORT_MODEL_SHARDED_PROOF=0 turns it off.
    sharded_proof: bool = field(default_factory=lambda: os.environ.get("PORT_MODEL_SHARDED_PROOF", "1") != "0")
    # Keep a concatenated [q|k|v] projection fused and replicated instead of splitting it (CONTRACT D1).
    replicate_fused_qkv: bool = False


@dataclass
class PortResult:
    """What a port produced: the report, the diff, and where the output went."""

    report: Report
    diff: str
    output: Path | None
    changes: list = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return self.report.verified

    @property
    def checks(self) -> list[Check]:
        return self.report.checks

    def _repr_markdown_(self) -> str:  # notebooks render this
        return self.report.to_markdown()

    def __repr__(self) -> str:
        return f"PortResult(status={self.report.status!r}, verified={self.verified}, output={self.output})"


# -- stages, callable one by one -----------------------------------------------------------
def load(src: Path | str) -> LegacyRepo:
    return load_repo(Path(src))


def analyse_repo(repo: LegacyRepo) -> tuple[dict, RepoAnalysis]:
    modules = repo.modules()
    entry_points = {reference.rsplit(".", 1)[-1] for reference in repo.auto_map.values()}
    return modules, analyse(modules, entry_points)


def rewrite_code(repo: LegacyRepo, allow_partial: bool = False, replicate_fused_qkv: bool = False) -> RewriteResult:
    with children_cached():  # the analysis walks the nodes the transforms walk again
        modules, analysis = analyse_repo(repo)
        result = rewrite(modules, analysis, {"config_json": repo.config, "replicate_fused": replicate_fused_qkv})
    if result.diagnostics and not allow_partial:
        raise UnsupportedPattern("the code holds shapes port-model does not understand", result.diagnostics)
    return result


def default_output(src: Path) -> Path:
    return src.resolve().parent / f"{src.resolve().name}-ported"


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda: no CUDA device is available")
    return device


# -- the whole port ------------------------------------------------------------------------
def run_port(src: Path | str, options: PortOptions, progress: Progress = lambda m: None) -> PortResult:
    started = time.monotonic()
    source = resolve_source(src, progress)  # a Hub repo id is fetched; a local folder is used as is
    src = source.path
    report = Report(source=source.label, hub=source.hub, versions=versions(), device=resolve_device(options.device))
    progress(f"reading {src}")
    repo = load(src)
    progress("rewriting code")
    result = rewrite_code(repo, options.allow_partial, options.replicate_fused_qkv)
    report.transforms = [c.as_dict() for c in result.changes]
    report.diagnostics = [d.as_dict() for d in result.diagnostics]
    diff = result.diff(repo.code)
    changed = result.changed_files(repo.code)
    requirements = undeclared_requirements(repo.code)
    report.dependencies = [r.as_dict() for r in requirements]
    if requirements:
        places = ", ".join(f"{r.distribution} ({r.file}:{r.line})" for r in requirements)
        progress(f"undeclared runtime dependencies, added to requirements.txt: {places}")

    out = Path(options.out) if options.out else (source.default_output or default_output(src))
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise BadInput.at(out, "the output must not be the input folder or inside it")
    _finish_interrupted_publish(out)
    if out.exists() and any(out.iterdir()) and not options.overwrite:
        raise BadInput.at(out, "output folder exists and is not empty (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    try:
        progress(f"writing code ({len(changed)} file(s) changed)")
        _write_files(repo, result, staging)
        _write_requirements(staging, requirements)
        progress(f"converting {len(repo.weight_files)} weight file(s) to safetensors")
        if repo.weight_files:
            try:
                conversion = convert_checkpoint(
                    repo.weight_files,
                    staging,
                    ops=result.weight_ops,
                    tied=result.facts.get("tied"),
                    max_shard_size=options.max_shard_size,
                )
            except RuntimeError as exc:
                raise WeightsMismatch(f"weight conversion failed its check: {exc}") from None
            report.weights = conversion.as_dict()
            report.weights["output_files"] = [Path(f).name for f in conversion.output_files]
            report.add(Check("F3", "weights bit-equal to the legacy tensors", "PASS" if conversion.verified else "FAIL",
                             "", {"tensors": conversion.tensors, "bytes": conversion.bytes}))
        else:
            report.add(Check("F3", "weights bit-equal to the legacy tensors", SKIP, "the repo has no weights"))

        if options.verify and repo.weight_files:
            verify(
                src,
                staging,
                repo.config,
                report,
                VerifyOptions(options.reference_transformers, report.device, options.timeout, cache_dir=options.cache_dir,
                              legacy_expands_placeholders="placeholders" in result.facts,
                              reference=options.reference),
                progress,
            )
            if options.sharded_proof:
                plans = result.facts.get("parallel")
                prove_sharded(staging, repo.config, plans, report, options.timeout, progress=progress,
                              device=report.device)
        elif options.verify:
            report.add(Check("F2", "equivalence with the legacy model", SKIP, "no weights to run"))
        else:
            report.add(Check("F2", "equivalence with the legacy model", SKIP, "--no-verify"))

        if result.diagnostics:
            report.status = "partial"
        elif report.failed:
            report.status = "verification-failed"
        else:
            report.status = "ported" if changed else "unchanged"
        report.output = str(out)
        report.timings["total_seconds"] = round(time.monotonic() - started, 2)
        _write_report(report, staging)
        _publish(staging, out, options.overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PortResult(report, diff, out, result.changes)


def check_only(src: Path | str, allow_partial: bool = False, replicate_fused_qkv: bool = False) -> PortResult:
    """What `--check` and `--diff` need: the rewrite, with nothing written."""
    source = resolve_source(src)
    repo = load(source.path)
    result = rewrite_code(repo, allow_partial, replicate_fused_qkv)
    report = Report(source=source.label, hub=source.hub, versions=versions())
    report.transforms = [c.as_dict() for c in result.changes]
    report.diagnostics = [d.as_dict() for d in result.diagnostics]
    needs_weights = any(not p.name.endswith(".safetensors") for p in repo.weight_files)
    changed = result.changed_files(repo.code)
    report.status = "needs-porting" if (changed or needs_weights) else "unchanged"
    return PortResult(report, result.diff(repo.code), None, result.changes)


# -- writing -------------------------------------------------------------------------------
PORT_SECTION = "## Ported with port-model"


def _write_files(repo: LegacyRepo, result: RewriteResult, staging: Path) -> None:
    for path in repo.other_files:
        rel = path.relative_to(repo.root)
        if rel.name in ("config.json", "porting_report.json", "PORTING.md"):
            continue
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    for name, text in result.files.items():
        (staging / name).write_text(text)
    for name, text in repo.code.items():
        if name not in result.files:
            (staging / name).write_text(text)
    config = updated_config(repo.config, result.facts)
    import transformers

    if "torch_dtype" in config and "dtype" not in config:
        config["dtype"] = config.pop("torch_dtype")
    config["transformers_version"] = transformers.__version__
    (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    settings = processor_settings(repo.config, result.facts)
    if settings:  # what a rewritten processor reads from the model's config (multimodal_placeholders)
        processor_config = staging / "processor_config.json"
        existing = json.loads(processor_config.read_text()) if processor_config.exists() else {}
        processor_config.write_text(json.dumps({**existing, **settings}, indent=2) + "\n")


def _write_requirements(staging: Path, requirements: list) -> None:
    """requirements.txt (copied from the input if it had one) with the undeclared dependencies added."""
    path = staging / "requirements.txt"
    existing = path.read_text() if path.exists() else ""
    merged = merged_requirements(existing, requirements)
    if merged != existing:
        path.write_text(merged)


def _write_report(report: Report, staging: Path) -> None:
    (staging / "porting_report.json").write_text(report.to_json())
    (staging / "PORTING.md").write_text(report.to_markdown())
    card = staging / "README.md"
    text = card.read_text() if card.exists() else ""
    if PORT_SECTION not in text:
        section = (
            f"\n{PORT_SECTION}\n\n"
            f"This repo's code was rewritten by port-model {report.versions.get('port-model')} to run under "
            f"transformers {report.versions.get('transformers')} and with inference engines' attention kernels. "
            f"Status: {report.status}{_verified_note(report)}. "
            "See `PORTING.md` and `porting_report.json` for every change and check.\n"
        )
        card.write_text(text.rstrip("\n") + ("\n" if text else "") + section)


def _verified_note(report: Report) -> str:
    if not report.verified:
        return ""
    if report.reference.get("weaker"):
        return " (verified against the legacy code run under the installed transformers with compatibility shims)"
    return " (verified against the legacy code)"


def _remove_stale_staging(out: Path) -> None:
    """Folders left by a run that was killed outright (SIGKILL, power loss)."""
    for leftover in out.parent.glob(f".{out.name}.partial-*"):
        pid = leftover.name.split(".partial-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: no pid is that large
        return False
    except PermissionError:
        return True
    return True


def _finish_interrupted_publish(out: Path) -> None:
    """A run killed inside `_publish --overwrite` left the previous output renamed aside:
    put it back if nothing took its place, else remove it (the new output is complete)."""
    for old in sorted(out.parent.glob(f".{out.name}.old-*")):
        pid = old.name.split(".old-", 1)[1].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.rename(out)


def _publish(staging: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished folder into place; an existing one is replaced only when asked."""
    if out.exists():
        if not overwrite:
            raise BadInput.at(out, "output folder appeared while porting")
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.time_ns()}")
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)
