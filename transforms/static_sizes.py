"""Integer sizes a module's `__init__` computes from its config, read without running the code.

A checkpoint conversion needs numbers (how many rows of a fused weight belong to each
part), while the code only has expressions: `self.num_key_value_heads * self.head_dim`.
This evaluates the plain arithmetic of `__init__` (integers, `+ - * //`, `config.x`,
`getattr(config, "x", default)`, attributes assigned before) with the values of
config.json, falling back on the literal defaults of the config class's `__init__`.
Anything else is unknown, and the caller must not guess.
"""

from __future__ import annotations

import libcst as cst

from transforms.cst_utils import dotted, is_self_attr, last_part

UNKNOWN = None


def config_values(config_json: dict | None, config_init: cst.FunctionDef | None) -> dict:
    """config.json over the literal defaults of the config class's `__init__` parameters."""
    values: dict = {}
    if config_init is not None:
        for param in (*config_init.params.params, *config_init.params.kwonly_params):
            if param.default is not None and (value := _literal(param.default)) is not None:
                values[param.name.value] = value
    values.update(config_json or {})
    return values


def _literal(node: cst.BaseExpression):
    if isinstance(node, cst.Integer):
        return int(node.value)
    if isinstance(node, cst.Name) and node.value in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[node.value]
    return None


class InitSizes:
    """The values of `self.x` and local names after the top-level statements of `__init__`
    that come before `stop`; the parameter that receives the config reads `config`."""

    def __init__(self, init: cst.FunctionDef, config: dict, stop: cst.CSTNode | None = None):
        self.config = config
        self.config_params = {
            p.name.value
            for p in init.params.params[1:]
            if p.name.value == "config" or (p.annotation and last_part(dotted(p.annotation.annotation)).endswith("Config"))
        }
        self.attrs: dict[str, object] = {}
        self.locals: dict[str, object] = {}
        for stmt in init.body.body:
            if stmt is stop:
                break
            if not isinstance(stmt, cst.SimpleStatementLine):
                continue
            for small in stmt.body:
                if isinstance(small, cst.Assign) and len(small.targets) == 1:
                    self._bind(small.targets[0].target, self.value(small.value))

    def _bind(self, target: cst.BaseExpression, value) -> None:
        if is_self_attr(target):
            self.attrs[target.attr.value] = value
        elif isinstance(target, cst.Name):
            self.locals[target.value] = value

    def value(self, node: cst.BaseExpression):
        """The integer (or config value) `node` evaluates to, or UNKNOWN."""
        if isinstance(node, cst.Integer):
            return int(node.value)
        if isinstance(node, cst.Name):
            return self.locals.get(node.value, UNKNOWN)
        if isinstance(node, cst.Attribute):
            if is_self_attr(node):
                return self.attrs.get(node.attr.value, UNKNOWN)
            if isinstance(node.value, cst.Name) and node.value.value in self.config_params:
                return self.config.get(node.attr.value, UNKNOWN)
            return UNKNOWN
        if isinstance(node, cst.Call):
            return self._call(node)
        if isinstance(node, cst.BinaryOperation):
            left, right = self.value(node.left), self.value(node.right)
            if not (_is_int(left) and _is_int(right)):
                return UNKNOWN
            op = node.operator
            if isinstance(op, cst.Add):
                return left + right
            if isinstance(op, cst.Subtract):
                return left - right
            if isinstance(op, cst.Multiply):
                return left * right
            if isinstance(op, cst.FloorDivide) and right:
                return left // right
            if isinstance(op, cst.Divide) and right and left % right == 0:
                return left // right
        return UNKNOWN

    def _call(self, node: cst.Call):
        name = dotted(node.func)
        args = [a.value for a in node.args]
        if name == "int" and len(args) == 1:
            value = self.value(args[0])
            return value if _is_int(value) else UNKNOWN
        if name == "getattr" and len(args) in (2, 3) and isinstance(args[1], cst.SimpleString):
            subject, key = args[0], args[1].evaluated_value
            if isinstance(subject, cst.Name) and subject.value in self.config_params:
                if key in self.config and self.config[key] is not None:
                    return self.config[key]
                return self.value(args[2]) if len(args) == 3 else UNKNOWN
        return UNKNOWN


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
