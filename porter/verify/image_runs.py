"""Image+text runs of a vision-language model, for runner.py (CONTRACT F2, B1).

Like runner.py this file is executed in the child with whichever transformers the model
belongs to (4.x for the legacy code, 5.x for the ported), so it imports nothing from
port-model. It records the logits and the embeddings the language model receives, which
hold the image features at the image placeholders: comparing them with the legacy ones
compares the image features without knowing what the model calls its vision tower.
"""

PREFIX = "image"
GENERATED_TOKENS = 4


def has_images(inputs):
    return f"{PREFIX}.pixel_values" in inputs


def image_forward(model, inputs, **extra):
    """The model's output on the image batch, and the embeddings its decoder received."""
    import torch

    captured = {}

    def capture(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and "embeds" not in captured:
            captured["embeds"] = embeds.detach()

    hook = model.get_decoder().register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            out = model(
                input_ids=inputs[f"{PREFIX}.input_ids"],
                pixel_values=inputs[f"{PREFIX}.pixel_values"],
                attention_mask=inputs[f"{PREFIX}.attention_mask"],
                use_cache=False,
                return_dict=True,
                **extra,
            )
    finally:
        hook.remove()
    return out, captured.get("embeds")


def run_images(model, inputs, tag, tensors):
    """`{tag}.image.output` (logits) and `{tag}.image.embeds` (fused embeddings); returns
    what the model's structure offers engines (E1, E2)."""
    if not has_images(inputs):
        return None
    out, embeds = image_forward(model, inputs)
    value = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
    tensors[f"{tag}.{PREFIX}.output"] = value.detach().float().contiguous()
    if embeds is not None:
        tensors[f"{tag}.{PREFIX}.embeds"] = embeds.float().contiguous()
    found = structure(model, inputs)
    error = generate_images(model, inputs, tag, tensors)
    if error:
        found["generate_error"] = error
    return found


def generate_images(model, inputs, tag, tensors):
    """`{tag}.image.generated`: greedy tokens after the image prompts, through the model's
    own generation path (caches, positions, pixels at prefill). Returns the error, if any."""
    import torch

    if not hasattr(model, "generate") or model.get_output_embeddings() is None:
        return None
    ids = inputs[f"{PREFIX}.input_ids"]
    pad = getattr(model.generation_config, "pad_token_id", None)
    try:
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                pixel_values=inputs[f"{PREFIX}.pixel_values"],
                attention_mask=inputs[f"{PREFIX}.attention_mask"],
                max_new_tokens=GENERATED_TOKENS,
                min_new_tokens=GENERATED_TOKENS,
                do_sample=False,
                pad_token_id=pad if isinstance(pad, int) else 0,
            )
    except Exception as exc:  # reported in the parent, beside the tokens it could compare
        return f"{type(exc).__name__}: {exc}"
    tensors[f"{tag}.{PREFIX}.generated"] = out[:, ids.shape[1] :].contiguous()
    return None


def structure(model, inputs):
    """E1: a base model (`model.model`) holding `language_model` and no head, under a class
    with the head. E2: `get_image_features` on that base model, one row per placeholder."""
    import torch

    base = getattr(model, "model", None)
    found = {
        "base_model": type(base).__name__ if base is not None else None,
        "language_model": base is not None and hasattr(base, "language_model"),
        "base_without_head": base is not None and not hasattr(base, "lm_head"),
        "head": model.get_output_embeddings() is not None,
        "get_image_features_on_base": base is not None and hasattr(base, "get_image_features"),
    }
    token = getattr(model.config, "image_token_id", None)
    if found["get_image_features_on_base"] and isinstance(token, int):
        with torch.no_grad():
            features = base.get_image_features(inputs[f"{PREFIX}.pixel_values"])
        rows = sum(f.reshape(-1, f.shape[-1]).shape[0] for f in (features if isinstance(features, (list, tuple)) else [features]))
        found["feature_rows"] = int(rows)
        found["placeholders"] = int((inputs[f"{PREFIX}.input_ids"] == token).sum())
    return found


def probe_images(model, inputs, calls, sentinel):
    """Attention calls made by every tower on the image batch (B1 for composite models)."""
    if not has_images(inputs):
        return None
    before = len(calls)
    image_forward(model, inputs, **{sentinel: 1234})
    made = calls[before:]
    return {
        "calls": len(made),
        "modules": sorted({c["module"] for c in made}),
        "sentinel": all(c.get("sentinel") == 1234 for c in made),
        "layers": tower_layers(model.config),
    }


def tower_layers(config):
    """Layers of every tower: `num_hidden_layers` of each nested config that has one."""
    found = {}
    for name in dir(config):
        if not name.endswith("_config") or name.startswith("_"):
            continue
        try:
            sub = getattr(config, name)
        except Exception:  # a property that needs more than the config has
            continue
        layers = getattr(sub, "num_hidden_layers", None)
        if isinstance(layers, int):
            found[name] = layers
    return found
