"""`get_image_features` on the model that fuses images into the text (CONTRACT E2).

Engines compute image features apart from the language model: they call
`model.get_image_features(pixel_values, **kwargs)`. Legacy vision-language code computes
them inline in the forward of the class that fuses modalities. That class is recognised
by its forward: a pretrained class whose forward takes `pixel_values`, hands it to a
child module (`self.vision_tower(pixel_values, ...)`) and uses the result together with
the text stream (`inputs_embeds`, `input_ids`); a vision model alone is left as it is.
The statements that turn the pixels into features are found by data flow, from that call
while each next statement reads what the previous ones produced and no text input
(`input_ids`, `inputs_embeds`, the masks...); they move, unchanged, into
`get_image_features`, and forward calls it in their place. Forward parameters they read
(a feature layer, a selection strategy) become keyword parameters, with the defaulting
statements forward had for them; the keywords forward threads to the vision tower
(`**kwargs`, added by kwargs_threading, which runs first) are passed on.
"""

from __future__ import annotations

import builtins

import libcst as cst

from transforms.base import Transform
from transforms.cst_utils import (
    assigned_names,
    code_of,
    free_names,
    function_defs,
    is_self_attr,
    names_read,
    param_names,
    parse_stmts,
    star_kwargs_name,
    walk,
)

PIXELS = "pixel_values"
METHOD = "get_image_features"
TEXT_STREAM = {"input_ids", "inputs_embeds"}  # what image features are merged into
TEXT_INPUTS = {"input_ids", "inputs_embeds", "attention_mask", "position_ids", "labels", "past_key_values", "cache_position"}


class ImageFeaturesMethod(Transform):
    name = "multimodal-features"
    summary = "Move the inline image-feature computation of a fusing model into get_image_features."
    leaves_interface_code = True

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        fusing = {
            name
            for name in analysis.pretrained
            if analysis.classes[name].file == self.filename
            and METHOD not in analysis.classes[name].methods
            and PIXELS in param_names(analysis.classes[name].methods.get("forward") or _NO_FUNCTION)
        }
        self._module_names = {n for s in tree.body for n in _defined(s)}
        return self.rewrite_classes(tree, fusing, self._rewrite) if fusing else tree

    def _rewrite(self, cls: cst.ClassDef) -> cst.ClassDef:
        forward = function_defs(cls)["forward"]
        found = _feature_run(forward.body)
        if found is None:
            return cls  # pixels only passed through (a head delegating to its base model)
        suite, start, end = found
        run = list(suite.body[start : end + 1])
        produced = set().union(*(assigned_names(s) for s in run), *(_assigned_anywhere(s) for s in run))
        after = [s for s in suite.body[end + 1 :]]
        used_after = set().union(*(names_read(s) for s in after)) if after else set()
        outputs = sorted(produced & used_after)
        if not any(names_read(s) & set(outputs) and names_read(s) & TEXT_STREAM for s in after):
            return cls  # the features never meet the text embeddings: not a fusing model (a vision tower)
        if len(outputs) != 1:
            self.refuse(run[-1], f"the image features are not one name used after their computation ({outputs})", cls.name.value)
            return cls
        output = outputs[0]
        params = param_names(forward)
        kwargs_name = star_kwargs_name(forward)
        free, _ = free_names(run, {"self", PIXELS, kwargs_name or "kwargs"})
        free -= self._module_names | set(dir(builtins))
        not_params = sorted(free - set(params))
        if not_params:
            self.refuse(run[0], f"the image features read {not_params}, which are not forward parameters", cls.name.value)
            return cls
        options = sorted(free - {PIXELS})
        defaults = [s for s in forward.body.body if _defaults(s, options)]
        signature = ", ".join(["self", PIXELS, *(f"{o}=None" for o in options), f"**{kwargs_name or 'kwargs'}"])
        doc = '"""Image features in the embedding space of the language model, one row per image token."""\n'
        method_code = f"def {METHOD}({signature}):\n    {doc}"
        method = parse_stmts(method_code + "    pass\n")[0]
        body = [*(_dedented(s) for s in defaults), *(_dedented(s) for s in run), *parse_stmts(f"return {output}\n")]
        method = method.with_changes(body=method.body.with_changes(body=[method.body.body[0], *body]))
        passes_kwargs = kwargs_name is not None and any(kwargs_name in names_read(s) for s in run)
        call_args = ", ".join([PIXELS, *(f"{o}={o}" for o in options), *([f"**{kwargs_name}"] if passes_kwargs else [])])
        call = parse_stmts(f"{output} = self.{METHOD}({call_args})\n")[0].with_changes(leading_lines=run[0].leading_lines)
        new_suite = suite.with_changes(body=[*suite.body[:start], call, *suite.body[end + 1 :]])
        new_forward = forward.deep_replace(suite, new_suite)
        members = []
        for member in cls.body.body:
            if member is forward:
                members += [
                    method.with_changes(leading_lines=forward.leading_lines),
                    new_forward.with_changes(leading_lines=[cst.EmptyLine(indent=False)]),
                ]
            else:
                members.append(member)
        self.record(forward, f"{cls.name.value}.{METHOD}: the image features forward computed inline")
        return cls.with_changes(body=cls.body.with_changes(body=members))


_NO_FUNCTION = cst.FunctionDef(name=cst.Name("_"), params=cst.Parameters(), body=cst.IndentedBlock(body=[]))


def _defined(stmt) -> set[str]:
    if isinstance(stmt, (cst.FunctionDef, cst.ClassDef)):
        return {stmt.name.value}
    names = set(assigned_names(stmt))
    for node in walk(stmt):
        if isinstance(node, cst.ImportAlias):
            bound = node.asname.name if node.asname else node.name
            names.add(code_of(bound).split(".")[0])
    return names


def _assigned_anywhere(stmt) -> set[str]:
    return {n for node in walk(stmt) if isinstance(node, cst.SimpleStatementLine) for n in assigned_names(node)}


def _passes_pixels_to_child(stmt) -> bool:
    """`x = self.<child>(pixel_values, ...)`: a statement that calls a submodule on the pixels."""
    if not isinstance(stmt, cst.SimpleStatementLine):
        return False
    return any(
        isinstance(node, cst.Call) and is_self_attr(node.func) and any(code_of(a.value) == PIXELS for a in node.args)
        for node in walk(stmt)
    )


def _feature_run(block: cst.IndentedBlock):
    """(suite, first, last) of the statements computing image features, searched in nested blocks."""
    for index, stmt in enumerate(block.body):
        if _passes_pixels_to_child(stmt):
            produced = set(assigned_names(stmt))
            end = index
            for later in range(index + 1, len(block.body)):
                reads = names_read(block.body[later])
                if not reads & produced or reads & TEXT_INPUTS:
                    break
                produced |= _assigned_anywhere(block.body[later])
                end = later
            return block, index, end
        for suite in _suites(stmt):
            found = _feature_run(suite)
            if found is not None:
                return found
    return None


def _suites(stmt) -> list[cst.IndentedBlock]:
    suites = []
    for field in ("body", "orelse"):
        part = getattr(stmt, field, None)
        if isinstance(part, cst.IndentedBlock):
            suites.append(part)
        elif isinstance(part, (cst.Else, cst.If)):
            suites += _suites(part) if isinstance(part, cst.If) else [part.body]
    return suites


def _defaults(stmt, options: list[str]) -> bool:
    """`opt = opt if opt is not None else self.config.opt` (any form that reads only opt and self)."""
    names = assigned_names(stmt)
    return len(names) == 1 and next(iter(names)) in options and names_read(stmt) <= {next(iter(names)), "self", "None"}


def _dedented(stmt):
    return stmt.with_changes(leading_lines=[]) if hasattr(stmt, "leading_lines") else stmt
