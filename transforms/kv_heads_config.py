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
from transforms.cst_utils import code_of, function_defs, parse_stmts, walk

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
        if not groups or any(code != "1" for code in groups.values()) or self._code_reads_kv_heads():
            return tree
        configs = {s.name.value for s in tree.body if isinstance(s, cst.ClassDef) and _is_config(s) and _has_heads(s)}
        return self.rewrite_classes(tree, configs, self._follow_heads) if configs else tree

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


def _has_heads(cls: cst.ClassDef) -> bool:
    """A config class that defines the attention head count (its __init__ or attribute_map)."""
    init = function_defs(cls).get("__init__")
    return init is not None and (_mentions(init, "num_attention_heads") or _mentions(cls, "num_attention_heads"))
