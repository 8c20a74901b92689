"""Declare attention-backend support truthfully on the pretrained base class (CONTRACT B4).

Set only when every attention module of the repo was routed through the interface. A
kernel is claimed only if it can reproduce the eager math: flash attention cannot add an
additive position bias (ALiBi, relative bias) or softcap scores, so such models say so.
"""

from __future__ import annotations

import libcst as cst

from transforms.base import Transform
from transforms.cst_utils import parse_stmts, single_assign

LEGACY_FLAGS = {"_supports_flash_attn_2", "_supports_cache_class", "_supports_static_cache", "_supports_quantized_cache"}


def supported_backends(facts: dict) -> dict[str, bool]:
    """Which kernels can run the eager math the port produced."""
    bias = bool(facts.get("additive_bias")) or bool(facts.get("softcap"))
    # A rescale after the bias scales the bias too; kernels add it unscaled.
    rescaled = bool(facts.get("bias_rescaled"))
    return {
        "_supports_attention_backend": True,
        "_supports_sdpa": not facts.get("softcap", False) and not rescaled,
        "_supports_flash_attn": not bias,
        # flex indexes the bias as [batch, head, q, kv]; a legacy bias that broadcasts
        # (ALiBi is often [batch, heads, 1, kv]) would be read out of bounds there.
        "_supports_flex_attn": not facts.get("additive_bias", False) and not facts.get("softcap_not_passed", False),
    }


class DeclareBackends(Transform):
    name = "backend-flags"
    summary = "Set _supports_attention_backend/_supports_sdpa/_supports_flash_attn/_supports_flex_attn."
    leaves_interface_code = True

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        routed = self.state.facts.get("routed", set())
        if not analysis.attention or not routed >= analysis.attention:
            return tree
        roots = {n for n in analysis.pretrained_roots if analysis.classes[n].file == self.filename}
        if not roots:
            return tree
        flags = supported_backends(self.state.facts)
        return self.rewrite_classes(tree, roots, lambda cls: self._set_flags(cls, flags))

    def _set_flags(self, cls: cst.ClassDef, flags: dict[str, bool]) -> cst.ClassDef:
        members, present = [], {}
        for member in cls.body.body:
            assign = single_assign(member)
            target = assign[0][0].value if assign and isinstance(assign[0][0], cst.Name) else None
            if target in LEGACY_FLAGS:
                self.record(member, f"{cls.name.value}: removed legacy flag {target}")
                continue
            if target in flags:
                present[target] = len(members)
            members.append(member)
        for flag, value in flags.items():
            stmt = parse_stmts(f"{flag} = {value}\n")[0]
            if flag in present:
                old = members[present[flag]]
                if single_assign(old)[1].deep_equals(single_assign(stmt)[1]):
                    continue
                members[present[flag]] = stmt
            else:
                members.append(stmt)
            self.record(cls, f"{cls.name.value}.{flag} = {value}")
        return cls.with_changes(body=cls.body.with_changes(body=members))
