"""The engine-style call (CONTRACT C3), run in the child under the installed transformers.

Engines (vLLM, SGLang, TGI) pack several sequences into one row of `input_ids` `[1, T]`,
restart `position_ids` at 0 for each, pass no attention mask and `use_cache=False`, and
register their own attention function (`AttentionInterface.register` and
`config._attn_implementation`), which transformers then hands `attention_mask=None`. The
function must find the sequence boundaries in the keyword arguments it receives. Each
packed sequence's output must equal a separate run of that sequence.

Like `runner.py`, this module imports nothing from port-model: it runs inside the child.
"""

import torch

ENGINE_KERNEL = "port_model_engine"
PACKED_LENGTHS = (5, 7, 4)


def _boundaries(kwargs, length):
    """Sequence starts and ends, from what an engine passes: `cu_seq_lens_q`, else `position_ids`."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None:
        return [int(x) for x in cu.flatten().tolist()], "cu_seq_lens_q"
    positions = kwargs.get("position_ids")
    if positions is not None and positions.shape[-1] == length:
        starts = (positions.reshape(-1, length)[0] == 0).nonzero().flatten().tolist()
        return sorted(set(starts) | {0}) + [length], "position_ids"
    return [0, length], "none"  # nothing says where sequences end: attend as one sequence


def per_sequence_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention inside each packed sequence (causal unless the module says otherwise), as an
    engine's varlen kernel computes it."""
    length = query.shape[2]
    bounds, source = _boundaries(kwargs, length)
    per_sequence_attention.sources.append(source)
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    bias = kwargs.get("position_bias")
    if bias is not None:  # `[batch, heads, 1, kv]` broadcasts over the queries, as in the kernels that add it
        per_sequence_attention.biased = True
        bias = bias.expand(*bias.shape[:-2], length, bias.shape[-1])
    pieces = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=False):
        rows = torch.arange(end - start, device=query.device)[:, None]
        cols = torch.arange(end - start, device=query.device)[None, :]
        allowed = (cols <= rows) if getattr(module, "is_causal", True) else torch.ones_like(cols <= rows)
        if window:
            allowed = allowed & (rows - cols < window)
        mask = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device)
        mask = mask.masked_fill(~allowed, torch.finfo(query.dtype).min)
        if bias is not None:
            mask = mask + bias[..., start:end, start:end].to(query.dtype)
        q, k, v = query[:, :, start:end], key[:, :, start:end], value[:, :, start:end]
        softcap = kwargs.get("softcap")
        per_sequence_attention.softcapped |= bool(softcap)
        if softcap:  # capped scores, as the varlen kernels that take `softcap` compute them
            scale = scaling if scaling is not None else q.shape[-1] ** -0.5
            scores = torch.tanh(q @ k.transpose(-1, -2) * scale / softcap) * softcap + mask
            pieces.append(torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v)
        else:
            pieces.append(torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling))
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


per_sequence_attention.sources = []
per_sequence_attention.biased = False
per_sequence_attention.softcapped = False


def _configs(model):
    """The model's config and every sub-config: engines set the kernel on each."""
    found, pending = [], [model.config]
    while pending:
        config = pending.pop()
        if config in found:
            continue
        found.append(config)
        for name in getattr(config, "sub_configs", None) or {}:
            sub = getattr(config, name, None)
            if sub is not None and hasattr(sub, "_attn_implementation"):
                pending.append(sub)
    return found


def _hidden(output):
    value = output[0] if isinstance(output, (tuple, list)) else output.last_hidden_state
    return value.float()


def compare(reference, packed):
    """Largest absolute difference and, for low precision, relative error and NMSE (CONTRACT F2)."""
    diff = (reference - packed).abs()
    scale = reference.abs().max().clamp(min=1e-12)
    nmse = float(((reference - packed) ** 2).mean() / (reference**2).mean().clamp(min=1e-12))
    return {"max_abs_diff": float(diff.max()), "relative_error": float(diff.max() / scale), "nmse": nmse}


def engine_call(base_model, vocab_size, device="cpu"):
    """Run the packed call and the separate runs; return the figures (no tensors)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ENGINE_KERNEL, per_sequence_attention)
    generator = torch.Generator().manual_seed(4321)
    sequences = [torch.randint(min(3, vocab_size - 1), vocab_size, (1, n), generator=generator) for n in PACKED_LENGTHS]
    configs = _configs(base_model)
    previous = [c._attn_implementation for c in configs]
    separate = []
    with torch.no_grad():
        for ids in sequences:  # the model's own kernel, one unpadded sequence at a time
            ids = ids.to(device)
            positions = torch.arange(ids.shape[1], device=device)[None]
            separate.append(_hidden(base_model(input_ids=ids, position_ids=positions, use_cache=False, return_dict=False)))
        for config in configs:
            config._attn_implementation = ENGINE_KERNEL
        try:
            ids = torch.cat(sequences, dim=1).to(device)
            positions = torch.cat([torch.arange(n) for n in PACKED_LENGTHS])[None].to(device)
            cu = torch.tensor([0, *torch.tensor(PACKED_LENGTHS).cumsum(0).tolist()], dtype=torch.int32, device=device)
            per_sequence_attention.sources.clear()
            per_sequence_attention.biased = False
            per_sequence_attention.softcapped = False
            output = base_model(
                input_ids=ids, position_ids=positions, use_cache=False, return_dict=False,
                cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(PACKED_LENGTHS), max_length_k=max(PACKED_LENGTHS),
            )
        finally:
            for config, name in zip(configs, previous, strict=True):
                config._attn_implementation = name
    packed = _hidden(output)
    figures = {"lengths": list(PACKED_LENGTHS), "kernel_calls": len(per_sequence_attention.sources)}
    figures["boundaries_from"] = sorted(set(per_sequence_attention.sources))
    figures["position_bias"] = per_sequence_attention.biased
    figures["softcap"] = per_sequence_attention.softcapped
    per_sequence, start = [], 0
    for reference in separate:
        end = start + reference.shape[1]
        per_sequence.append(compare(reference, packed[:, start:end]))
        start = end
    for key in ("max_abs_diff", "relative_error", "nmse"):
        figures[key] = max(p[key] for p in per_sequence)
    figures["per_sequence_max_abs_diff"] = [p["max_abs_diff"] for p in per_sequence]
    return figures
