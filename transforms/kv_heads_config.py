"""The config states the key/value head count the code computes (CONTRACT C5).

Engines and transformers' continuous batching size their KV cache from
`config.num_key_value_heads` (else `num_attention_heads`). Code written before grouped-query
attention gives every query head its own key/value head and never reads
`num_key_value_heads`, yet its config.json may carry one (a config saved by a later release,
or copied from a GQA checkpoint): the cache is then sized for fewer heads than the code
writes into it. When no modeling code reads `num_key_value_heads` and every routed attention
module repeats no key/value heads (`num_key_value_groups = 1`), the config class sets
`num_key_value_heads` to the attention head count, and config.json's value, which the code
never used, is dropped.
"""

from __future__ import annotations

import libcst as cst

from transforms.base import Transform
from transforms.config_defaults import _is_config
from transforms.cst_utils import code_of, dotted, function_defs, names_read, parse_stmts, walk

KV_GROUPS = "kv_groups"  # facts: attention class -> num_key_value_groups code written by attention-interface
DROPPED_CONFIG_KEYS = "config_json_drop"  # facts: config.json keys the ported code contradicts
FOLLOWS_HEADS = "self.num_key_value_heads = self.num_attention_heads"


def _mentions(node: cst.CSTNode, name: str) -> bool:
    """`x.name`, or the string "name" (getattr, dict keys)."""
    return any(
        (isinstance(n, cst.Attribute) and n.attr.value == name)
        or (isinstance(n, cst.SimpleString) and n.evaluated_value == name)
        for n in walk(node)
    )


class KeyValueHeadsInConfig(Transform):
    name = "kv-heads-config"
    summary = "Make config.num_key_value_heads equal the key/value heads the attention code computes."
    leaves_interface_code = True

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        groups = self.state.facts.get(KV_GROUPS) or {}
        if not groups or self._code_reads_kv_heads():
            return tree
        configs = {s.name.value for s in tree.body if isinstance(s, cst.ClassDef) and _is_config(s) and _has_heads(s)}
        if not configs:
            return tree
        if all(code == "1" for code in groups.values()):
            return self.rewrite_classes(tree, configs, self._follow_heads)
        heads = {_kv_heads_in_config_terms(code, self.state.analysis, cls) for cls, code in groups.items()}
        if len(heads) != 1 or None in heads:
            return tree
        return self.rewrite_classes(tree, configs, lambda cls: self._computed_heads(cls, heads.pop()))

    def _computed_heads(self, cls: cst.ClassDef, heads: str) -> cst.ClassDef:
        """`self.num_key_value_heads = <what the attention computes from the config>`, when the
        config class sets every attribute the expression reads."""
        init = function_defs(cls)["__init__"]
        assigned = {dotted(t.target) for n in walk(init) if isinstance(n, cst.Assign) for t in n.targets}
        read = {f"self.{n.attr.value}" for n in walk(cst.parse_expression(heads)) if isinstance(n, cst.Attribute)}
        line = f"self.num_key_value_heads = {heads}"
        if not read <= assigned or line in code_of(init):
            return cls
        new_init = init.with_changes(body=init.body.with_changes(body=[*init.body.body, *parse_stmts(line + "\n")]))
        dropped = self.state.facts.setdefault(DROPPED_CONFIG_KEYS, [])
        if "num_key_value_heads" not in dropped:
            dropped.append("num_key_value_heads")
        self.record(init, f"{cls.name.value}.__init__: num_key_value_heads is what the attention computes: {heads}")
        return cls.deep_replace(init, new_init)

    def _code_reads_kv_heads(self) -> bool:
        """Whether anything but a config class reads `num_key_value_heads`."""
        for module in self.state.analysis.modules.values():
            for stmt in module.body:
                if not (isinstance(stmt, cst.ClassDef) and _is_config(stmt)) and _mentions(stmt, "num_key_value_heads"):
                    return True
        return False

    def _follow_heads(self, cls: cst.ClassDef) -> cst.ClassDef:
        init = function_defs(cls)["__init__"]
        if FOLLOWS_HEADS in code_of(init):
            return cls
        new_init = init.with_changes(body=init.body.with_changes(body=[*init.body.body, *parse_stmts(FOLLOWS_HEADS + "\n")]))
        dropped = self.state.facts.setdefault(DROPPED_CONFIG_KEYS, [])
        if "num_key_value_heads" not in dropped:
            dropped.append("num_key_value_heads")
        self.record(
            init,
            f"{cls.name.value}.__init__: num_key_value_heads follows num_attention_heads, as the attention"
            " computes (one key/value head per query head); config.json's num_key_value_heads, never read, is dropped",
        )
        return cls.deep_replace(init, new_init)


def _kv_heads_in_config_terms(groups: str, analysis, attention: str) -> str | None:
    """The key/value head count of `groups = q_heads // kv_heads` (multi-query code that
    broadcasts its key/value heads) in terms of the config class: each `self.x` of the
    attention module replaced by what its __init__ assigns it from `config`, recursively."""
    expr = cst.parse_expression(groups)
    if not (isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, cst.FloorDivide)):
        return None
    init = function_defs(analysis.classes[attention].node).get("__init__")
    if init is None:
        return None
    sources = {}
    for node in walk(init):
        if isinstance(node, cst.Assign) and len(node.targets) == 1 and isinstance(node.targets[0].target, cst.Attribute):
            target = node.targets[0].target
            if dotted(target.value) == "self":
                sources[target.attr.value] = node.value
    heads = _substituted(expr.right, sources, depth=0)
    if heads is None or names_read(heads) - {"config"}:
        return None
    return code_of(heads.visit(_ConfigAsSelf())).strip()


def _substituted(node: cst.BaseExpression, sources: dict, depth: int) -> cst.BaseExpression | None:
    if depth > 8:
        return None
    substitution = _SelfAttributes(sources, depth)
    result = node.visit(substitution)
    return None if substitution.failed else result


class _SelfAttributes(cst.CSTTransformer):
    """`self.x` -> (what __init__ assigns `self.x`), itself substituted."""

    def __init__(self, sources: dict, depth: int):
        self.sources, self.depth, self.failed = sources, depth, False

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.BaseExpression:
        if dotted(original.value) != "self":
            return updated
        source = self.sources.get(original.attr.value)
        inner = _substituted(source, self.sources, self.depth + 1) if source is not None else None
        if inner is None:
            self.failed = True
            return updated
        if isinstance(inner, (cst.Attribute, cst.Name, cst.Integer)):
            return inner
        return inner.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])


class _ConfigAsSelf(cst.CSTTransformer):
    def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.Name:
        return updated.with_changes(value="self") if updated.value == "config" else updated


def _has_heads(cls: cst.ClassDef) -> bool:
    """A config class that defines the attention head count (its __init__ or attribute_map)."""
    init = function_defs(cls).get("__init__")
    return init is not None and (_mentions(init, "num_attention_heads") or _mentions(cls, "num_attention_heads"))
