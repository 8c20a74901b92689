"""Run a model repo in a child process and record its outputs.

This file is executed by path with the interpreter of whichever environment the model
belongs in (a legacy transformers release for the reference, the current one for the
ported repo), so it imports nothing from port-model and works with transformers 4.x and
5.x alike. Usage: `python runner.py SPEC.json`. It writes `outputs.safetensors` and
`result.json` into the spec's `out_dir`; errors are written to `result.json` too.
"""

import inspect
import json
import os
import sys
import traceback

import image_runs  # the sibling modules: this file runs as a script from its own folder
from required_mask import mask_for

AUTO_CLASSES = (
    "AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoModelForMaskedLM", "AutoModel",
)


def _load_model(spec, attn_implementation):
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(spec["repo"], trust_remote_code=True)
    auto_name = spec.get("auto_class") or _auto_class_name(getattr(config, "auto_map", None) or {}, transformers)
    auto_cls = getattr(transformers, auto_name)
    kwargs = {"trust_remote_code": True, "output_loading_info": True}
    dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    kwargs[dtype_kw] = torch.float32
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model, info = auto_cls.from_pretrained(spec["repo"], **kwargs)
    except TypeError as exc:  # releases before 4.36 know no attn_implementation
        if "attn_implementation" not in str(exc):
            raise
        kwargs.pop("attn_implementation")
        model, info = auto_cls.from_pretrained(spec["repo"], **kwargs)
    model.eval()
    loading = {k: sorted(v) if isinstance(v, (list, set)) else str(v) for k, v in info.items() if v}
    never_loaded = _never_loaded(model, spec["repo"])
    if never_loaded:
        # Reported even where the model's ignore lists would have silenced it.
        loading["missing_keys"] = sorted(set(loading.get("missing_keys", [])) | set(never_loaded))
    return model, auto_name, loading


def _auto_class_name(auto_map, transformers):
    """The first of AUTO_CLASSES that the repo's auto_map names and this transformers has.

    Without one, an Auto class would pick a model by `model_type` from transformers' own
    library (or fail obscurely), and the run would not be of the repo's code."""
    for name in AUTO_CLASSES:
        if name in auto_map and hasattr(transformers, name):
            return name
    raise LookupError(
        f"config.json's auto_map names no model class to load: it maps {sorted(auto_map) or 'nothing'}, "
        f"and the verification loads one of {', '.join(AUTO_CLASSES)}"
        f" (transformers {transformers.__version__})"
    )


def _checkpoint_keys(repo):
    import glob

    keys = set()
    for path in glob.glob(os.path.join(repo, "*.safetensors")):
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            keys |= set(f.keys())
    if not keys:
        import torch

        for path in glob.glob(os.path.join(repo, "pytorch_model*.bin")):
            keys |= set(torch.load(path, map_location="meta", weights_only=True).keys())
    return keys


def _never_loaded(model, repo):
    """Parameters and persistent buffers absent from the checkpoint and not tied to one present."""
    stored = _checkpoint_keys(repo)
    if not stored:
        return []
    prefix = getattr(model, "base_model_prefix", "")
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    state = model.state_dict()
    pointers = {}
    for name, tensor in state.items():
        pointers.setdefault(tensor.data_ptr(), []).append(name)
    missing = []
    for name, tensor in state.items():
        candidates = {name, f"{prefix}.{name}", name[len(prefix) + 1 :] if name.startswith(prefix + ".") else name}
        if candidates & stored or name in tied:
            continue
        shared = pointers.get(tensor.data_ptr(), [])
        if any({n, f"{prefix}.{n}"} & stored for n in shared if n != name):
            continue  # tied in memory to a loaded tensor
        missing.append(name)
    return missing


def _accepts(model, name):
    params = inspect.signature(model.forward).parameters
    return name in params


def _run_forward(model, inputs, prefix, tensors, with_positions):
    import torch

    ids = inputs[f"{prefix}.input_ids"]
    kwargs = {"input_ids": ids}
    mask = mask_for(model, inputs, prefix)
    if mask is not None:
        kwargs["attention_mask"] = mask
    if with_positions and _accepts(model, "position_ids") and f"{prefix}.position_ids" in inputs:
        kwargs["position_ids"] = inputs[f"{prefix}.position_ids"]
    if _accepts(model, "use_cache"):  # encoders without a cache take no such keyword
        kwargs["use_cache"] = False
    with torch.no_grad():
        out = model(**kwargs, return_dict=True)
    value = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
    tensors[f"{prefix}.output"] = value.detach().float().contiguous()


def _run_generate(model, inputs, prefix, tensors, max_new_tokens, pad_token_id):
    import torch

    ids = inputs[f"{prefix}.input_ids"]
    kwargs = {"input_ids": ids, "max_new_tokens": max_new_tokens, "do_sample": False, "use_cache": True}
    kwargs["pad_token_id"] = pad_token_id
    mask = mask_for(model, inputs, prefix)
    if mask is not None:
        kwargs["attention_mask"] = mask
    with torch.no_grad():
        generated = model.generate(**kwargs)
    tensors[f"{prefix}.generated"] = generated[:, ids.shape[1] :].contiguous()


PROBE_NAME = "port_model_probe"
SENTINEL = "port_model_sentinel"
PROBED_ATTRIBUTES = ("layer_idx", "is_causal", "scaling", "num_key_value_groups", "head_dim", "config")


def _run_probe(spec, inputs, tensors):
    """Route attention through a registered function, the way engines do (B1, B3, C1, C3).

    The function records each call: the module's attributes and whether a sentinel
    keyword given to the top-level forward arrived. transformers gives a registered
    function no mask, so the single unpadded sequence is used.
    """
    import torch
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    calls = []
    kernel = sdpa_attention_forward

    def probe(module, query, key, value, attention_mask, **kwargs):
        record = {"module": type(module).__name__, "sentinel": kwargs.get(SENTINEL)}
        record["query_shape"] = list(query.shape)
        for name in PROBED_ATTRIBUTES:
            value_ = getattr(module, name, None)
            record[name] = value_ if isinstance(value_, (bool, int, float, type(None))) else type(value_).__name__
        record["has_config"] = hasattr(module, "config")
        calls.append(record)
        kwargs.pop(SENTINEL, None)
        window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
        record["sliding_window"] = window
        causal = kernel is not sdpa_attention_forward and getattr(module, "is_causal", True)
        if attention_mask is None and (window or causal):
            # Engines build the window themselves from what the module declares; so does the probe.
            # The eager function has no is_causal shortcut: it gets the causal mask, additive.
            q_len, k_len = query.shape[2], key.shape[2]
            rows = torch.arange(q_len, device=query.device)[:, None] + (k_len - q_len)
            cols = torch.arange(k_len, device=query.device)[None, :]
            allowed = (cols <= rows) & (rows - cols < window) if window else cols <= rows
            attention_mask = allowed[None, None]
            if kernel is not sdpa_attention_forward:
                attention_mask = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill(
                    ~allowed, torch.finfo(query.dtype).min
                )[None, None]
        return kernel(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(PROBE_NAME, probe)
    model, _, loading = _load_model(spec, PROBE_NAME)
    if getattr(type(model), "_supports_sdpa", True) is False:
        # A model that declares no sdpa support is probed with its own eager function.
        kernel = getattr(sys.modules[type(model).__module__], "eager_attention_forward", kernel)
    ids = inputs["single.input_ids"]
    # The positions of the reference run: a model whose default positions are not 0..T-1
    # (offset past a padding index, say) is compared on the same ones.
    kwargs = {"position_ids": inputs["single.position_ids"]} if _accepts(model, "position_ids") else {}
    mask = mask_for(model, inputs, "single")  # None unless the head cannot run without one
    if mask is not None:
        kwargs["attention_mask"] = mask
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=False, return_dict=True, **kwargs, **{SENTINEL: 1234})
    value = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
    tensors["probe.single.output"] = value.detach().float().contiguous()
    text_calls = list(calls)
    image_probe = image_runs.probe_images(model, inputs, calls, SENTINEL)
    config = model.config
    text_config = getattr(config, "get_text_config", lambda: config)()
    flags = {
        name: getattr(type(model), name, None)
        for name in ("_supports_attention_backend", "_supports_sdpa", "_supports_flash_attn", "_supports_flex_attn")
    }
    compatible = None
    if hasattr(model, "is_backend_compatible"):
        try:
            compatible = bool(model.is_backend_compatible())
        except Exception as exc:  # reported, not fatal
            compatible = f"error: {exc}"
    return {
        "calls": text_calls,
        "num_layers": getattr(text_config, "num_hidden_layers", None),
        "loading_info": loading,
        "flags": flags,
        "is_backend_compatible": compatible,
        "image_probe": image_probe,
    }


def main(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    out_dir = spec["out_dir"]
    result = {"ok": False, "runs": {}}
    try:
        if spec.get("shims"):  # a legacy reference under the installed transformers (--reference current)
            import legacy_shims

            result["shims"] = legacy_shims.install()
        import torch
        import transformers
        from safetensors.torch import load_file, save_file

        torch.manual_seed(0)
        torch.use_deterministic_algorithms(True, warn_only=True)
        result["transformers_version"] = transformers.__version__
        result["torch_version"] = torch.__version__
        inputs = load_file(spec["inputs"])
        tensors = {}
        sdpa_declared = True
        for implementation in spec.get("attn_implementations") or [None]:
            if implementation == "sdpa" and not sdpa_declared:
                # The model says its eager math is beyond sdpa (e.g. softcapped logits).
                result["runs"]["sdpa"] = {"skipped": "the model declares _supports_sdpa = False"}
                continue
            model, auto_name, loading = _load_model(spec, implementation)
            sdpa_declared = getattr(type(model), "_supports_sdpa", True) is not False
            tag = implementation or "default"
            run = {"auto_class": auto_name, "loading_info": loading, "class": type(model).__name__}
            run["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
            for prefix in ("single", "batch"):
                _run_forward(model, inputs, prefix, tensors, with_positions=True)
                tensors[f"{tag}.{prefix}.output"] = tensors.pop(f"{prefix}.output")
            run["multimodal"] = image_runs.run_images(model, inputs, tag, tensors)
            if spec.get("generate") and hasattr(model, "generate"):
                pad = spec.get("pad_token_id", 0)
                for prefix in ("single", "batch"):
                    _run_generate(model, inputs, prefix, tensors, spec["max_new_tokens"], pad)
                    tensors[f"{tag}.{prefix}.generated"] = tensors.pop(f"{prefix}.generated")
            result["runs"][tag] = run
            del model
        if spec.get("probe"):
            try:
                result["probe"] = _run_probe(spec, inputs, tensors)
            except Exception as exc:  # a model that breaks under an engine's kernel: a finding, not a crash
                result["probe"] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-6000:]}
        if spec.get("engine"):
            import engine_run  # a sibling file: packed calls and continuous batching (C3-C5)

            result["engine"] = engine_run.run(spec)
        save_file(tensors, os.path.join(out_dir, "outputs.safetensors"))
        result["ok"] = True
    except BaseException as exc:  # reported to the parent, which turns it into a diagnostic
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-6000:]
    with open(os.path.join(out_dir, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
