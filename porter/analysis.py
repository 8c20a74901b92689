"""Which class plays which role in a modeling file, found by the shape of its code.

Roles are recognised by pattern, never by name: an attention module is one whose code
computes softmax(q k^T) v or calls a fused attention kernel; a base model is the
pretrained class that owns the `ModuleList` of layers; a head class owns a base model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import libcst as cst

from transforms.cst_utils import (
    base_names,
    call_name,
    dotted,
    function_defs,
    is_self_attr,
    last_part,
    single_assign,
    walk,
)

MATMUL_CALLS = {"matmul", "bmm", "baddbmm", "einsum", ".matmul", ".bmm"}
SOFTMAX_CALLS = {"softmax", ".softmax", "log_softmax", "Softmax"}  # `Softmax`: the `nn.Softmax` module
KERNEL_CALLS = {"scaled_dot_product_attention", "flash_attn_func", "flash_attn_varlen_func", "_flash_attention_forward"}
PRETRAINED_BASES = {"PreTrainedModel", "PretrainedModel"}
FACTORY_METHODS = {"_from_config", "from_config"}  # class methods that build a model from a config
BACKEND_KEYS = {"eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"}


@dataclass
class ClassInfo:
    name: str
    file: str
    node: cst.ClassDef
    bases: list[str]
    children: dict[str, str] = field(default_factory=dict)  # attribute -> class it holds
    layer_lists: dict[str, str] = field(default_factory=dict)  # ModuleList attribute -> element class
    # attribute -> the other classes a config switch may build there (`A(c) if x else B(c)`)
    alternatives: dict[str, list[str]] = field(default_factory=dict)

    @property
    def methods(self) -> dict[str, cst.FunctionDef]:
        return function_defs(self.node)


@dataclass
class RepoAnalysis:
    modules: dict[str, cst.Module]
    classes: dict[str, ClassInfo] = field(default_factory=dict)
    attention: set[str] = field(default_factory=set)
    attention_variants: dict[str, str] = field(default_factory=dict)  # variant -> primary
    attention_dicts: dict[str, dict[str, str]] = field(default_factory=dict)  # dict name -> key -> class
    pretrained: set[str] = field(default_factory=set)
    pretrained_roots: set[str] = field(default_factory=set)
    base_models: set[str] = field(default_factory=set)
    heads: dict[str, str] = field(default_factory=dict)  # head class -> attribute holding the base model
    decoder_layers: set[str] = field(default_factory=set)
    entry_points: set[str] = field(default_factory=set)  # classes config.json's auto_map names
    # module-level function computing softmax(q k^T) v -> file; class -> the one it calls (directly
    # or through an attribute set to it in __init__)
    attention_functions: dict[str, str] = field(default_factory=dict)
    calls_attention_function: dict[str, str] = field(default_factory=dict)

    def ancestors(self, name: str) -> list[str]:
        """Repo classes `name` inherits from, nearest first."""
        found, pending = [], list(self.classes[name].bases) if name in self.classes else []
        while pending:
            base = pending.pop(0)
            if base in self.classes and base not in found:
                found.append(base)
                pending += self.classes[base].bases
        return found

    def is_a(self, name: str, base: str) -> bool:
        return name == base or base in self.ancestors(name)

    def path_to_attention(self) -> set[str]:
        """Classes whose forward (directly or through children) reaches an attention module."""
        reach: set[str] = set(self.attention)
        changed = True
        while changed:
            changed = False
            for info in self.classes.values():
                if info.name in reach:
                    continue
                held = set(info.children.values()) | set(info.layer_lists.values())
                if held & reach:
                    reach.add(info.name)
                    changed = True
        return reach


def _calls(node: cst.CSTNode) -> set[str]:
    return {last_part(n) if not n.startswith(".") else n for n in (call_name(c) for c in walk(node)) if n}


def _has_attention_math(functions: list[cst.FunctionDef]) -> bool:
    calls = set()
    matmul_operator = False
    for fn in functions:
        calls |= _calls(fn)
        matmul_operator |= any(
            isinstance(n, cst.BinaryOperation) and isinstance(n.operator, cst.MatrixMultiply) for n in walk(fn)
        )
    return bool(calls & SOFTMAX_CALLS) and (bool(calls & MATMUL_CALLS) or matmul_operator)


def _looks_like_attention(cls: cst.ClassDef) -> bool:
    methods = list(function_defs(cls).values())
    return _has_attention_math(methods) or any(_calls(fn) & KERNEL_CALLS for fn in methods)


def _attention_function_called(cls: cst.ClassDef, functions: dict[str, str]) -> str | None:
    """The module-level attention function a class calls by name, or holds in an attribute
    set in `__init__` (`self.attn_fn = fn`, chosen by a setting) and calls through it."""
    methods = function_defs(cls)
    held = {}
    if "__init__" in methods:
        for node in walk(methods["__init__"]):
            if isinstance(node, cst.Assign) and len(node.targets) == 1 and is_self_attr(node.targets[0].target):
                if isinstance(node.value, cst.Name) and node.value.value in functions:
                    held.setdefault(f"self.{node.targets[0].target.attr.value}", node.value.value)
    for name, fn in methods.items():
        for called in (call_name(c) for c in walk(fn) if isinstance(c, cst.Call)):
            if called in functions and name != "__init__":
                return called
            if called in held:
                return held[called]
    return None


def _held_class(
    value: cst.BaseExpression, known: set[str], dicts: dict[str, dict[str, str]], aliases: dict | None = None
) -> str | None:
    """The repo class an `__init__` value builds: `Cls(...)`, `DICT[key](...)`, or a local
    alias of either (`attention_class = DICT[key]; self.attn = attention_class(...)`)."""
    if not isinstance(value, cst.Call):
        return None
    func = value.func
    if isinstance(func, cst.Name) and aliases and func.value in aliases:
        return aliases[func.value]
    if isinstance(func, cst.Subscript):
        table = dotted(func.value)
        if table in dicts:
            return dicts[table].get("eager") or next(iter(dicts[table].values()))
        return None
    name = last_part(dotted(func))
    if isinstance(func, cst.Attribute) and name in FACTORY_METHODS:
        name = last_part(dotted(func.value))  # `Cls._from_config(config.text_config, ...)`
    return name if name in known else None


def _held_classes(
    value: cst.BaseExpression, known: set[str], dicts: dict[str, dict[str, str]], aliases: dict, choices: dict
) -> list[str]:
    """Every repo class an `__init__` value may build: one for `Cls(...)`, each branch's for
    `A(...) if flag else B(...)`, each class a local alias was bound to under `if`/`elif`."""
    if isinstance(value, cst.IfExp):
        found = _held_classes(value.body, known, dicts, aliases, choices)
        return found + [c for c in _held_classes(value.orelse, known, dicts, aliases, choices) if c not in found]
    held = _held_class(value, known, dicts, aliases)
    if not held:
        return []
    name = value.func.value if isinstance(value.func, cst.Name) else None
    return [held, *(c for c in choices.get(name, ()) if c != held)]


def _alias_choices(init: cst.FunctionDef, known: set[str]) -> dict[str, list[str]]:
    """Local names bound to more than one repo class (`block = A` / `block = B` in branches)."""
    bound: dict[str, list[str]] = {}
    for stmt in walk(init):
        assign = single_assign(stmt) if isinstance(stmt, cst.SimpleStatementLine) else None
        if assign and isinstance(assign[0][0], cst.Name) and dotted(assign[1]) in known:
            classes = bound.setdefault(assign[0][0].value, [])
            if dotted(assign[1]) not in classes:
                classes.append(dotted(assign[1]))
    return {name: classes for name, classes in bound.items() if len(classes) > 1}


def _local_class_aliases(init: cst.FunctionDef, known: set[str], dicts: dict) -> dict[str, str]:
    aliases = {}
    for stmt in walk(init):
        assign = single_assign(stmt) if isinstance(stmt, cst.SimpleStatementLine) else None
        if not assign or not isinstance(assign[0][0], cst.Name):
            continue
        value = assign[1]
        if isinstance(value, cst.Subscript) and dotted(value.value) in dicts:
            entries = dicts[dotted(value.value)]
            aliases[assign[0][0].value] = entries.get("eager") or next(iter(entries.values()))
        elif dotted(value) in known:
            aliases[assign[0][0].value] = dotted(value)
    return aliases


def _layer_list_class(value: cst.BaseExpression, known: set[str], dicts: dict) -> str | None:
    """`nn.ModuleList([Cls(...) for i in ...])` -> Cls."""
    if not (isinstance(value, cst.Call) and last_part(dotted(value.func)) == "ModuleList" and value.args):
        return None
    inner = value.args[0].value
    if isinstance(inner, (cst.ListComp, cst.GeneratorExp)):
        return _held_class(inner.elt, known, dicts)
    if isinstance(inner, cst.List) and inner.elements:
        return _held_class(inner.elements[0].value, known, dicts)
    return None


def _backend_dicts(module: cst.Module) -> dict[str, dict[str, str]]:
    found = {}
    for stmt in module.body:
        assign = single_assign(stmt)
        if not assign or not isinstance(assign[1], cst.Dict):
            continue
        entries = {}
        for element in assign[1].elements:
            if isinstance(element, cst.DictElement) and isinstance(element.key, cst.SimpleString):
                entries[element.key.evaluated_value] = dotted(element.value) or ""
        if entries and set(entries) & BACKEND_KEYS and "eager" in entries:
            found[dotted(assign[0][0]) or ""] = entries
    return found


def analyse(modules: dict[str, cst.Module], entry_points: set[str] | None = None) -> RepoAnalysis:
    """Build the class index and assign roles for every modeling file of a repo."""
    result = RepoAnalysis(modules=modules, entry_points=set(entry_points or ()))
    for filename, module in modules.items():
        result.attention_dicts.update(_backend_dicts(module))
        for stmt in module.body:
            if isinstance(stmt, cst.ClassDef):
                result.classes[stmt.name.value] = ClassInfo(stmt.name.value, filename, stmt, base_names(stmt))
    known = set(result.classes)

    for info in result.classes.values():
        init = info.methods.get("__init__")
        if init is None:
            continue
        aliases = _local_class_aliases(init, known, result.attention_dicts)
        choices = _alias_choices(init, known)
        for stmt in walk(init):
            assign = single_assign(stmt) if isinstance(stmt, cst.SimpleStatementLine) else None
            if not assign or not is_self_attr(assign[0][0]):
                continue
            attr = assign[0][0].attr.value
            element = _layer_list_class(assign[1], known, result.attention_dicts)
            if element:
                info.layer_lists[attr] = element
                continue
            held = _held_classes(assign[1], known, result.attention_dicts, aliases, choices)
            if not held:
                continue
            # `if switch: self.mlp = A(...)` / `else: self.mlp = B(...)`: the first built is the
            # child, the others are alternatives, as for `A(...) if switch else B(...)`.
            primary = info.children.setdefault(attr, held[0])
            others = info.alternatives.setdefault(attr, [])
            others += [c for c in held if c != primary and c not in others]
            if not others:
                del info.alternatives[attr]

    for filename, module in modules.items():
        for stmt in module.body:
            if isinstance(stmt, cst.FunctionDef) and _has_attention_math([stmt]):
                result.attention_functions[stmt.name.value] = filename
    attention_like = {n for n, i in result.classes.items() if _looks_like_attention(i.node)}
    for name, info in result.classes.items():
        called = _attention_function_called(info.node, result.attention_functions)
        if called and name not in attention_like:
            result.calls_attention_function[name] = called
            attention_like.add(name)
    for name in attention_like:
        parents = [a for a in result.ancestors(name) if a in attention_like]
        if parents:
            result.attention_variants[name] = parents[-1]
        else:
            result.attention.add(name)
    # A class listed beside the eager one in a backend dict is a variant even if it shares no base.
    for entries in result.attention_dicts.values():
        primary = entries.get("eager")
        for cls in entries.values():
            if cls != primary and cls in result.classes and primary:
                result.attention_variants.setdefault(cls, primary)
                result.attention.discard(cls)

    for name, info in result.classes.items():
        if PRETRAINED_BASES & set(info.bases):
            result.pretrained_roots.add(name)
    for name in result.classes:
        if any(result.is_a(name, root) for root in result.pretrained_roots):
            result.pretrained.add(name)
    for name in result.pretrained:
        info = result.classes[name]
        if info.layer_lists:
            result.base_models.add(name)
            result.decoder_layers |= set(info.layer_lists.values())
    # Encoder-style models keep the layer list in a plain submodule (`self.encoder.layer`):
    # the pretrained class holding that submodule is the base model.
    for name in result.pretrained - result.base_models:
        for held in result.classes[name].children.values():
            holder = result.classes.get(held)
            if holder and holder.name not in result.pretrained and holder.layer_lists:
                result.base_models.add(name)
                result.decoder_layers |= set(holder.layer_lists.values())
    for name in result.pretrained - result.base_models:
        for attr, held in result.classes[name].children.items():
            if held in result.base_models:
                result.heads[name] = attr
    # A head may hold the base model through a pretrained wrapper (`ForCausalLM.model` ->
    # `Model.decoder` -> `Decoder` with the layers): a class holding a head is a head too.
    # A class holding two base models (an encoder and a decoder), or another pretrained model
    # beside the head (a vision tower: a composite), is a model, not a wrapper.
    wrappers = {
        h: a for h, a in result.heads.items()
        if sum(held in result.base_models for held in result.classes[h].children.values()) == 1
    }
    while wrappers:
        found = {}
        for name in result.pretrained - result.base_models - set(result.heads):
            held = result.classes[name].children
            attr = next((a for a, child in held.items() if child in wrappers), None)
            if attr is not None and sum(child in result.pretrained for child in held.values()) == 1:
                found[name] = attr
        result.heads.update(found)
        wrappers = found
    return result
