"""Give every attention module its `layer_idx` (CONTRACT B3, C4).

The Cache API addresses layers by index (`cache.update(k, v, layer_idx)`), and engines
read `module.layer_idx`. Code written before transformers 4.36 builds layers without one:
the index of the `ModuleList` comprehension is passed down through the decoder layer's
constructor to the attention module's.
"""

from __future__ import annotations

import libcst as cst

from transforms.base import Transform
from transforms.cst_utils import (
    SharingTransformer,
    code_of,
    dotted,
    function_defs,
    is_self_attr,
    keyword_arg,
    last_part,
    parse_stmts,
    walk,
    with_none_param,
)

PARAM = "layer_idx"


def _has_param(fn: cst.FunctionDef | None, name: str) -> bool:
    return fn is not None and name in [p.name.value for p in (*fn.params.params, *fn.params.kwonly_params)]


class ThreadLayerIndex(Transform):
    name = "layer-index"
    summary = "Pass the layer index from the ModuleList down to every attention module."
    leaves_interface_code = True

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        needing = {n for n in analysis.attention if not _has_param(analysis.classes[n].methods.get("__init__"), PARAM)}
        if not needing:
            return tree
        # Classes between a layer list and an attention module that lack the parameter: the
        # decoder layer and any wrapper it holds on the way (`BertLayer -> BertAttention`).
        between = analysis.path_to_attention() - analysis.attention - analysis.pretrained
        carriers = {n for n in between if not _has_param(analysis.classes[n].methods.get("__init__"), PARAM)}
        carriers -= {n for n in between if analysis.classes[n].layer_lists}
        new_body = []
        for stmt in tree.body:
            if isinstance(stmt, cst.ClassDef):
                name = stmt.name.value
                if name in needing and analysis.classes[name].file == self.filename:
                    stmt = self._accept_index(stmt, store=True)
                if name in carriers and analysis.classes[name].file == self.filename:
                    stmt = self._accept_index(stmt, store=False)
                    stmt = self._pass_to_children(stmt, needing | carriers)
                if analysis.classes[name].layer_lists and analysis.classes[name].file == self.filename:
                    stmt = self._index_layer_lists(stmt, carriers | needing)
            new_body.append(stmt)
        return tree.with_changes(body=new_body)

    def _accept_index(self, cls: cst.ClassDef, store: bool) -> cst.ClassDef:
        init = function_defs(cls).get("__init__")
        if init is None or _has_param(init, PARAM):
            return cls
        new_init = with_none_param(init, PARAM)
        assigned = any(is_self_attr(n, PARAM) for n in walk(init))
        if store and not assigned:
            line = parse_stmts(f"self.{PARAM} = {PARAM}\n")
            new_init = new_init.with_changes(body=new_init.body.with_changes(body=[*new_init.body.body, *line]))
        self.record(init, f"{cls.name.value}.__init__ takes {PARAM}")
        return cls.deep_replace(init, new_init)

    def _pass_to_children(self, cls: cst.ClassDef, targets: set[str]) -> cst.ClassDef:
        init = function_defs(cls).get("__init__")
        if init is None:
            return cls
        new_init = init.visit(_AddKeyword(targets, PARAM))
        return cls.deep_replace(init, new_init) if new_init is not init else cls

    def _index_layer_lists(self, cls: cst.ClassDef, targets: set[str]) -> cst.ClassDef:
        init = function_defs(cls).get("__init__")
        if init is None:
            return cls
        new_init = init.visit(_IndexComprehension(targets))
        if new_init is init or code_of(new_init) == code_of(init):
            return cls
        self.record(init, f"{cls.name.value}.__init__ numbers its layers with {PARAM}")
        return cls.deep_replace(init, new_init)


class _AddKeyword(SharingTransformer):
    """`Attention(config=config)` -> `Attention(config=config, layer_idx=layer_idx)`."""

    def __init__(self, targets: set[str], keyword: str):
        self.targets = targets
        self.keyword = keyword

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
        if last_part(dotted(updated.func)) not in self.targets:
            return updated
        if any(a.keyword and a.keyword.value == self.keyword for a in updated.args):
            return updated
        arg = keyword_arg(self.keyword, self.keyword)
        return updated.with_changes(args=[*updated.args, arg])


class _IndexComprehension(SharingTransformer):
    """`[Layer(config) for _ in range(n)]` -> `[Layer(config, layer_idx=i) for i in range(n)]`."""

    def __init__(self, targets: set[str]):
        self.targets = targets

    def leave_ListComp(self, original: cst.ListComp, updated: cst.ListComp) -> cst.ListComp:
        element = updated.elt
        if not (isinstance(element, cst.Call) and last_part(dotted(element.func)) in self.targets):
            return updated
        if any(a.keyword and a.keyword.value == PARAM for a in element.args):
            return updated
        loop = updated.for_in
        target = loop.target
        if isinstance(target, cst.Name) and target.value == "_":
            loop = loop.with_changes(target=cst.Name(PARAM))
            target = loop.target
        if not isinstance(target, cst.Name):
            return updated
        arg = keyword_arg(PARAM, target.value)
        return updated.with_changes(elt=element.with_changes(args=[*element.args, arg]), for_in=loop)

