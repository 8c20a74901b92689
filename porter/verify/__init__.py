"""Prove the ported repo computes what the legacy one did (CONTRACT F1, F2, B1-B4, C1, C3-C5).

The legacy repo runs in its own transformers release's environment, the ported repo in
the current one; both in child processes on the same deterministic inputs. Outputs are
compared here, in the parent, which never imports either repo's code.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from porter.errors import ReferenceUnavailable
from porter.report import FAIL, PASS, SKIP, Check, Report
from porter.verify.child import _readable_error, current_python, run_model
from porter.verify.engine import engine_checks
from porter.verify.images import (
    add_image_checks,
    add_structure_checks,
    add_tower_probe_check,
    image_size,
    is_vision_language,
    make_image_inputs,
)
from porter.verify.processor_checks import add_processor_checks, placeholders_per_image, run_processor_check
from porter.verify.reference import OWN, prepare_reference
from porter.verify.side_by_side import run_pair, threads_each, weight_bytes

EAGER_TOLERANCE = 1e-5
SDPA_TOLERANCE = 1e-4
SEQUENCE_LENGTH = 12
PADDING = 4


@dataclass
class VerifyOptions:
    reference_transformers: str | None = None
    device: str = "cpu"
    timeout: float = 900.0
    max_new_tokens: int = 8
    cache_dir: Path | None = None
    # the legacy model expands one placeholder per image inside; the ported processor does it
    legacy_expands_placeholders: bool = False
    reference: str = OWN  # own | current | own-or-current (porter.verify.reference)


def make_inputs(config: dict, image_placeholders: int = 1) -> dict[str, torch.Tensor]:
    """A single sequence and a left-padded batch of two, from a fixed seed (and images with
    text, `image_placeholders` tokens each, for a vision-language model)."""
    text = config.get("text_config") or config
    vocab = int(text.get("vocab_size") or config.get("vocab_size") or 100)
    pad = text.get("pad_token_id", config.get("pad_token_id"))
    pad = int(pad) if isinstance(pad, int) else 0
    generator = torch.Generator().manual_seed(1234)
    low = min(3, vocab - 1)
    single = torch.randint(low, vocab, (1, SEQUENCE_LENGTH), generator=generator)
    batch = torch.randint(low, vocab, (2, SEQUENCE_LENGTH), generator=generator)
    mask = torch.ones_like(batch)
    batch[1, :PADDING] = pad
    mask[1, :PADDING] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    inputs = {
        "single.input_ids": single,
        "single.position_ids": torch.arange(SEQUENCE_LENGTH).unsqueeze(0),
        "batch.input_ids": batch,
        "batch.attention_mask": mask,
        "batch.position_ids": positions,
    }
    if is_vision_language(config):
        inputs.update(make_image_inputs(config, image_placeholders))
    return inputs


def _pad_id(config: dict) -> int:
    text = config.get("text_config") or config
    pad = text.get("pad_token_id", config.get("pad_token_id"))
    if isinstance(pad, int):
        return pad
    eos = text.get("eos_token_id", config.get("eos_token_id"))
    return eos if isinstance(eos, int) else 0


def verify(
    legacy_repo: Path,
    ported_repo: Path,
    config: dict,
    report: Report,
    options: VerifyOptions,
    progress=lambda message: None,
) -> None:
    """Run both repos and add every check, with its figures, to `report`."""
    work = Path(tempfile.mkdtemp(prefix="port-model-verify-"))
    try:
        _verify_in(work, legacy_repo, ported_repo, config, report, options, progress)
    finally:
        if os.environ.get("PORT_MODEL_KEEP_WORK"):
            report.reference["work_dir"] = str(work)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _verify_in(work, legacy_repo, ported_repo, config, report, options, progress) -> None:
    inputs_path = work / "inputs.safetensors"
    vision_language = is_vision_language(config)
    processor = run_processor_check(ported_repo, work, options.timeout, image_size(config) if vision_language else None)
    inputs = make_inputs(config, placeholders_per_image(processor))
    save_file(inputs, str(inputs_path))
    legacy_inputs, legacy_inputs_path = inputs, inputs_path
    if vision_language and options.legacy_expands_placeholders:
        legacy_inputs, legacy_inputs_path = make_inputs(config, 1), work / "legacy_inputs.safetensors"
        save_file(legacy_inputs, str(legacy_inputs_path))
    generative = "AutoModelForCausalLM" in (config.get("auto_map") or {})
    spec = {
        "inputs": str(inputs_path),
        "generate": generative,
        "max_new_tokens": options.max_new_tokens,
        "pad_token_id": _pad_id(config),
        "device": options.device,
    }

    version = options.reference_transformers or config.get("transformers_version")
    try:
        reference = prepare_reference(legacy_repo, version, options.reference, options.cache_dir, progress)
    except ReferenceUnavailable as exc:
        what = f"no environment for transformers {version}" if version else "no reference"
        report.add(Check("F1", "reference run", FAIL, f"{what}: {exc}"))
        return
    report.reference = reference.info

    release = reference.info["transformers_version"]
    where = "the installed transformers with shims" if reference.shims else f"transformers {release}"
    ported_spec = {**spec, "attn_implementations": ["eager", "sdpa"], "probe": True, "engine": True}
    legacy_spec = {**spec, "inputs": str(legacy_inputs_path), "attn_implementations": ["eager"], "shims": reference.shims}
    threads = threads_each(weight_bytes(ported_repo))
    together = " side by side" if threads else ""
    progress(f"running the legacy model under {where} and the ported one under the installed transformers{together}")
    legacy, ported = run_pair(
        lambda: run_model(reference.python, legacy_repo, legacy_spec, work / "legacy", options.timeout, threads=threads),
        lambda: run_model(current_python(), ported_repo, ported_spec, work / "ported", options.timeout, threads=threads),
        together=bool(threads),
        second_needs=lambda legacy: legacy.ok,
    )
    if reference.shims:
        reference.info["shims"] = legacy.result.get("shims", [])
    if not legacy.ok:
        detail = f"legacy code failed under {where}: {legacy.error}"
        report.add(Check("F1", reference.check_name(), FAIL, detail))
        return
    ran_under = legacy.result["transformers_version"]
    if reference.shims and _loading_problems(legacy.result):
        # Loading through shims is not trusted blindly: a reference with uninitialised weights proves nothing.
        detail = f"the legacy model did not load completely under the shims: {_loading_problems(legacy.result)}"
        report.add(Check("F1", reference.check_name(), FAIL, detail))
        return
    report.add(Check("F1", reference.check_name(), PASS, reference.describe(ran_under)))
    if not ported.ok:
        report.add(Check("A2", "loads and runs under current transformers", FAIL, ported.error or ""))
        return
    _loading_checks(report, ported.result)
    reference = load_file(str(legacy.outputs))
    outputs = load_file(str(ported.outputs))
    ref_tag = "eager" if "eager.single.output" in reference else "default"
    _numeric_checks(report, reference, outputs, ref_tag, inputs, generative)
    _probe_checks(report, ported.result.get("probe") or {}, reference, outputs, ref_tag)
    add_image_checks(report, reference, outputs, ref_tag, {"eager": EAGER_TOLERANCE, "sdpa": SDPA_TOLERANCE},
                     legacy_inputs if legacy_inputs is not inputs else None, inputs, ported.result)
    add_tower_probe_check(report, (ported.result.get("probe") or {}).get("image_probe"))
    add_structure_checks(report, ported.result)
    add_processor_checks(report, processor)
    for check in engine_checks(ported.result.get("engine") or []):
        report.add(check)


def _loading_problems(result: dict) -> dict:
    problems = {}
    for tag, run in result["runs"].items():
        for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            if run.get("loading_info", {}).get(key):
                problems[f"{tag}.{key}"] = run["loading_info"][key]
    return problems


def _loading_checks(report: Report, result: dict) -> None:
    problems = _loading_problems(result)
    status = FAIL if problems else PASS
    detail = "loaded with trust_remote_code under transformers " + result["transformers_version"]
    report.add(Check("A2", "loads under current transformers", PASS, detail))
    report.add(Check("A3", "no missing/unexpected keys", status, str(problems) if problems else "", {}))


def _max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    if a.shape != b.shape:
        return float("inf")
    diff = (a - b).abs()
    # Padded positions are left out of per-position outputs; a head with one output per
    # sequence (a reward or pooled score, `[batch, n]`) is compared whole.
    if mask is not None and diff.shape[: mask.dim()] == mask.shape:
        diff = diff[mask.bool()]
    return float(diff.max()) if diff.numel() else 0.0


def _numeric_checks(report, reference, outputs, ref_tag, inputs, generative) -> None:
    mask = inputs["batch.attention_mask"]
    for tag, tolerance in (("eager", EAGER_TOLERANCE), ("sdpa", SDPA_TOLERANCE)):
        if f"{tag}.single.output" not in outputs:
            report.add(Check("F2", f"logits vs legacy, float32 {tag}", SKIP, "the model declares no support for it"))
            continue
        figures = {
            "single_max_abs_diff": _max_diff(reference[f"{ref_tag}.single.output"], outputs[f"{tag}.single.output"]),
            "padded_batch_max_abs_diff": _max_diff(
                reference[f"{ref_tag}.batch.output"], outputs[f"{tag}.batch.output"], mask
            ),
            "tolerance": tolerance,
        }
        worst = max(figures["single_max_abs_diff"], figures["padded_batch_max_abs_diff"])
        status = PASS if worst <= tolerance else FAIL
        report.add(Check("F2", f"logits vs legacy, float32 {tag}", status, "", figures))
        if generative:
            same = all(
                torch.equal(reference[f"{ref_tag}.{p}.generated"], outputs[f"{tag}.{p}.generated"])
                for p in ("single", "batch")
            )
            figures = {"tokens": outputs[f"{tag}.batch.generated"].tolist()}
            report.add(Check("F2", f"greedy tokens vs legacy, {tag}", PASS if same else FAIL, "", figures))


def _unrouted(probe: dict, calls: int, layers) -> str:
    if probe.get("error"):
        return "the model fails with an engine's registered attention function: " + _readable_error(probe)
    return f"registered function called {calls} times for {layers} layers"


def _probe_checks(report, probe, reference, outputs, ref_tag) -> None:
    calls = probe.get("calls") or []
    layers = probe.get("num_layers")
    routed = bool(calls) and (layers is None or len(calls) == layers)
    report.add(
        Check(
            "B1",
            "attention goes through the interface, once per layer",
            PASS if routed else FAIL,
            "" if routed else _unrouted(probe, len(calls), layers),
            {"calls": len(calls), "layers": layers},
        )
    )
    arrived = bool(calls) and all(c.get("sentinel") == 1234 for c in calls)
    report.add(Check("C1", "kwargs reach attention", PASS if arrived else FAIL, "sentinel keyword from the head's forward"))
    missing = sorted(
        {
            name
            for c in calls
            for name in ("layer_idx", "is_causal", "scaling", "num_key_value_groups", "head_dim")
            if c.get(name) is None
        }
        | ({"layer_idx:int"} if any(not isinstance(c.get("layer_idx"), int) for c in calls) else set())
    )
    report.add(Check("B3", "attention module attributes", FAIL if missing or not calls else PASS, ", ".join(missing)))
    flags = probe.get("flags") or {}
    flags_ok = bool(flags.get("_supports_attention_backend")) and probe.get("is_backend_compatible") in (True, None)
    report.add(Check("B4", "backend flags", PASS if flags_ok else FAIL, str(flags), {}))
    if "probe.single.output" in outputs:
        diff = _max_diff(reference[f"{ref_tag}.single.output"], outputs["probe.single.output"])
        status = PASS if diff <= SDPA_TOLERANCE else FAIL
        report.add(
            Check("C3", "registered kernel with no mask (engine style)", status, "", {"max_abs_diff": diff})
        )
    else:
        report.add(Check("C3", "registered kernel with no mask (engine style)", SKIP, "no probe output"))
