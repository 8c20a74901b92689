"""Let transformers choose the attention kernel: no config attribute may shadow it (CONTRACT B1).

Some remote code of 2024 (InternLM2 among others) declares `attn_implementation` as a
parameter of its config class and stores it as `self.attn_implementation`, defaulting to
`"eager"`, then reads `config.attn_implementation` to pick a class or a mask. Under
transformers 5 that parameter swallows the `attn_implementation=` keyword given to
`from_pretrained`, so `config._attn_implementation`, which the interface call reads, never
hears of the kernel the user or an engine selected. The parameter and the assignments go
(the keyword then reaches `PretrainedConfig`), and every `<config>.attn_implementation`
read becomes `<config>._attn_implementation`.
"""

from __future__ import annotations

import libcst as cst

from transforms.base import Transform
from transforms.cst_utils import SharingTransformer, code_of, dotted, function_defs, names_read

ATTRIBUTE = "attn_implementation"


def shadowing_configs(analysis) -> set[str]:
    """Config classes whose `__init__` takes `attn_implementation` as its own parameter."""
    found = set()
    for name, info in analysis.classes.items():
        init = function_defs(info.node).get("__init__")
        if init is None or not any(b.endswith("Config") for b in info.bases):
            continue
        if any(p.name.value == ATTRIBUTE for p in init.params.params + init.params.kwonly_params):
            found.add(name)
    return found


class AttentionSelection(Transform):
    name = "attention-selection"
    summary = "Drop a config's own attn_implementation; read config._attn_implementation instead."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        configs = shadowing_configs(self.state.analysis)
        if not configs:
            return tree
        local = {n for n in configs if self.state.analysis.classes[n].file == self.filename}
        tree = tree.visit(_ReadInternal(self))  # first, while nodes still have their lines
        return self.rewrite_classes(tree, local, self._drop_parameter)

    def _drop_parameter(self, cls: cst.ClassDef) -> cst.ClassDef:
        init = function_defs(cls)["__init__"]
        params = init.params.with_changes(
            params=[p for p in init.params.params if p.name.value != ATTRIBUTE],
            kwonly_params=[p for p in init.params.kwonly_params if p.name.value != ATTRIBUTE],
        )
        body = [s for s in init.body.body if not _sets_own_attribute(s)]
        new_init = init.with_changes(params=params, body=init.body.with_changes(body=body))
        self.record(init, f"{cls.name.value}.__init__: `{ATTRIBUTE}` left to PretrainedConfig")
        return cls.deep_replace(init, new_init)


def _sets_own_attribute(stmt: cst.CSTNode) -> bool:
    """`self.attn_implementation = ...`, or an `if` about it that only assigns it."""
    if isinstance(stmt, cst.If) and stmt.orelse is None and ATTRIBUTE in code_of(stmt.test):
        return all(_sets_own_attribute(s) for s in stmt.body.body)
    if not isinstance(stmt, cst.SimpleStatementLine):
        return False
    return all(
        isinstance(s, cst.Assign)
        and all(dotted(t.target) == f"self.{ATTRIBUTE}" for t in s.targets)
        and names_read(s.value) <= {ATTRIBUTE, "self"}
        for s in stmt.body
    )


class _ReadInternal(SharingTransformer):
    """`config.attn_implementation` / `self.config.attn_implementation` -> `._attn_implementation`."""

    def __init__(self, transform: AttentionSelection):
        self.transform = transform

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.BaseExpression:
        owner = dotted(updated.value) or ""
        if updated.attr.value != ATTRIBUTE or not owner.endswith("config"):
            return updated
        self.transform.record(original, f"{owner}.{ATTRIBUTE} -> {owner}._{ATTRIBUTE}")
        return updated.with_changes(attr=cst.Name(f"_{ATTRIBUTE}"))
