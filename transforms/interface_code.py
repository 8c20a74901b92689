"""Recognising code already written for transformers' attention interface (CONTRACT G3).

Transforms that set `leaves_interface_code` ask `written_for_interface` before imposing
choices such code makes for itself.
"""

from __future__ import annotations

from transforms.cst_utils import code_of, function_defs

INTERFACE_CLASSES = "interface_classes"


def written_for_interface(state) -> bool:
    """Some module calls the attention interface before the port: the code was written for
    it (transformers 4.48 and later, or already ported). Which modules go through it is its
    author's choice (an audio block or a detection head may keep math no kernel computes),
    and so are its kwargs plumbing, masks, generation classes and backend flags.

    Modules on the interface keep their math in a module-level eager function, so the
    analysis may not list them as attention: they are found by their call."""
    if INTERFACE_CLASSES not in state.facts:
        state.facts[INTERFACE_CLASSES] = {
            name for name, info in state.analysis.classes.items() if _calls_interface(info.node)
        }
    return bool(state.facts[INTERFACE_CLASSES])


def _calls_interface(cls) -> bool:
    forward = function_defs(cls).get("forward")
    text = code_of(forward) if forward is not None else ""
    return "ALL_ATTENTION_FUNCTIONS" in text and "get_interface(" in text
