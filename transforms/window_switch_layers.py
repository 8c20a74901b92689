"""Layer types of a model whose config switches some layers to a sliding window (CONTRACT F2, C4, C5).

GPT-Neo's attention narrows its causal buffer to a band when `__init__`'s switch says so,
`if attention_type == "local": bias = bitwise_xor(bias, tril(bias, -config.window_size))`,
the switch coming from the config through the layer that builds the attention
(`self.attention_type = config.attention_layers[layer_id]`). attention-interface turns the
band into `self.sliding_window` and masks into one mask per layer type; transformers 5's
masks, caches and continuous batching read the window and the type of each layer from the
config. The config class gains the two properties they read:

    @property
    def sliding_window(self):
        return self.window_size

    @property
    def layer_types(self):
        return ["sliding_attention" if t == "local" else "full_attention" for t in self.attention_layers]
"""

from __future__ import annotations

import libcst as cst

from transforms.base import Transform
from transforms.causal_buffer import WINDOW_SWITCHES
from transforms.config_defaults import _is_config
from transforms.cst_utils import code_of, param_names, parse_expr, parse_stmts, single_assign, walk


class WindowSwitchLayerTypes(Transform):
    name = "window-switch-layers"
    summary = "Give the config `sliding_window` and per-layer `layer_types` where a switch narrows some layers to a window."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        switches = self.state.facts.get(WINDOW_SWITCHES)
        configs = {s.name.value for s in tree.body if isinstance(s, cst.ClassDef) and _is_config(s)}
        if not switches or not configs:
            return tree
        attention, (test, size) = sorted(switches.items())[0]
        declared = self._declarations(attention, test, size)
        if declared is None:
            return tree
        return self.rewrite_classes(tree, configs, lambda cls: self._declare(cls, declared))

    def _declare(self, cls: cst.ClassDef, declared: str) -> cst.ClassDef:
        if any(isinstance(m, cst.FunctionDef) and m.name.value in ("layer_types", "sliding_window") for m in cls.body.body):
            return cls
        props = parse_stmts(declared)
        props[0] = props[0].with_changes(leading_lines=[cst.EmptyLine(indent=False)])
        self.record(cls, f"{cls.name.value}: sliding_window and layer_types from the switch of the local layers")
        return cls.with_changes(body=cls.body.with_changes(body=[*cls.body.body, *props]))

    def _declarations(self, attention: str, test: str, size: str) -> str | None:
        """The two properties, or None (with a diagnostic) when the switch is not traced to a
        config list indexed by the layer."""
        analysis = self.state.analysis
        info = analysis.classes[attention]
        init = info.methods["__init__"]
        switch = sorted({n.value for n in walk(parse_expr(test)) if isinstance(n, cst.Name)} & set(param_names(init)))
        source = self._switch_source(attention, init, switch[0]) if len(switch) == 1 else None
        window = size.removeprefix("config.") if size.startswith("config.") and size.count(".") == 1 else None
        if source is None or window is None:
            self.refuse(None, f"{attention}: the window switch `{test}` (window {size}) is not read from a config "
                        "list indexed by the layer (`config.<types>[layer]`) and a config attribute", attention)
            return None
        element = parse_expr(test).visit(_Rename(switch[0], "t"))
        return (
            f"@property\ndef sliding_window(self):\n    return self.{window}\n\n"
            f"@property\ndef layer_types(self):\n"
            f'    return ["sliding_attention" if {code_of(element)} else "full_attention" for t in self.{source}]\n'
        )

    def _switch_source(self, attention: str, init: cst.FunctionDef, param: str) -> str | None:
        """`attention_layers` when the builder passes `config.attention_layers[layer_id]` (through
        its own attributes) as the attention's `param`."""
        index = param_names(init).index(param) - 1  # positional index, `self` left out
        for info in self.state.analysis.classes.values():
            builder = info.methods.get("__init__")
            if builder is None or attention not in info.children.values():
                continue
            for node in walk(builder):
                if not (isinstance(node, cst.Call) and code_of(node).split("(")[0] and node.args):
                    continue
                attrs = [a for a, c in info.children.items() if c == attention]
                assigned = _assigned_attr(builder, node)
                if assigned not in attrs:
                    continue
                keyword = next((a.value for a in node.args if a.keyword and a.keyword.value == param), None)
                positional = [a.value for a in node.args if a.keyword is None]
                value = keyword or (positional[index] if index < len(positional) else None)
                resolved = _resolve(builder, value) if value is not None else None
                if (isinstance(resolved, cst.Subscript) and code_of(resolved.value).startswith("config.")
                        and code_of(resolved.value).count(".") == 1):
                    return code_of(resolved.value).removeprefix("config.")
        return None


def _assigned_attr(init: cst.FunctionDef, call: cst.Call) -> str | None:
    for node in walk(init):
        assign = single_assign(node) if isinstance(node, cst.SimpleStatementLine) else None
        if assign and assign[1] is call and code_of(assign[0][0]).startswith("self."):
            return code_of(assign[0][0]).removeprefix("self.")
    return None


def _resolve(init: cst.FunctionDef, value: cst.BaseExpression, depth: int = 4) -> cst.BaseExpression:
    """`self.x` replaced by what `__init__` assigned it, in values and subscripted values."""
    if depth == 0:
        return value
    if isinstance(value, cst.Subscript):
        return value.with_changes(value=_resolve(init, value.value, depth - 1))
    if isinstance(value, cst.Attribute) and code_of(value).startswith("self."):
        for node in walk(init):
            assign = single_assign(node) if isinstance(node, cst.SimpleStatementLine) else None
            if assign and code_of(assign[0][0]) == code_of(value):
                return _resolve(init, assign[1], depth - 1)
    return value


class _Rename(cst.CSTTransformer):
    def __init__(self, old: str, new: str):
        self.old, self.new = old, new

    def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.Name:
        return updated.with_changes(value=self.new) if updated.value == self.old else updated
