"""Value heads padded to the key head size where the two differ (CONTRACT C5).

Latent attention (DeepSeek-V2 style) builds query/key heads of one size (a part without
and a part with rotary positions) and value heads of another. transformers' continuous
batching, like the paged caches of engines, holds keys and values of one head size,
`config.head_dim` (else hidden size / heads): writing 24-wide keys and 16-wide values fails.
transformers' own DeepSeek-V3 did what this transform writes: the value heads are padded
with zeros to the key head size before the cache and the kernel, and the attention output
is cut back to the value head size after it. The zero columns add nothing to the kept ones,
so eager and sdpa outputs are unchanged. The config class then states the key head size as
`head_dim`, computed from its own fields as the attention module computes it.

The shape is read from the legacy code: the attention output is merged with a head size
attribute (`reshape(b, q, self.num_heads * self.v_head_dim)`) other than the one the
module's `head_dim` holds, and that one is computed from config fields only.
"""

from __future__ import annotations

import libcst as cst

from transforms.base import Transform
from transforms.config_defaults import _is_config
from transforms.cst_utils import code_of, dotted, function_defs, is_self_attr, parse_stmts, walk

RESHAPES = ("reshape", "view")
VALUE_SIZE = "value_head_size"
PADDED = "value_heads_padded"  # facts: attention class -> the key head size, in config fields


class PadValueHeads(Transform):
    name = "value-head-padding"
    summary = "Pad value heads to the key head size for caches and kernels that hold one size."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        trees = {**self.state.trees, self.filename: tree}  # every file as the transforms so far left it
        classes = [s for t in trees.values() for s in t.body if isinstance(s, cst.ClassDef) and _routed(s)]
        sizes = {cls.name.value: size for cls in classes if (size := _key_head_size(cls))}
        if not sizes:
            return tree
        padded = self.state.facts.setdefault(PADDED, {})
        here = {s.name.value for s in tree.body if isinstance(s, cst.ClassDef)} & set(sizes)
        tree = self.rewrite_classes(tree, here, lambda cls: self._pad(cls, padded, sizes[cls.name.value]))
        configs = {s.name.value for s in tree.body if isinstance(s, cst.ClassDef) and _is_config(s)}
        size = next(iter(sizes.values()))
        if configs and len(set(sizes.values())) == 1:
            tree = self.rewrite_classes(tree, configs, lambda cls: self._declare_head_dim(cls, size))
        return tree

    def _pad(self, cls: cst.ClassDef, padded: dict, size: str) -> cst.ClassDef:
        forward = function_defs(cls).get("forward")
        if forward is None or VALUE_SIZE in code_of(forward):
            return cls
        body = list(forward.body.body)
        call_index = next((i for i, s in enumerate(body) if _interface_call(s) is not None), None)
        if call_index is None:
            return cls
        call, output = _interface_call(body[call_index])
        key, value = (code_of(a.value) for a in call.args[2:4])
        update = next((i for i, s in enumerate(body[:call_index]) if ".update(" in code_of(s) and value in code_of(s)), None)
        fetch = next((i for i, s in enumerate(body[:call_index]) if "get_interface(" in code_of(s)), call_index)
        before = update if update is not None else fetch
        padding = parse_stmts(
            "# one head size for caches and kernels that hold one: values padded to the key head size\n"
            f"{VALUE_SIZE} = {value}.shape[-1]\n"
            f"{value} = torch.nn.functional.pad({value}, [0, {key}.shape[-1] - {VALUE_SIZE}])\n"
        )
        cut = parse_stmts(f"{output} = {output}[..., :{VALUE_SIZE}]\n")
        body = [*body[:before], *padding, *body[before:call_index + 1], *cut, *body[call_index + 1:]]
        padded[cls.name.value] = size
        self.record(forward, f"{cls.name.value}.forward: value heads padded to the key head size before the cache "
                             "and the kernel, the output cut back after it")
        return cls.deep_replace(forward, forward.with_changes(body=forward.body.with_changes(body=body)))

    def _declare_head_dim(self, cls: cst.ClassDef, size: str) -> cst.ClassDef:
        init = function_defs(cls).get("__init__")
        if init is None or any(isinstance(n, cst.Attribute) and is_self_attr(n, "head_dim") for n in walk(init)):
            return cls
        fields = {n.attr.value for n in walk(init) if isinstance(n, cst.Attribute) and is_self_attr(n)}
        if not all(part in fields for part in _config_fields(size)):
            return cls
        line = parse_stmts(f"self.head_dim = {size.replace('config.', 'self.')}  # the key head size, as attention computes it\n")
        body = list(init.body.body)
        at = next((i for i, s in enumerate(body) if "super().__init__(" in code_of(s)), len(body))
        new_init = init.with_changes(body=init.body.with_changes(body=[*body[:at], *line, *body[at:]]))
        self.record(init, f"{cls.name.value}.__init__: head_dim = {size} (the key head size: caches hold one)")
        return cls.deep_replace(init, new_init)


def _routed(cls: cst.ClassDef) -> bool:
    forward = function_defs(cls).get("forward")
    return forward is not None and any(_interface_call(s) for s in forward.body.body)


def _interface_call(stmt: cst.CSTNode) -> tuple[cst.Call, str] | None:
    """`out, weights = attention_interface(self, q, k, v, ...)` -> (the call, `out`)."""
    if not isinstance(stmt, cst.SimpleStatementLine) or not isinstance(stmt.body[0], cst.Assign):
        return None
    assign = stmt.body[0]
    call, target = assign.value, assign.targets[0].target
    if not (isinstance(call, cst.Call) and dotted(call.func) == "attention_interface" and len(call.args) >= 4):
        return None
    first = target.elements[0].value if isinstance(target, cst.Tuple) else target
    return (call, code_of(first)) if isinstance(first, cst.Name) else None


def _key_head_size(cls: cst.ClassDef) -> str | None:
    """The key head size, in config fields, of a module that merges its output with another one."""
    methods = function_defs(cls)
    init, forward = methods.get("__init__"), methods.get("forward")
    if init is None or forward is None:
        return None
    assigned = {}
    for node in walk(init):
        if isinstance(node, cst.Assign) and len(node.targets) == 1 and is_self_attr(node.targets[0].target):
            assigned.setdefault(node.targets[0].target.attr.value, node.value)
    head = assigned.get("head_dim")
    while head is not None and is_self_attr(head) and head.attr.value in assigned:  # `self.head_dim = self.q_head_dim`
        head = assigned[head.attr.value]
    if head is None or not _config_fields(code_of(head)) or any(is_self_attr(n) for n in walk(head)):
        return None
    key_attrs = {"head_dim"} | {a for a, v in assigned.items() if code_of(v) == code_of(head)}
    key_attrs |= {v.attr.value for a, v in assigned.items() if a == "head_dim" and is_self_attr(v)}
    for node in walk(forward):
        if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) and node.func.attr.value in RESHAPES:
            for arg in node.args:
                factors = arg.value
                if isinstance(factors, cst.BinaryOperation) and isinstance(factors.operator, cst.Multiply):
                    parts = [factors.left, factors.right]
                    if all(is_self_attr(p) for p in parts):
                        names = [p.attr.value for p in parts]
                        heads = [n for n in names if "head" in n and not any(w in n for w in ("dim", "size"))]
                        sizes = [n for n in names if n not in heads]
                        if heads and sizes and sizes[0] not in key_attrs and sizes[0] in assigned:
                            return code_of(head)
    return None


def _config_fields(code: str) -> list[str]:
    """`config.a + config.b` -> ["a", "b"]; [] when the expression reads anything else."""
    try:
        expr = cst.parse_expression(code)
    except cst.ParserSyntaxError:
        return []
    fields = [n.attr.value for n in walk(expr) if isinstance(n, cst.Attribute) and dotted(n.value) == "config"]
    names = [n for n in walk(expr) if isinstance(n, cst.Name) and n.value != "config"]
    attributes = [n for n in walk(expr) if isinstance(n, cst.Attribute)]
    return fields if fields and len(attributes) == len(fields) and not [n for n in names if n.value not in fields] else []

