"""Check a repo's processor hooks in a child process (CONTRACT E4).

Executed by path with the current transformers (`python processor_runner.py SPEC.json`),
like runner.py; it imports nothing from port-model. For random image sizes it compares
the placeholder counts `_get_num_multimodal_tokens` predicts with the placeholders and
pixel rows the processor emits, and checks that `mm_token_type_ids` marks each image
with one contiguous run. Writes `result.json` into the spec's `out_dir`.
"""

import json
import os
import random
import sys
import traceback


def _placeholder_prompt(processor, count):
    token = processor.image_token
    return " ".join(f"{token} x" for _ in range(count))


def _runs(types):
    runs, length = [], 0
    for value in list(types) + [0]:
        if int(value) == 1:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    return runs


def check(spec):
    import numpy as np
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(spec["repo"], trust_remote_code=True)
    found = {name: hasattr(processor, name) for name in ("image_token", "image_token_id", "image_token_ids")}
    found["_get_num_multimodal_tokens"] = hasattr(processor, "_get_num_multimodal_tokens")
    if not all(found.values()):
        return {"hooks": found}
    verify_size = spec.get("verify_size")
    verify_tokens = None
    if verify_size:
        verify_tokens = int(processor._get_num_multimodal_tokens(image_sizes=[verify_size]).num_image_tokens[0])
    rng = random.Random(spec.get("seed", 0))
    low, high = spec.get("min_size", 4), spec.get("max_size", 96)
    sizes = [(rng.randint(low, high), rng.randint(low, high)) for _ in range(spec.get("sizes", 20))]
    predicted = processor._get_num_multimodal_tokens(image_sizes=sizes)
    mismatches = []
    counts = (predicted.num_image_tokens or [], predicted.num_image_patches or [])
    if any(len(c) != len(sizes) for c in counts):
        mismatches.append({"predicted_lengths": [len(c) for c in counts], "sizes": len(sizes)})
    for (height, width), tokens, patches in zip(sizes, *counts, strict=False):
        image = np.random.default_rng(height * 1000 + width).integers(0, 255, (height, width, 3), dtype=np.uint8)
        out = processor(text=_placeholder_prompt(processor, 1), images=[image])
        emitted = int((np.asarray(out["input_ids"]) == processor.image_token_id).sum())
        rows = len(out["pixel_values"])
        if emitted != tokens or rows != patches:
            mismatches.append({"size": [height, width], "predicted": [tokens, patches], "emitted": [emitted, rows]})
    group = sizes[:3]
    images = [np.zeros((h, w, 3), dtype=np.uint8) for h, w in group]
    out = processor(text=_placeholder_prompt(processor, len(group)), images=images, return_mm_token_type_ids=True)
    types = out.get("mm_token_type_ids")
    runs = _runs(np.asarray(types)[0]) if types is not None else None
    expected_runs = processor._get_num_multimodal_tokens(image_sizes=group).num_image_tokens
    return {
        "hooks": found,
        "sizes": len(sizes),
        "distinct_counts": len(set(predicted.num_image_tokens)),
        "mismatches": mismatches,
        "runs": runs,
        "expected_runs": list(expected_runs),
        "verify_tokens": verify_tokens,
    }


def main(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    result = {"ok": False}
    try:
        result.update(check(spec))
        result["ok"] = True
    except BaseException as exc:  # reported to the parent
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-6000:]
    with open(os.path.join(spec["out_dir"], "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
