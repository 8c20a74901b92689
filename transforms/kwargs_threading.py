"""Thread `**kwargs: Unpack[TransformersKwargs]` from every head down to attention (C1, C2).

Engines hand their attention metadata to the top-level forward as keywords; it reaches
their kernel only if every forward on the way accepts `**kwargs` and passes it on. The
path is found from the module tree: each class whose children lead to an attention
module gets the parameter, and each call to such a child passes it.
"""

from __future__ import annotations

import libcst as cst
from libcst.codemod.visitors import AddImportsVisitor

from transforms.base import Transform
from transforms.cst_utils import (
    SharingTransformer,
    dotted,
    function_defs,
    is_self_attr,
    names_read,
    parse_expr,
    star_kwargs_name,
)

ANNOTATION = "Unpack[TransformersKwargs]"


class ThreadKwargs(Transform):
    name = "kwargs-threading"
    summary = "Add **kwargs: Unpack[TransformersKwargs] to every forward on the way to attention and pass it on."
    leaves_interface_code = True

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        on_path = analysis.path_to_attention()
        targets = {n for n in on_path if analysis.classes[n].file == self.filename}
        if not targets:
            return tree
        return self.rewrite_classes(
            tree, targets, lambda cls: self._rewrite_class(cls, analysis.classes[cls.name.value], on_path)
        )

    def _rewrite_class(self, cls: cst.ClassDef, info, on_path: set[str]) -> cst.ClassDef:
        forward = function_defs(cls).get("forward")
        if forward is None:
            return cls
        name = star_kwargs_name(forward) or "kwargs"
        new_forward = forward
        star = forward.params.star_kwarg
        if not isinstance(star, cst.Param):
            star = cst.Param(name=cst.Name(name), star="**")
        if star.annotation is None:
            star = star.with_changes(annotation=cst.Annotation(parse_expr(ANNOTATION)))
            new_forward = new_forward.with_changes(params=new_forward.params.with_changes(star_kwarg=star))
            AddImportsVisitor.add_needed_import(self.context, "transformers.processing_utils", "Unpack")
            AddImportsVisitor.add_needed_import(self.context, "transformers.utils", "TransformersKwargs")
            self.record(forward, f"{cls.name.value}.forward accepts **{name}: {ANNOTATION}")

        refusals = _refusals_of_extra_keywords(new_forward, name)
        if refusals:
            body = [s for s in new_forward.body.body if s not in refusals]
            new_forward = new_forward.with_changes(body=new_forward.body.with_changes(body=body))
            self.record(forward, f"{cls.name.value}.forward: no longer raises on extra keywords in **{name}: they are passed on")

        child_attrs = set(_paths_on(info, on_path, self.state.analysis))
        list_attrs = {a for a, c in info.layer_lists.items() if c in on_path}
        threader = _PassKwargs(name, child_attrs, list_attrs)
        new_forward = new_forward.visit(threader)
        if threader.count:
            self.record(forward, f"{cls.name.value}.forward passes **{name} to {threader.count} submodule call(s)")
        if new_forward is forward:
            return cls
        return cls.deep_replace(forward, new_forward)


def _refusals_of_extra_keywords(forward: cst.FunctionDef, name: str) -> list[cst.If]:
    """`if len(kwargs) > 0: raise ...` / `if kwargs: raise ...`: a forward that took `**kwargs`
    only to refuse what it did not know (deprecated arguments). Engines pass their metadata
    there, so the refusal goes once the keywords are passed on."""
    found = []
    for stmt in forward.body.body:
        if not isinstance(stmt, cst.If) or stmt.orelse is not None or names_read(stmt.test) - {"len"} != {name}:
            continue
        inner = stmt.body.body
        if inner and all(isinstance(s, cst.SimpleStatementLine) and all(isinstance(x, cst.Raise) for x in s.body) for s in inner):
            found.append(stmt)
    return found


def _paths_on(info, on_path: set[str], analysis, prefix: str = "", depth: int = 3):
    """Dotted attribute paths from `info` to children on the path to attention: `model`, and
    `model.decoder` where a head calls the module its base-model wrapper holds directly."""
    for attr, held in info.children.items():
        if held in on_path:
            yield prefix + attr
            if depth > 1 and held in analysis.classes:
                yield from _paths_on(analysis.classes[held], on_path, analysis, f"{prefix}{attr}.", depth - 1)


class _PassKwargs(SharingTransformer):
    """Append `**kwargs` to calls of children on the path that do not already pass one."""

    def __init__(self, kwargs_name: str, child_attrs: set[str], list_attrs: set[str]):
        self.kwargs_name = kwargs_name
        self.child_attrs = child_attrs
        self.list_attrs = list_attrs
        self.loop_vars: set[str] = set()
        self.count = 0

    def visit_For(self, node: cst.For) -> None:
        name = self._layer_name(node.target, node.iter)
        if name:
            self.loop_vars.add(name)

    def _layer_name(self, target: cst.BaseExpression, iterable: cst.BaseExpression) -> str | None:
        """The loop variable bound to the layers: `for layer in self.layers`, also through
        `enumerate(...)`, `zip(self.layers, ...)` and slices."""
        if isinstance(iterable, cst.Subscript):
            iterable = iterable.value  # self.layers[: n]
        if is_self_attr(iterable) and iterable.attr.value in self.list_attrs:
            return target.value if isinstance(target, cst.Name) else None
        if not (isinstance(iterable, cst.Call) and isinstance(target, cst.Tuple)):
            return None
        elements = [e.value for e in target.elements]
        if dotted(iterable.func) == "enumerate" and len(elements) == 2 and iterable.args:
            return self._layer_name(elements[1], iterable.args[0].value)
        if dotted(iterable.func) == "zip" and len(elements) == len(iterable.args):
            for element, arg in zip(elements, iterable.args, strict=True):
                found = self._layer_name(element, arg.value)
                if found:
                    return found
        return None

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
        func = updated.func
        is_child = (dotted(func) or "").removeprefix("self.") in self.child_attrs and (dotted(func) or "").startswith("self.")
        is_layer = isinstance(func, cst.Name) and func.value in self.loop_vars
        is_indexed = isinstance(func, cst.Subscript) and is_self_attr(func.value) and func.value.attr.value in self.list_attrs
        if not (is_child or is_layer or is_indexed):
            return updated
        if any(arg.star == "**" for arg in updated.args):
            return updated
        self.count += 1
        return updated.with_changes(args=[*updated.args, cst.Arg(value=cst.Name(self.kwargs_name), star="**")])
