"""Run one repo alone under the installed transformers and check it against itself.

What `port-model check` runs: no legacy reference is needed for the loading report (A2,
A3), the probe attention function (B1, B3, B4, C1, C3) and the engine-style runs (C3, C4,
C5). The probe's output is compared with the repo's own sdpa run.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from porter.report import FAIL, Check, Report
from porter.verify import _loading_checks, _pad_id, _probe_checks, make_inputs
from porter.verify.child import current_python, run_model
from porter.verify.engine import engine_checks


def run_alone(repo: Path, config: dict, device: str = "cpu", timeout: float = 600.0) -> list[Check]:
    """The dynamic checks of `repo`; a single A2 failure when it does not load and run."""
    work = Path(tempfile.mkdtemp(prefix="port-model-check-"))
    try:
        inputs = work / "inputs.safetensors"
        save_file(make_inputs(config), str(inputs))
        spec = {
            "inputs": str(inputs),
            "generate": False,  # greedy tokens matter only against a legacy reference
            "batching": "AutoModelForCausalLM" in (config.get("auto_map") or {}),
            "max_new_tokens": 8,
            "pad_token_id": _pad_id(config),
            "device": device,
            "attn_implementations": ["sdpa"],
            "probe": True,
            "engine": True,
            "recompute": True,  # C4: no legacy tokens to compare the cached generation with
        }
        run = run_model(current_python(), repo, spec, work / "run", timeout)
        if not run.ok:
            return [Check("A2", "loads and runs under current transformers", FAIL, run.error or "")]
        report = Report(source=str(repo))
        _loading_checks(report, run.result)
        outputs = load_file(str(run.outputs))
        _probe_checks(report, run.result.get("probe") or {}, outputs, outputs, "sdpa")
        for check in engine_checks(run.result.get("engine") or []):
            report.add(check)
        return report.checks
    finally:
        shutil.rmtree(work, ignore_errors=True)
