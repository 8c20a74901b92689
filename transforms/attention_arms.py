"""Attention math split over branches of forward, taken apart for attention_interface.

Two shapes of legacy forward hold more than one copy of the attention math:

- a fused-kernel branch beside the eager math, `if <flag>: out = scaled_dot_product_attention(
  q, k, v, ...) else: <softmax math>` (either arm first). The interface chooses the kernel
  now, so only the eager arm stays (`eager_arm_of_kernel_branches`);
- math chosen by an input, `if bias is None: <math, return> else: <other math, return>`:
  each arm is a path of its own, routed on its own (`math_branch` finds the arms). Only
  one arm runs per forward, so each forward still calls the interface once.
"""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst

from transforms.attention_math import SCORE_PRODUCTS, SOFTMAX, has_call, has_product
from transforms.cst_utils import (
    SharingTransformer,
    assigned_names,
    call_name,
    code_of,
    dotted,
    function_defs,
    last_part,
    names_read,
    param_names,
    single_assign,
    walk,
)

# Calls of a fused attention kernel: the legacy code's own backend selection.
FUSED_KERNELS = {"scaled_dot_product_attention", "flash_attn_func", "flash_attn_varlen_func", "memory_efficient_attention"}


def _calls_kernel(node: cst.CSTNode) -> bool:
    return any(isinstance(c, cst.Call) and last_part(call_name(c)) in FUSED_KERNELS for c in walk(node))


def _kernel_arm_dropped(stmt: cst.If, later: list[cst.BaseStatement]) -> list[cst.BaseStatement] | None:
    """The eager arm of `if ...: <fused kernel> else: <softmax math>` (or the other way round),
    when the kernel arm binds nothing read in `later` that the eager arm does not bind too."""
    if not isinstance(stmt.orelse, cst.Else) or not isinstance(stmt.body, cst.IndentedBlock):
        return None
    kernel, eager = stmt.body.body, stmt.orelse.body.body
    if not _is_kernel_arm(kernel):  # `if output_attentions: <math> else: <kernel>`
        kernel, eager = eager, kernel
    if not _is_kernel_arm(kernel) or not any(has_call(s, SOFTMAX) for s in eager):
        return None
    bound_eager = set().union(set(), *(_bound(s) for s in eager))
    kernel_only = set().union(set(), *(_bound(s) for s in kernel)) - bound_eager
    read_later = set().union(set(), *(names_read(s) for s in later))
    return None if kernel_only & read_later else list(eager)


def _is_kernel_arm(stmts) -> bool:
    return any(_calls_kernel(s) for s in stmts) and not any(has_call(s, SOFTMAX) for s in stmts)


def _bound(stmt: cst.CSTNode) -> set[str]:
    return set().union(set(), *(assigned_names(n) for n in walk(stmt) if isinstance(n, cst.SimpleStatementLine)))


def eager_arm_of_kernel_branches(stmts: list[cst.BaseStatement]) -> list[cst.BaseStatement]:
    """`stmts` with every fused-kernel branch replaced by its eager arm, in `if` arms too."""
    out: list[cst.BaseStatement] = []
    for index, stmt in enumerate(stmts):
        eager = _kernel_arm_dropped(stmt, stmts[index + 1 :]) if isinstance(stmt, cst.If) else None
        if eager is not None:
            eager = eager_arm_of_kernel_branches(eager)
            out += [eager[0].with_changes(leading_lines=stmt.leading_lines), *eager[1:]]
        elif isinstance(stmt, cst.If) and has_call(stmt, SOFTMAX):
            out.append(stmt.visit(_KernelArmsInBlocks()))
        else:
            out.append(stmt)
    return out


class _KernelArmsInBlocks(SharingTransformer):
    def leave_IndentedBlock(self, original: cst.IndentedBlock, updated: cst.IndentedBlock) -> cst.IndentedBlock:
        body = eager_arm_of_kernel_branches(list(updated.body))
        return updated if body == list(updated.body) else updated.with_changes(body=body)


@dataclass
class MathBranch:
    """`if a: ... elif b: ... else: ...` at `index` of forward, every arm holding math."""

    index: int
    branch: cst.If
    arms: list[list[cst.BaseStatement]]  # the body of each arm, in order, `else` last


def math_branch(body: list[cst.BaseStatement]) -> MathBranch | None:
    """The top-level `if` whose every arm (an `else` included) computes scores and a softmax."""
    for index, stmt in enumerate(body):
        if not isinstance(stmt, cst.If) or not has_call(stmt, SOFTMAX):
            continue
        arms = []
        node: cst.If | cst.Else | None = stmt
        while isinstance(node, cst.If):
            arms.append(list(node.body.body))
            node = node.orelse
        if node is None or len(arms) < 1:
            return None
        arms.append(list(node.body.body))
        # Every arm holds the whole math, the q @ k^T product too: a softmax alone chosen by a
        # dtype (`if s.dtype == torch.float16: w = softmax(...) else: ...`) is no such branch.
        if all(any(has_call(s, SOFTMAX) for s in arm) and any(has_product(s, SCORE_PRODUCTS) for s in arm) for arm in arms):
            return MathBranch(index, stmt, arms)
        return None
    return None


def with_arms(branch: cst.If, arms: list[list[cst.BaseStatement]]) -> cst.If:
    """`branch` with the bodies of its arms replaced, in order."""
    *heads, last = arms

    def rebuild(node, remaining):
        if isinstance(node, cst.If):
            return node.with_changes(
                body=node.body.with_changes(body=remaining[0]), orelse=rebuild(node.orelse, remaining[1:])
            )
        return node.with_changes(body=node.body.with_changes(body=last))

    return rebuild(branch, heads)


def arm_tests(branch: cst.If) -> list[cst.BaseExpression | None]:
    """The test of each arm (None for the final `else`)."""
    tests: list[cst.BaseExpression | None] = []
    node: cst.If | cst.Else | None = branch
    while isinstance(node, cst.If):
        tests.append(node.test)
        node = node.orelse
    return [*tests, None]


@dataclass
class ConfigSwitch:
    """An arm of a math branch runs exactly when `bool(config.<attribute>) == value`."""

    attribute: str
    value: bool

    def test(self, config: str) -> str:
        return f"{config}.{self.attribute}" if self.value else f"not {config}.{self.attribute}"


def switch_of_arm(analysis, attention: str, branch: cst.If, arm: int) -> ConfigSwitch | None:
    """The config switch that selects arm `arm` of `if p is None: ... else: ...` in the attention
    forward, where `p` is an input the base model builds from a switch and hands down through
    the decoder layer: `if self.use_x: p = build(...) else: p = None`, `self.use_x = config.x`
    (or `if config.x:`). None when the data flow is not that plain."""
    tests = arm_tests(branch)
    if len(tests) != 2 or not isinstance(tests[0], cst.Comparison) or len(tests[0].comparisons) != 1:
        return None
    comparison = tests[0].comparisons[0]
    if not (isinstance(tests[0].left, cst.Name) and isinstance(comparison.comparator, cst.Name)
            and comparison.comparator.value == "None" and isinstance(comparison.operator, (cst.Is, cst.IsNot))):
        return None
    runs_when_none = isinstance(comparison.operator, cst.Is) == (arm == 0)
    passed = _passed_down(analysis, attention, tests[0].left.value)
    if passed is None:
        return None
    base, name = passed
    switch = _built_under_switch(analysis, base, name)
    if switch is None:
        return None
    return ConfigSwitch(switch, not runs_when_none)


def _param_of_call(call: cst.Call, param: str, params: list[str]) -> str | None:
    """The name passed for `param` (by keyword, or by position in `params`), if a plain name."""
    for position, arg in enumerate(call.args):
        if (arg.keyword is not None and arg.keyword.value == param) or (
            arg.keyword is None and position < len(params) and params[position] == param
        ):
            return arg.value.value if isinstance(arg.value, cst.Name) else None
    return None


def _forward_params(info) -> list[str]:
    forward = function_defs(info.node).get("forward")
    return param_names(forward)[1:] if forward is not None else []


def _passed_down(analysis, attention: str, param: str) -> tuple[str, str] | None:
    """(base model class, the name its forward passes to the layers) for the attention input
    `param`, passed through the decoder layer's forward parameter of the same role."""
    params = _forward_params(analysis.classes[attention])
    for layer_name, info in analysis.classes.items():
        attrs = [a for a, cls in info.children.items() if cls == attention]
        forward = function_defs(info.node).get("forward")
        if not attrs or forward is None:
            continue
        calls = [c for c in walk(forward) if isinstance(c, cst.Call) and isinstance(c.func, cst.Attribute)
                 and isinstance(c.func.value, cst.Name) and c.func.value.value == "self" and c.func.attr.value in attrs]
        passed = {_param_of_call(c, param, params) for c in calls}
        if len(passed) != 1 or None in passed or next(iter(passed)) not in _forward_params(info):
            return None
        layer_param = next(iter(passed))
        for base_name, base in analysis.classes.items():
            if layer_name not in base.layer_lists.values():
                continue
            base_forward = function_defs(base.node).get("forward")
            names = {
                _param_of_call(c, layer_param, []) for c in walk(base_forward) if isinstance(c, cst.Call)
                and any(a.keyword is not None and a.keyword.value == layer_param for a in c.args)
            } if base_forward is not None else set()
            if len(names) == 1 and None not in names:
                return base_name, names.pop()
        return None
    return None


def _built_under_switch(analysis, base: str, name: str) -> str | None:
    """`x` for `if self.use_x: name = <call> else: name = None` (`self.use_x = config.x` in
    __init__) or `if config.x: ...`, the only place the base model's forward sets `name` None."""
    methods = function_defs(analysis.classes[base].node)
    forward, init = methods.get("forward"), methods.get("__init__")
    if forward is None or init is None:
        return None
    found = []
    for node in walk(forward):
        if not (isinstance(node, cst.If) and isinstance(node.orelse, cst.Else)):
            continue
        sets_none = [s for s in node.orelse.body.body if single_assign(s) and dotted(single_assign(s)[0][0]) == name
                     and code_of(single_assign(s)[1]) == "None"]
        sets_value = [s for s in node.body.body if single_assign(s) and dotted(single_assign(s)[0][0]) == name
                      and isinstance(single_assign(s)[1], cst.Call)]
        if sets_none and sets_value:
            found.append(node.test)
    nones = [n for n in walk(forward) if isinstance(n, cst.Assign) and dotted(n.targets[0].target) == name
             and code_of(n.value) == "None"]
    if len(found) != 1 or len(nones) != 1:
        return None
    test = dotted(found[0])
    if test is None:
        return None
    if test.startswith(("config.", "self.config.")) and test.count(".") == test.startswith("self.") + 1:
        return test.rsplit(".", 1)[1]
    if test.startswith("self.") and test.count(".") == 1:
        for node in walk(init):
            if isinstance(node, cst.Assign) and dotted(node.targets[0].target) == test:
                source = dotted(node.value) or ""
                if source.startswith("config.") and source.count(".") == 1:
                    return source.split(".", 1)[1]
    return None
