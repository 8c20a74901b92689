"""Mask helpers that transformers 4.x modeling modules defined and transformers 5 removed.

Remote code imports them from in-library modeling files (`from
transformers.models.opt.modeling_opt import _expand_mask`). Their behaviour was fixed and
small, so a removed one still in use is given back as a local definition with the body of
transformers 4.30.2 (type annotations left out, so the definition needs only `torch`).
Two families exist: the additive float masks that the BART lineage and its copies shared,
and BLOOM's boolean masks (True where masked). Which modules had which is read from the
4.30.2 wheel; a module not listed here keeps the removed-import diagnostic.
"""

from __future__ import annotations

_ADDITIVE_EXPAND_MASK = '''\
def {name}(mask, dtype, tgt_len=None):
    """Expands attention_mask from `[bsz, seq_len]` to `[bsz, 1, tgt_seq_len, src_seq_len]`
    (additive, as transformers 4.30.2 defined it)."""
    bsz, src_len = mask.size()
    tgt_len = tgt_len if tgt_len is not None else src_len
    expanded_mask = mask[:, None, None, :].expand(bsz, 1, tgt_len, src_len).to(dtype)
    inverted_mask = 1.0 - expanded_mask
    return inverted_mask.masked_fill(inverted_mask.to(torch.bool), torch.finfo(dtype).min)
'''

_ADDITIVE_CAUSAL_MASK = '''\
def {name}(input_ids_shape, dtype, device, past_key_values_length=0):
    """Additive causal mask `[bsz, 1, tgt_len, tgt_len + past]` (as transformers 4.30.2 defined it)."""
    bsz, tgt_len = input_ids_shape
    mask = torch.full((tgt_len, tgt_len), torch.tensor(torch.finfo(dtype).min, device=device), device=device)
    mask_cond = torch.arange(mask.size(-1), device=device)
    mask.masked_fill_(mask_cond < (mask_cond + 1).view(mask.size(-1), 1), 0)
    mask = mask.to(dtype)
    if past_key_values_length > 0:
        mask = torch.cat([torch.zeros(tgt_len, past_key_values_length, dtype=dtype, device=device), mask], dim=-1)
    return mask[None, None, :, :].expand(bsz, 1, tgt_len, tgt_len + past_key_values_length)
'''

_BOOLEAN_EXPAND_MASK = '''\
def {name}(mask, tgt_length):
    """Expands attention_mask from `[batch_size, src_length]` to `[batch_size, 1, tgt_length, src_length]`
    (boolean, True where masked, as transformers 4.30.2 defined it)."""
    batch_size, src_length = mask.shape
    tgt_length = tgt_length if tgt_length is not None else src_length
    expanded_mask = ~(mask[:, None, None, :].to(torch.bool))
    return expanded_mask.expand(batch_size, 1, tgt_length, src_length)
'''

_BOOLEAN_CAUSAL_MASK = '''\
def {name}(input_ids_shape, device, past_key_values_length):
    """Boolean causal mask, True where masked (as transformers 4.30.2 defined it)."""
    batch_size, target_length = input_ids_shape
    mask = torch.empty((target_length, target_length + past_key_values_length), dtype=torch.bool, device=device)
    seq_ids = torch.arange(target_length, device=device)
    mask[:, past_key_values_length:] = seq_ids[:, None] < seq_ids[None, :]
    if past_key_values_length > 0:
        mask[:, :past_key_values_length] = False
    expanded_mask = mask[None, None, :, :].expand(batch_size, 1, target_length, target_length + past_key_values_length)
    return expanded_mask
'''

# Modeling modules of transformers 4.30.2 whose helpers are the additive ones above.
_ADDITIVE_EXPAND_MODULES = (
    "autoformer bart biogpt blenderbot blenderbot_small clip clipseg git groupvit informer llama m2m_100 "
    "marian mbart mctct mvp nllb_moe open_llama opt owlvit pegasus pegasus_x plbart speech_to_text "
    "speech_to_text_2 speecht5 time_series_transformer trocr whisper x_clip xglm"
).split()
_ADDITIVE_CAUSAL_MODULES = (
    "autoformer bart bigbird_pegasus biogpt blenderbot blenderbot_small clip clipseg groupvit informer llama "
    "m2m_100 marian mbart mvp nllb_moe open_llama opt owlvit pegasus pegasus_x plbart speech_to_text "
    "speech_to_text_2 speecht5 time_series_transformer trocr whisper"
).split()


def _module(model: str) -> str:
    return f"transformers.models.{model}.modeling_{model}"


LEGACY_DEFINITIONS: dict[tuple[str, str], str] = {
    **{(_module(m), "_expand_mask"): _ADDITIVE_EXPAND_MASK for m in _ADDITIVE_EXPAND_MODULES},
    **{(_module(m), "_make_causal_mask"): _ADDITIVE_CAUSAL_MASK for m in _ADDITIVE_CAUSAL_MODULES},
    (_module("bloom"), "_expand_mask"): _BOOLEAN_EXPAND_MASK,
    (_module("bloom"), "_make_causal_mask"): _BOOLEAN_CAUSAL_MASK,
}


def legacy_definition(module: str, name: str, bound_as: str) -> str | None:
    """Source of a local definition of the removed `module.name`, bound to `bound_as`, or None."""
    template = LEGACY_DEFINITIONS.get((module, name))
    return template.format(name=bound_as) if template else None
