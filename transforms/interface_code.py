"""Recognising code already written for transformers 5's attention interface (CONTRACT G3).

`RouteAttention` notes each attention module it finds already on the interface under
`FOUND_ROUTED`; later transforms ask `written_for_interface` before imposing choices that
such code makes for itself.
"""

from __future__ import annotations

from transforms.cst_utils import code_of, function_defs

FOUND_ROUTED = "found_routed"
INTERFACE_CLASSES = "interface_classes"


def written_for_interface(state) -> bool:
    """Attention is on the interface, every module of it, before the port: the code was
    written for transformers 5 (or already ported), and its kwargs plumbing, masks,
    generation classes and backend flags are its author's choice.

    Modules on the interface keep their math in a module-level eager function, so the
    analysis may not list them as attention: they are found by their call."""
    if INTERFACE_CLASSES not in state.facts:
        state.facts[INTERFACE_CLASSES] = {
            name for name, info in state.analysis.classes.items() if _calls_interface(info.node)
        }
    routed = state.facts.get(FOUND_ROUTED, set()) | state.facts[INTERFACE_CLASSES]
    return bool(routed) and routed >= state.analysis.attention


def _calls_interface(cls) -> bool:
    forward = function_defs(cls).get("forward")
    text = code_of(forward) if forward is not None else ""
    return "ALL_ATTENTION_FUNCTIONS" in text and "get_interface(" in text
