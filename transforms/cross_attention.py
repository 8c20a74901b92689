"""Cross-attention of encoder-decoder models, which port-model refuses.

An encoder-decoder model (BART, T5, Marian, Whisper style) holds two stacks of layers, and
its decoder's attention computes keys and values from the encoder's output. Porting it
needs an encoder-decoder cache (self- and cross-attention keys kept apart, the cross ones
computed once) and a mask per attention kind; port-model does not write those, and a port
that shared one cache between both would generate wrong tokens. So the attention class is
refused with the input it projects keys and values from and the two stacks that show the
model is an encoder-decoder.

Recognised by data flow, not by name: an attention module whose forward passes a parameter
other than its first input to one of its own linear projections (or hands both to a
helper), in a repo where a pretrained class holds two children that each own a layer list.
"""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst

from transforms.cst_utils import (
    call_name,
    dotted,
    is_self_attr,
    last_part,
    names_read,
    param_names,
    single_assign,
    walk,
)

PROJECTIONS = {"Linear", "Conv1D"}


@dataclass(frozen=True)
class CrossAttention:
    """Why an attention class is a cross-attention of an encoder-decoder model."""

    source: str  # the forward parameter keys and values are projected from
    call: cst.Call  # where
    model: str  # the class holding both stacks
    stacks: tuple[str, str]

    def message(self, name: str) -> str:
        encoder, decoder = self.stacks
        return (
            f"{name} is a cross-attention: it projects keys and values from `{self.source}`, and {self.model} "
            f"holds two layer stacks ({encoder}, {decoder}), an encoder-decoder model; port-model does not port "
            "encoder-decoder models (their cross-attention needs an encoder-decoder cache)"
        )


def find_cross_attention(analysis, name: str) -> CrossAttention | None:
    """The cross-attention evidence for attention class `name`, or None."""
    stacks = _encoder_decoder(analysis)
    if stacks is None:
        return None
    info = analysis.classes[name]
    forward, init = info.methods.get("forward"), info.methods.get("__init__")
    if forward is None or init is None:
        return None
    projections = _projections(init)
    inputs = param_names(forward)[2:]  # after self and the hidden states
    for call in walk(forward):
        if not isinstance(call, cst.Call):
            continue
        # `self.k_proj(x)`, or a helper handed the projection: `project(x, self.k, ...)` (T5).
        operands = [call.func, *(a.value for a in call.args)]
        if not any(is_self_attr(o) and o.attr.value in projections for o in operands):
            continue
        read = set().union(set(), *(names_read(a.value) for a in call.args)) & set(inputs)
        if read:
            return CrossAttention(sorted(read)[0], call, stacks[0], stacks[1])
    return None


def _projections(init: cst.FunctionDef) -> set[str]:
    found = set()
    for node in walk(init):
        assign = single_assign(node) if isinstance(node, cst.SimpleStatementLine) else None
        if assign and is_self_attr(assign[0][0]) and isinstance(assign[1], cst.Call):
            if last_part(call_name(assign[1]) or dotted(assign[1].func)) in PROJECTIONS:
                found.add(assign[0][0].attr.value)
    return found


def _encoder_decoder(analysis) -> tuple[str, tuple[str, str]] | None:
    """(model, (first stack, second stack)) for a pretrained class holding two layer stacks."""
    for name in sorted(analysis.pretrained):
        stacks = [
            f"{attr}: {held}"
            for attr, held in analysis.classes[name].children.items()
            if held in analysis.classes and analysis.classes[held].layer_lists
        ]
        if len(stacks) >= 2:
            return name, (stacks[0], stacks[1])
    return None
