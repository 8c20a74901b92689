"""Image inputs and image checks for vision-language models (CONTRACT F2, B1).

A config that nests a `vision_config` and names an image token (`image_token_id`, or the
legacy `image_token_index`) belongs to a vision-language model: the verification then
also runs a batch of images with text, in both the legacy and the ported model
(porter/verify/image_runs.py in the child), and compares the logits and the embeddings the
language model receives, which hold the image features.
"""

from __future__ import annotations

import torch

from porter.report import FAIL, PASS, Check

IMAGE_TOKEN_KEYS = ("image_token_id", "image_token_index")
IMAGE_BATCH = 2
TEXT_LENGTH = 10
PLACEHOLDER_POSITION = 2


def image_token_id(config: dict) -> int | None:
    for key in IMAGE_TOKEN_KEYS:
        if isinstance(config.get(key), int):
            return config[key]
    return None


def is_vision_language(config: dict) -> bool:
    return isinstance(config.get("vision_config"), dict) and image_token_id(config) is not None


def image_size(config: dict) -> list[int]:
    size = config["vision_config"].get("image_size", 224)
    return [size, size] if isinstance(size, int) else list(size)[:2]


def make_image_inputs(config: dict, placeholders_per_image: int = 1) -> dict[str, torch.Tensor]:
    """Two images and two prompts, each with its image's placeholder tokens, from a fixed seed.

    Images are `vision_config.image_size` square. Legacy models of the llava family expand
    one placeholder per image inside the model; where the processor expands them, the
    count it predicts for that size is passed in.
    """
    height, width = image_size(config)
    channels = int(config["vision_config"].get("num_channels", 3))
    text = config.get("text_config") or {}
    vocab = int(text.get("vocab_size") or config.get("vocab_size") or 100)
    token = image_token_id(config)
    generator = torch.Generator().manual_seed(4321)
    pixels = torch.randn(IMAGE_BATCH, channels, height, width, generator=generator)
    text_ids = torch.randint(3, vocab, (IMAGE_BATCH, TEXT_LENGTH), generator=generator)
    text_ids[text_ids == token] = 3  # the only placeholders are the ones put there
    # the same text whatever the count, so that prompts expanded by the model and by the processor line up
    placeholders = torch.full((IMAGE_BATCH, placeholders_per_image), token, dtype=text_ids.dtype)
    ids = torch.cat([text_ids[:, :PLACEHOLDER_POSITION], placeholders, text_ids[:, PLACEHOLDER_POSITION:]], dim=1)
    return {
        "image.pixel_values": pixels,
        "image.input_ids": ids,
        "image.attention_mask": torch.ones_like(ids),
    }


def corresponding_reference(reference: torch.Tensor, legacy_ids: torch.Tensor, token: int, per_image: int,
                            ported_length: int) -> tuple[torch.Tensor | None, str]:
    """The legacy output laid out position for position like the ported one, and how.

    A legacy model that expands each placeholder inside (llava before 4.47) returns rows for
    the expanded prompt: text that followed `k` placeholders moved right by `k * (per_image - 1)`
    and each image's rows fill its run, exactly where the ported prompt has them. That is
    the case when its length is the prompt's plus `per_image - 1` per placeholder of the
    fullest sequence (shorter ones are padded by the merge, so only unpadded prompts
    line up; the verification's are). Anything else cannot be compared row for row and says so."""
    legacy_length = legacy_ids.shape[-1]
    if reference.shape[1] == ported_length:
        expected = int(legacy_length + (legacy_ids == token).sum(-1).max() * (per_image - 1))
        if expected == ported_length:
            return reference, "legacy expanded the placeholders inside the model: rows compared position for position"
    return None, (f"legacy output has {reference.shape[1]} positions for a {legacy_length}-token prompt, "
                  f"the ported {ported_length} for the expanded one")


def add_image_checks(report, reference, outputs, ref_tag: str, tolerances: dict[str, float],
                     legacy_inputs: dict | None = None, ported_inputs: dict | None = None,
                     ported_result: dict | None = None) -> None:
    """F2 rows for the image batch: logits and the image-bearing embeddings, per kernel.
    `legacy_inputs`/`ported_inputs` differ when the legacy model expands its placeholders
    inside and the ported processor does it: rows are then matched by position."""
    from porter.verify import _max_diff  # imported here: porter.verify imports this module

    aligned, how = {}, ""
    if legacy_inputs is not None and ported_inputs is not None and f"{ref_tag}.image.output" in reference:
        legacy_ids, ported_ids = legacy_inputs["image.input_ids"], ported_inputs["image.input_ids"]
        token = int(legacy_ids[0, PLACEHOLDER_POSITION])
        per_image = int((ported_ids == token).sum()) // max(int((legacy_ids == token).sum()), 1)
        for kind in ("output", "embeds"):
            key = f"{ref_tag}.image.{kind}"
            if key in reference:
                aligned[key], how = corresponding_reference(reference[key], legacy_ids, token, per_image, ported_ids.shape[1])
    reference_rows = {**reference, **aligned}
    for tag, tolerance in tolerances.items():
        if f"{tag}.image.output" not in outputs:
            continue
        if aligned and aligned.get(f"{ref_tag}.image.output") is None:
            report.add(Check("F2", f"image features and logits vs legacy, float32 {tag}", FAIL, how))
            continue
        figures = {
            "logits_max_abs_diff": _max_diff(reference_rows[f"{ref_tag}.image.output"], outputs[f"{tag}.image.output"]),
            "tolerance": tolerance,
        }
        if aligned:
            figures["positions"] = how
        if f"{ref_tag}.image.embeds" in reference_rows and f"{tag}.image.embeds" in outputs:
            figures["image_embeddings_max_abs_diff"] = _max_diff(
                reference_rows[f"{ref_tag}.image.embeds"], outputs[f"{tag}.image.embeds"]
            )
        worst = max(v for k, v in figures.items() if k.endswith("diff"))
        status = PASS if worst <= tolerance else FAIL
        report.add(Check("F2", f"image features and logits vs legacy, float32 {tag}", status, "", figures))
        run = ((ported_result or {}).get("runs") or {}).get(tag) or {}
        _add_generation_check(report, reference, outputs, ref_tag, tag, (run.get("multimodal") or {}).get("generate_error"))


def _add_generation_check(report, reference, outputs, ref_tag: str, tag: str, error: str | None) -> None:
    """Greedy tokens after the image prompts, where the legacy model could generate."""
    expected = reference.get(f"{ref_tag}.image.generated")
    if expected is None:
        return
    name = f"greedy tokens with images vs legacy, {tag}"
    actual = outputs.get(f"{tag}.image.generated")
    if actual is None:
        report.add(Check("F2", name, FAIL, f"the ported model did not generate with images: {error}"))
        return
    same = actual.shape == expected.shape and torch.equal(actual, expected)
    report.add(Check("F2", name, PASS if same else FAIL, "", {"tokens": actual.tolist(), "legacy": expected.tolist()}))


def add_tower_probe_check(report, image_probe: dict | None) -> None:
    """B1 for every tower: the image batch calls the registered kernel once per layer of each tower."""
    if not image_probe:
        return
    layers = image_probe.get("layers") or {}
    expected = sum(layers.values())
    calls = image_probe.get("calls", 0)
    ok = calls == expected and expected > 0 and image_probe.get("sentinel")
    detail = "" if ok else f"{calls} calls for {expected} layers in {layers}"
    figures = {"calls": calls, "layers": layers, "modules": image_probe.get("modules")}
    report.add(Check("B1", "attention of every tower goes through the interface", PASS if ok else FAIL, detail, figures))


def add_structure_checks(report, ported_result: dict) -> None:
    """E1 and E2 rows, from what the ported model offered in its eager image run."""
    found = ((ported_result.get("runs") or {}).get("eager") or {}).get("multimodal")
    if not found:
        return
    e1 = found["base_model"] and found["language_model"] and found["base_without_head"] and found["head"]
    detail = "" if e1 else (
        "the generative class has no `model` base model holding `language_model` without a head"
        f" (base model: {found['base_model']})"
    )
    report.add(Check("E1", "base model fuses modalities, head class separate", PASS if e1 else FAIL, detail,
                     {k: found[k] for k in ("base_model", "language_model", "base_without_head", "head")}))
    if not found["get_image_features_on_base"]:
        report.add(Check("E2", "get_image_features on the base model", FAIL, "no get_image_features on the base model"))
        return
    counts = {k: found.get(k) for k in ("feature_rows", "placeholders")}
    same = counts["feature_rows"] is not None and counts["feature_rows"] == counts["placeholders"]
    report.add(Check("E2", "get_image_features on the base model, one row per placeholder", PASS if same else FAIL,
                     "" if same else "feature rows and image placeholders differ", counts))
