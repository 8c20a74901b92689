"""Continuous batching (CONTRACT C5) and the KV cache (C4), run in the child.

transformers' continuous batching (`generate_batch`) runs the model on a paged cache with
packed prompts of different lengths, the way serving engines do. A model whose attention or
cache bypasses the interface still runs there but gives other tokens than `generate`: the
tokens are compared, prompt by prompt. `generate` itself is checked against a full
recompute without a cache (C4).

Like `runner.py`, this module imports nothing from port-model: it runs inside the child.
"""

import torch

PROMPT_LENGTHS = (3, 9, 5, 12)
BATCHING_KERNELS = ("sdpa", "paged|eager")


def prompts(vocab_size):
    generator = torch.Generator().manual_seed(2024)
    low = min(3, vocab_size - 1)
    return [torch.randint(low, vocab_size, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]


def _until_eos(tokens, eos):
    """Tokens up to and including the first end-of-sequence token: generation stops there."""
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
    return tokens


def _eos_ids(model):
    eos = getattr(model.generation_config, "eos_token_id", None)
    eos = eos if eos is not None else getattr(model.config, "eos_token_id", None)
    return set(eos) if isinstance(eos, (list, tuple)) else ({eos} if isinstance(eos, int) else set())


def _generate(model, prompt, max_new_tokens, pad_token_id, use_cache, device):
    ids = torch.tensor([prompt], device=device)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            use_cache=use_cache, pad_token_id=pad_token_id,
        )
    return out[0, len(prompt) :].tolist()


def _batching_config():
    """A small paged cache: the default sizes itself from free accelerator memory, which on
    a CPU means gigabytes allocated for a few tokens."""
    from transformers import ContinuousBatchingConfig

    return ContinuousBatchingConfig(
        num_blocks=32, page_size=16, max_batch_tokens=64, max_requests_per_batch=len(PROMPT_LENGTHS),
        use_cuda_graph=False, use_async_batching=False, auto_switch_to_flash=False,
    )


def continuous_batching(
    model, vocab_size, max_new_tokens, pad_token_id, kernels=BATCHING_KERNELS, device="cpu", recompute=False
):
    """Greedy tokens of `generate` (and, with `recompute`, without a cache) and of `generate_batch` per kernel."""
    from transformers import GenerationConfig

    eos = _eos_ids(model)
    batch = prompts(vocab_size)
    cached = [_until_eos(_generate(model, p, max_new_tokens, pad_token_id, True, device), eos) for p in batch]
    result = {"prompt_lengths": list(PROMPT_LENGTHS), "generate": cached, "batched": {}}
    if recompute:  # where no legacy reference checks the cache, a full recompute does
        result["generate_no_cache"] = [
            _until_eos(_generate(model, p, max_new_tokens, pad_token_id, False, device), eos) for p in batch
        ]
    original = model.config._attn_implementation
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_token_id,
        eos_token_id=sorted(eos) if eos else None,
    )
    for kernel in kernels:
        entry = {}
        try:
            model.set_attn_implementation(kernel)
            with torch.no_grad():
                outputs = model.generate_batch(
                    batch, generation_config=config, continuous_batching_config=_batching_config(), progress_bar=False
                )
            finished = list(outputs.values())
            entry["tokens"] = [_until_eos(list(o.generated_tokens), eos) for o in finished]
            errors = [str(o.error) for o in finished if getattr(o, "error", None)]
            if errors or len(finished) != len(batch):
                entry["error"] = "; ".join(sorted(set(errors))) or f"{len(finished)} of {len(batch)} requests finished"
        except Exception as exc:  # reported as the check's reason
            entry["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            model.set_attn_implementation(original)
        result["batched"][kernel] = entry
    return result
