"""Image+text runs of a vision-language model, for runner.py (CONTRACT F2, B1).

Like runner.py this file is executed in the child with whichever transformers the model
belongs to (4.x for the legacy code, 5.x for the ported), so it imports nothing from
port-model. It records the logits and the embeddings the language model receives, which
hold the image features at the image placeholders: comparing them with the legacy ones
compares the image features without knowing what the model calls its vision tower.
"""

PREFIX = "image"


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
    """`{tag}.image.output` (logits) and `{tag}.image.embeds` (fused embeddings)."""
    if not has_images(inputs):
        return
    out, embeds = image_forward(model, inputs)
    value = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
    tensors[f"{tag}.{PREFIX}.output"] = value.detach().float().contiguous()
    if embeds is not None:
        tensors[f"{tag}.{PREFIX}.embeds"] = embeds.float().contiguous()


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
