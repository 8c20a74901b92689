"""Composite configs expose the names engines read (CONTRACT E3).

A vision-language config nests one config per tower. Engines and transformers 5 read them
as `config.text_config` and `config.vision_config`, and the placeholder token as
`config.image_token_id`. Legacy configs often say `image_token_index`, `llm_config`,
`visual_config`... A config class whose `__init__` stores two or more nested configs
(`self.<name>_config = ...`) gets `attribute_map` aliases for the names it lacks:

- `<modality>_token_id` -> `<modality>_token_index` for every `self.<modality>_token_index`;
- `text_config` -> the one nested config named for text (`text`, `llm`, `language`, `lm`),
  `vision_config` -> the one named for vision (`vision`, `visual`, `image`), when the class
  does not use those names itself.

The aliases read and write the legacy attribute, so `config.json` keeps its keys and the
legacy code keeps working. A nested config whose role the name does not tell is left
alone. When `__init__` builds every nested config with its class (`Cls(**vision_config)`),
the class also declares `sub_configs = {"vision_config": Cls, ...}`: transformers 5 hands
the selected attention kernel to the configs listed there, and a tower built from a nested
config would otherwise stay on eager whatever kernel was asked for.
"""

from __future__ import annotations

import re

import libcst as cst

from transforms.base import Transform
from transforms.cst_utils import code_of, function_defs, is_self_attr, parse_stmts, single_assign, walk

CONFIG_BASES = {"PretrainedConfig", "PreTrainedConfig"}
ROLE_WORDS = {
    "text_config": ("text", "llm", "language", "lm"),
    "vision_config": ("vision", "visual", "image", "vit"),
}
TOKEN_INDEX = re.compile(r"^(image|video|audio)_token_index$")


class MultimodalConfigNames(Transform):
    name = "multimodal-config"
    summary = "Alias image_token_id, text_config and vision_config on composite configs; declare sub_configs."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        configs = {n for n, info in analysis.classes.items() if info.file == self.filename and _is_config(analysis, n)}
        return self.rewrite_classes(tree, configs, self._rewrite) if configs else tree

    def _rewrite(self, cls: cst.ClassDef) -> cst.ClassDef:
        original = cls
        init = function_defs(cls).get("__init__")
        if init is None:
            return cls
        stored = _self_assigned(init)
        nested = sorted(a for a in stored if a.endswith("_config") and a != "quantization_config")
        if len(nested) < 2:
            return cls
        existing = _attribute_map(cls)
        aliases = {}
        for attribute in sorted(stored):
            match = TOKEN_INDEX.match(attribute)
            alias = f"{match[1]}_token_id" if match else None
            if alias and alias not in stored and alias not in existing:
                aliases[alias] = attribute
        for role, words in ROLE_WORDS.items():
            if role in stored or role in existing:
                continue
            candidates = [n for n in nested if any(w in n.removesuffix("_config").split("_") for w in words)]
            if len(candidates) == 1:
                aliases[role] = candidates[0]
        sub_configs = {} if _declares(cls, "sub_configs") else _sub_config_classes(init, nested, self.state.analysis)
        if aliases:
            self.record(
                original,
                f"{cls.name.value}: attribute_map aliases " + ", ".join(f"{k} -> {v}" for k, v in sorted(aliases.items())),
            )
            cls = _with_attribute_map(cls, {**existing, **aliases})
        if sub_configs:
            # transformers 5 hands the selected attention kernel (and dtype) to every config
            # listed here: a tower built from a nested config otherwise stays on eager.
            self.record(original, f"{cls.name.value}: sub_configs declared for " + ", ".join(sorted(sub_configs)))
            cls = _with_class_attribute(cls, "sub_configs", "{" + ", ".join(f'"{k}": {v}' for k, v in sub_configs.items()) + "}")
        return cls


def _is_config(analysis, name: str) -> bool:
    """A class deriving, here or through repo classes, from transformers' config base."""
    return any(base in CONFIG_BASES for cls in (name, *analysis.ancestors(name)) for base in analysis.classes[cls].bases)


def _self_assigned(init: cst.FunctionDef) -> set[str]:
    return {
        node.target.attr.value
        for node in walk(init)
        if isinstance(node, cst.AssignTarget) and is_self_attr(node.target)
    }


def _attribute_map(cls: cst.ClassDef) -> dict[str, str]:
    for stmt in cls.body.body:
        assign = single_assign(stmt)
        if assign and code_of(assign[0][0]) == "attribute_map" and isinstance(assign[1], cst.Dict):
            return {
                e.key.evaluated_value: e.value.evaluated_value
                for e in assign[1].elements
                if isinstance(e, cst.DictElement) and isinstance(e.key, cst.SimpleString) and isinstance(e.value, cst.SimpleString)
            }
    return {}


def _declares(cls: cst.ClassDef, attribute: str) -> bool:
    return any(single_assign(s) and code_of(single_assign(s)[0][0]) == attribute for s in cls.body.body)


def _sub_config_classes(init: cst.FunctionDef, nested: list[str], analysis) -> dict[str, str]:
    """Nested attribute -> the config class `__init__` builds it with (`Cls(**vision_config)`);
    empty unless every nested config has one."""
    found = {}
    for node in walk(init):
        if not (isinstance(node, cst.Call) and isinstance(node.func, cst.Name) and node.func.value in analysis.classes):
            continue
        if not _is_config(analysis, node.func.value):
            continue
        for arg in node.args:
            name = code_of(arg.value) if arg.star == "**" else None
            if name in nested:
                found[name] = node.func.value
    return found if set(found) == set(nested) else {}


def _with_attribute_map(cls: cst.ClassDef, mapping: dict[str, str]) -> cst.ClassDef:
    return _with_class_attribute(cls, "attribute_map", "{" + ", ".join(f'"{k}": "{v}"' for k, v in mapping.items()) + "}")


def _with_class_attribute(cls: cst.ClassDef, attribute: str, value: str) -> cst.ClassDef:
    new_stmt = parse_stmts(f"{attribute} = {value}\n")[0]
    body = list(cls.body.body)
    for index, stmt in enumerate(body):
        assign = single_assign(stmt)
        if assign and code_of(assign[0][0]) == attribute:
            body[index] = new_stmt.with_changes(leading_lines=stmt.leading_lines)
            return cls.with_changes(body=cls.body.with_changes(body=body))
    # After the docstring and the `model_type` line, where class attributes of configs sit.
    at = next(
        (i + 1 for i, s in enumerate(body) if single_assign(s) and code_of(single_assign(s)[0][0]) == "model_type"),
        1 if body and isinstance(body[0], cst.SimpleStatementLine) and isinstance(body[0].body[0], cst.Expr) else 0,
    )
    body.insert(at, new_stmt)
    return cls.with_changes(body=cls.body.with_changes(body=body))
