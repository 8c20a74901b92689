"""E4 rows of the report: the ported processor's hooks, checked in a child process.

A repo whose code defines a processor (a `ProcessorMixin` subclass) gets its processor
loaded with `AutoProcessor` under the installed transformers, by
porter/verify/processor_runner.py in a child process, and checked over random image sizes:
predicted placeholder counts and pixel rows equal what the processor emits, and
`mm_token_type_ids` marks each image with one contiguous run.
"""

from __future__ import annotations

from pathlib import Path

from porter.report import FAIL, PASS, SKIP, Check
from porter.verify.child import current_python, run_model

PROCESSOR_RUNNER = Path(__file__).with_name("processor_runner.py")
RANDOM_SIZES = 24


def defines_processor(repo: Path) -> bool:
    return any("ProcessorMixin" in p.read_text(errors="replace") for p in repo.glob("processing_*.py"))


def run_processor_check(ported_repo: Path, work: Path, timeout: float, verify_size: list[int] | None) -> dict | None:
    """The child's findings, or None when the repo defines no processor. `verify_size` asks
    also for the placeholder count of one image of that size (the verification's images)."""
    if not defines_processor(ported_repo):
        return None
    spec = {"sizes": RANDOM_SIZES, "seed": 0, "min_size": 4, "max_size": 96, "verify_size": verify_size}
    run = run_model(current_python(), ported_repo, spec, work / "processor", timeout, runner=PROCESSOR_RUNNER)
    return run.result if run.result.get("ok") else {"ok": False, "error": run.error}


def placeholders_per_image(result: dict | None) -> int:
    """Placeholders the processor writes for one verification image; 1 where it expands
    none itself (legacy llava-style models expand one placeholder inside the model)."""
    return int((result or {}).get("verify_tokens") or 1)


def add_processor_checks(report, result: dict | None) -> None:
    if result is None:
        return
    name = "processor predicts its image placeholders"
    if not result.get("ok"):
        report.add(Check("E4", name, SKIP, f"the processor did not load or run here: {result.get('error')}"))
        return
    missing = [hook for hook, present in result["hooks"].items() if not present]
    if missing:
        report.add(Check("E4", name, FAIL, f"missing: {', '.join(missing)}"))
        return
    figures = {
        "sizes": result["sizes"],
        "distinct_counts": result["distinct_counts"],
        "mismatches": len(result["mismatches"]),
    }
    detail = str(result["mismatches"][:3]) if result["mismatches"] else ""
    report.add(Check("E4", name, FAIL if result["mismatches"] else PASS, detail, figures))
    runs_ok = result["runs"] is not None and result["runs"] == result["expected_runs"]
    detail = "" if runs_ok else f"runs {result['runs']} for images of {result['expected_runs']} tokens"
    report.add(Check("E4", "mm_token_type_ids: one contiguous run per image", PASS if runs_ok else FAIL, detail,
                     {"runs": result["runs"]}))
