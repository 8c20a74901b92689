"""Checks from the engine-style runs of the child (CONTRACT C3, C4, C5).

The child (`engine_run.py`, `packed.py`, `batching.py`) records figures; this module holds
the tolerances and turns the figures into checks. float32 runs on the CPU use the sdpa
tolerance of F2; bfloat16 runs on a GPU use F2's relative error and NMSE bounds.
"""

from __future__ import annotations

from porter.report import FAIL, PASS, SKIP, Check

FLOAT32_TOLERANCE = 1e-4
BF16_RELATIVE_ERROR = 1e-2
BF16_NMSE = 1e-4


def _variant_name(variant: dict) -> str:
    if variant.get("device", "cpu") == "cpu" and variant.get("dtype", "float32") == "float32":
        return ""
    return f", {variant.get('dtype')} {variant.get('kernel')} on {variant.get('device')}"


def packed_check(variant: dict) -> Check:
    name = "packed sequences, engine-style call" + _variant_name(variant)
    if "packed_error" in variant:
        return Check("C3", name, FAIL, f"the base model failed the engine-style call: {variant['packed_error']}")
    figures = dict(variant["packed"])
    if variant.get("dtype", "float32") == "float32":
        figures["tolerance"] = FLOAT32_TOLERANCE
        ok = figures["max_abs_diff"] <= FLOAT32_TOLERANCE
    else:
        figures.update(relative_error_bound=BF16_RELATIVE_ERROR, nmse_bound=BF16_NMSE)
        ok = figures["relative_error"] <= BF16_RELATIVE_ERROR and figures["nmse"] <= BF16_NMSE
    if ok:
        return Check("C3", name, PASS, "each packed sequence equals its separate run", figures)
    if not figures.get("kernel_calls"):
        reason = "the registered attention function was never called: attention bypasses the interface"
    elif "none" in figures.get("boundaries_from", []):
        reason = "the attention function received neither cu_seq_lens_q nor position_ids to find the sequences"
    else:
        reason = (
            "packed sequences differ from their separate runs: attention crosses sequence boundaries"
            " or positions do not come from position_ids"
        )
    return Check("C3", name, FAIL, reason, figures)


def _first_difference(reference: list, other: list) -> str:
    for i, (a, b) in enumerate(zip(reference, other, strict=False)):
        if a != b:
            return f"prompt {i}: {b} instead of {a}"
    return f"{len(other)} results for {len(reference)} prompts"


def _bias_cause(kernel: str) -> str:
    """Why a model whose attention takes an additive position bias (ALiBi) fails continuous batching."""
    if "eager" in kernel:
        return " (the model passes an additive position_bias, which transformers' paged|eager kernel never adds)"
    return (
        " (the model builds its additive position_bias, e.g. ALiBi, from what one call of it sees: the 2D padding"
        " mask, or the key states it computed itself; continuous batching hands the model a prepared 4D mask over"
        " every packed request and reads the cached keys inside the kernel, so the bias does not span them)"
    )


def batching_checks(variant: dict) -> list[Check]:
    suffix = _variant_name(variant)
    if "batching_error" in variant:
        return [Check("C5", "continuous batching equals generate" + suffix, FAIL, variant["batching_error"])]
    if "batching" not in variant:
        return []
    figures = variant["batching"]
    lengths = {"prompt_lengths": figures["prompt_lengths"]}
    biased = bool((variant.get("packed") or {}).get("position_bias"))
    softcapped = bool((variant.get("packed") or {}).get("softcap"))
    cached, recomputed = figures["generate"], figures.get("generate_no_cache")
    checks = []
    if recomputed is not None:
        same = cached == recomputed
        checks.append(
            Check(
                "C4", "generate with the KV cache equals a full recompute" + suffix, PASS if same else FAIL,
                "" if same else "the cache changes the tokens: " + _first_difference(recomputed, cached),
                {**lengths, "tokens": cached},
            )
        )
    for kernel, entry in figures["batched"].items():
        name = f"continuous batching ({kernel}) equals generate" + suffix
        if entry.get("error"):
            checks.append(Check("C5", name, FAIL, entry["error"] + (_bias_cause(kernel) if biased else ""), lengths))
            continue
        same = entry["tokens"] == cached
        detail = "" if same else "generate_batch gives different tokens: " + _first_difference(cached, entry["tokens"])
        detail += _bias_cause(kernel) if biased and not same else ""
        if softcapped and not same and "eager" in kernel:
            detail += " (the model passes softcap, which transformers' paged|eager kernel never applies)"
        checks.append(Check("C5", name, PASS if same else FAIL, detail, {**lengths, "tokens": entry["tokens"]}))
    return checks


def engine_checks(variants: list[dict]) -> list[Check]:
    """Every check the child's engine runs support, in the order they ran."""
    checks = []
    for variant in variants:
        if "declined" in variant:
            name = "engine-style runs" + _variant_name(variant)
            checks.append(Check("C3", name, SKIP, f"the model declares it unsupported: {variant['declined']}"))
            continue
        if "packed" in variant or "packed_error" in variant:
            checks.append(packed_check(variant))
        checks += batching_checks(variant)
    return checks
