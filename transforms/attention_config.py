"""Give every attention module the model's config (CONTRACT B1, B3).

The attention interface picks the kernel from `self.config._attn_implementation`, and
engines read the module's `config`. Some legacy attention modules are built from plain
numbers (`Attention(config.hidden_size, config.num_attention_heads)`); they get a `config`
parameter, stored as `self.config`, and every place that builds them passes the config it
holds. It is the model's own config object, so a later `set_attn_implementation` reaches
the module too. Classes on the way from the layer list to the attention module that take
no config themselves (a block built from numbers) pass it down the same way. A place that
builds such a module with no config in scope stops the port: the module could not select
its kernel. An attention module that takes `config=None` already (and stores it) is given
the config the same way where its builders leave it out.
"""

from __future__ import annotations

import libcst as cst

from transforms.base import Transform
from transforms.cst_utils import (
    SharingTransformer,
    code_of,
    dotted,
    function_defs,
    keyword_arg,
    last_part,
    param_names,
    parse_stmts,
    walk,
    with_none_param,
)

PARAM = "config"


def _lacks_config(info) -> bool:
    """An `__init__` that neither takes a config nor stores one."""
    init = info.methods.get("__init__")
    return init is not None and PARAM not in param_names(init) and "self.config" not in code_of(init)


def _optional_config(info) -> int | None:
    """The position (after `self`) of an `__init__` parameter `config=None`: a module that
    stores the config it is given, built by code that may give it none (BART-lineage
    attention of transformers 4.4x, built from numbers by its layers)."""
    init = info.methods.get("__init__")
    params = init.params.params if init is not None else []
    for index, param in enumerate(params):
        if param.name.value == PARAM and param.default is not None and code_of(param.default) == "None":
            return index - 1
    return None


def _given_config(call: cst.Call, position: int | None) -> bool:
    """Whether `call` passes a config: by keyword, or positionally up to `position`."""
    if any(a.keyword and a.keyword.value == PARAM for a in call.args):
        return True
    positional = [a for a in call.args if a.keyword is None]
    return position is not None and (len(positional) > position or any(a.star for a in positional))


class ThreadAttentionConfig(Transform):
    name = "attention-config"
    summary = "Pass the model's config to attention modules built from plain numbers."
    leaves_interface_code = True

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        needing = {n for n in analysis.attention if _lacks_config(analysis.classes[n])}
        optional = {n for n in analysis.attention if _optional_config(analysis.classes[n]) is not None}
        if not needing and not optional:
            return tree
        between = analysis.path_to_attention() - analysis.attention - analysis.pretrained
        carriers = {n for n in between if _lacks_config(analysis.classes[n])} if needing else set()
        targets = needing | carriers | optional
        self._positions = {n: _optional_config(analysis.classes[n]) for n in optional}
        new_body = []
        for stmt in tree.body:
            if isinstance(stmt, cst.ClassDef) and stmt.name.value in analysis.classes:
                if stmt.name.value in needing | carriers and analysis.classes[stmt.name.value].file == self.filename:
                    stmt = self._accept_config(stmt, store=stmt.name.value in needing)
                stmt = stmt.with_changes(body=stmt.body.with_changes(body=self._pass_config(stmt.body.body, targets, stmt.name.value)))
            elif isinstance(stmt, cst.FunctionDef):
                stmt = self._pass_config([stmt], targets, None)[0]
            new_body.append(stmt)
        return tree.with_changes(body=new_body)

    def _accept_config(self, cls: cst.ClassDef, store: bool) -> cst.ClassDef:
        init = function_defs(cls)["__init__"]
        new_init = with_none_param(init, PARAM)
        if store:
            line = parse_stmts(f"self.{PARAM} = {PARAM}\n")
            new_init = new_init.with_changes(body=new_init.body.with_changes(body=[*new_init.body.body, *line]))
        what = "stores it as self.config" if store else "passes it on"
        self.record(init, f"{cls.name.value}.__init__ takes the model's config and {what}")
        return cls.deep_replace(init, new_init)

    def _pass_config(self, members, targets: set[str], owner: str | None) -> list:
        """Functions among `members` that build a target pass it their `config`; one with none
        to give is refused."""
        new_members = []
        for function in members:
            calls = [c for c in walk(function) if isinstance(c, cst.Call) and last_part(dotted(c.func)) in targets]
            calls = [c for c in calls if not _given_config(c, self._positions.get(last_part(dotted(c.func))))]
            if not isinstance(function, cst.FunctionDef) or not calls:
                new_members.append(function)
                continue
            where = f"{owner}.{function.name.value}" if owner else function.name.value
            built = ", ".join(sorted({last_part(dotted(c.func)) for c in calls}))
            if PARAM not in param_names(function):
                self.refuse(
                    calls[0],
                    f"{built} is built without a config and `{where}` has no `config` to give it: "
                    "the attention interface reads `self.config._attn_implementation`",
                    owner or function.name.value,
                )
                new_members.append(function)
                continue
            self.record(calls[0], f"{where} gives {built} the config")
            new_members.append(function.visit(_PassConfig(targets, self._positions)))
        return new_members


class _PassConfig(SharingTransformer):
    """`Attention(dim, heads)` -> `Attention(dim, heads, config=config)`."""

    def __init__(self, targets: set[str], positions: dict[str, int]):
        self.targets, self.positions = targets, positions

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
        name = last_part(dotted(updated.func))
        if name not in self.targets or _given_config(updated, self.positions.get(name)):
            return updated
        return updated.with_changes(args=[*updated.args, keyword_arg(PARAM, PARAM)])
