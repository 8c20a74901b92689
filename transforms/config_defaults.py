"""Config attributes that transformers 4 defined on every config and transformers 5 does not.

Legacy modeling code reads `config.add_cross_attention`, `config.is_decoder`,
`config.pruned_heads`, `config.pad_token_id`... relying on `PretrainedConfig` to supply a
default. For each such attribute the modeling code reads, that the installed base class
no longer provides and that the config class does not set itself, the config class's
`__init__` sets the transformers 4 default when the loaded config did not.
"""

from __future__ import annotations

import libcst as cst

from transforms.base import Transform
from transforms.cst_utils import code_of, function_defs, is_self_attr, parse_stmts, walk

CONFIG_BASES = {"PretrainedConfig", "PreTrainedConfig"}

# transformers 4.x PretrainedConfig.__init__ defaults (those a model's code may read).
LEGACY_DEFAULTS = {
    "torchscript": "False",
    "use_bfloat16": "False",
    "pruned_heads": "{}",
    "tie_word_embeddings": "True",
    "is_decoder": "False",
    "cross_attention_hidden_size": "None",
    "add_cross_attention": "False",
    "tie_encoder_decoder": "False",
    "chunk_size_feed_forward": "0",
    "is_encoder_decoder": "False",
    "bos_token_id": "None",
    "pad_token_id": "None",
    "eos_token_id": "None",
    "sep_token_id": "None",
    "decoder_start_token_id": "None",
    "finetuning_task": "None",
    "problem_type": "None",
    "tokenizer_class": "None",
    "prefix": "None",
    "task_specific_params": "None",
}


# Facts key: config attributes that code written by earlier transforms reads.
CONFIG_READS = "config_reads"

# Read by transformers itself, not only by modeling code: weight tying.
FRAMEWORK_READS = {"tie_word_embeddings"}


def _config_reads(modules: dict[str, cst.Module]) -> set[str]:
    """Attributes read as `config.x` or `self.config.x` anywhere in the repo's code."""
    found = set(FRAMEWORK_READS)
    for module in modules.values():
        for node in walk(module):
            if isinstance(node, cst.Attribute) and code_of(node.value) in ("config", "self.config"):
                found.add(node.attr.value)
    return found


class LegacyConfigDefaults(Transform):
    name = "config-defaults"
    summary = "Give config classes the transformers 4 defaults their models read and transformers 5 dropped."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        from transformers import PretrainedConfig

        configs = [s for s in tree.body if isinstance(s, cst.ClassDef) and _is_config(s)]
        if not configs:
            return tree
        base = PretrainedConfig()
        reads = _config_reads(self.state.analysis.modules) | self.state.facts.get(CONFIG_READS, set())
        wanted = {a: v for a, v in LEGACY_DEFAULTS.items() if a in reads and not hasattr(base, a)}
        if not wanted:
            return tree
        return self.rewrite_classes(tree, {c.name.value for c in configs}, lambda cls: self._add_defaults(cls, wanted))

    def _add_defaults(self, cls: cst.ClassDef, wanted: dict[str, str]) -> cst.ClassDef:
        init = function_defs(cls).get("__init__")
        if init is None:
            return cls
        set_here = {n.attr.value for n in walk(init) if isinstance(n, cst.Attribute) and is_self_attr(n)}
        text = code_of(init)
        # Passed on to the base class, or read from kwargs: the config sets it already.
        missing = {a: v for a, v in wanted.items() if a not in set_here and f'"{a}"' not in text and f"{a}=" not in text}
        if not missing:
            return cls
        lines = "".join(f'if not hasattr(self, "{a}"):\n    self.{a} = {v}\n' for a, v in missing.items())
        new_init = init.with_changes(body=init.body.with_changes(body=[*init.body.body, *parse_stmts(lines)]))
        self.record(init, f"{cls.name.value}.__init__ keeps transformers 4 defaults for {', '.join(missing)}")
        return cls.deep_replace(init, new_init)


def _is_config(cls: cst.ClassDef) -> bool:
    return any(code_of(b.value).rsplit(".", 1)[-1] in CONFIG_BASES for b in cls.bases)
