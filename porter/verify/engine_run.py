"""The engine checks in the child: the packed call (C3) and continuous batching (C4, C5),
in float32 on the CPU and, on a GPU, in bfloat16 with every attention kernel installed.

Called by `runner.py` when the spec asks for `engine`; imports nothing from port-model.
`batching` and `packed` are its sibling files, importable because the child runs
`runner.py` by path.
"""

import batching
import packed
import torch


def _auto_map(repo):
    import transformers

    config = transformers.AutoConfig.from_pretrained(repo, trust_remote_code=True)
    return config, getattr(config, "auto_map", None) or {}


def _load(repo, auto_name, kernel, dtype, device):
    import transformers

    cls = getattr(transformers, auto_name)
    model = cls.from_pretrained(repo, trust_remote_code=True, dtype=dtype, attn_implementation=kernel)
    return model.to(device).eval()


def _base_model(repo, auto_map, kernel, dtype, device):
    """The base model as engines build it (`AutoModel`); else the base inside the head class.
    A repo whose `AutoModel` is itself a head (a reward model's scoring head) gives its base."""
    if "AutoModel" in auto_map:
        model = _load(repo, "AutoModel", kernel, dtype, device)
        if model.base_model is not model and not hasattr(model, "get_image_features"):  # a fusing base stays whole
            return model.base_model, "AutoModel.base_model"
        return model, "AutoModel"
    head = next(name for name in auto_map if name.startswith("AutoModelFor"))
    return _load(repo, head, kernel, dtype, device).base_model, f"{head}.base_model"


GPU_KERNELS = ("flash_attention_2", "flash_attention_3", "flex_attention")  # besides sdpa, in this order


def installed_kernels():
    """The kernels of GPU_KERNELS that transformers finds installed and usable here (its own
    availability checks, which also need CUDA for flash)."""
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available, is_torch_flex_attn_available

    checks = (is_flash_attn_2_available, is_flash_attn_3_available, is_torch_flex_attn_available)
    return [kernel for kernel, available in zip(GPU_KERNELS, checks, strict=True) if available()]


def gpu_kernels(installed=None):
    """Attention kernels to try on a GPU: sdpa, and each kernel of `installed` (default: what
    `installed_kernels` finds) that the engines' Transformers backends use."""
    installed = installed_kernels() if installed is None else installed
    return ["sdpa", *(kernel for kernel in GPU_KERNELS if kernel in installed)]


def gpu_variants(kernels):
    """(kernel, continuous-batching kernels) per bfloat16 GPU run: continuous batching takes
    sdpa, paged|eager and the flash kernels (not flex), so a flash run also batches on its own."""
    return [(kernel, batching.BATCHING_KERNELS + ((kernel,) if kernel.startswith("flash") else ())) for kernel in kernels]


def _declined(exc):
    """The model's own flags refuse the kernel (CONTRACT B4: ALiBi with flash): a skip, not a failure."""
    text = str(exc)
    return isinstance(exc, ValueError) and "does not support" in text and text


def _variant(spec, auto_map, vocab, kernel, dtype, device, generative, batching_kernels):
    entry = {"kernel": kernel, "dtype": str(dtype).replace("torch.", ""), "device": device}
    try:
        base, entry["base_model_from"] = _base_model(spec["repo"], auto_map, kernel, dtype, device)
        entry["packed"] = packed.engine_call(base, vocab, device)
        del base
    except Exception as exc:  # each failure is a check's reason, not the end of the run
        if _declined(exc):
            entry["declined"] = _declined(exc)
            return entry
        entry["packed_error"] = f"{type(exc).__name__}: {exc}"
    if generative:
        try:
            model = _load(spec["repo"], "AutoModelForCausalLM", kernel, dtype, device)
            entry["batching"] = batching.continuous_batching(
                model, vocab, spec.get("max_new_tokens", 8), spec.get("pad_token_id", 0), batching_kernels, device,
                recompute=bool(spec.get("recompute")),
            )
        except Exception as exc:
            entry["batching_error"] = f"{type(exc).__name__}: {exc}"
    return entry


def run(spec):
    """Every variant the spec and the machine allow; a list of figure dictionaries."""
    try:
        config, auto_map = _auto_map(spec["repo"])
    except Exception as exc:
        return [{"kernel": "sdpa", "packed_error": f"{type(exc).__name__}: {exc}"}]
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab = int(getattr(text, "vocab_size", None) or 100)
    generative = bool(spec.get("batching", spec.get("generate"))) and "AutoModelForCausalLM" in auto_map
    variants = [_variant(spec, auto_map, vocab, "sdpa", torch.float32, "cpu", generative, batching.BATCHING_KERNELS)]
    if "declined" in variants[0]:
        # A model that refuses sdpa (softcapping, say) still serves with the kernels engines
        # register and with eager: the CPU runs load it with eager instead.
        eager_kernels = tuple(k for k in batching.BATCHING_KERNELS if k != "sdpa")
        variants = [variants[0], _variant(spec, auto_map, vocab, "eager", torch.float32, "cpu", generative, eager_kernels)]
    if spec.get("device") == "cuda" and torch.cuda.is_available():
        for kernel, kernels in gpu_variants(gpu_kernels()):
            variants.append(_variant(spec, auto_map, vocab, kernel, torch.bfloat16, "cuda", generative, kernels))
    return variants
