"""A forward that shifts a tensor argument in place shifts it out of place (CONTRACT C3, F2).

`position_ids += self.offset` in a positional module's forward (XGLM's sinusoidal
positions) adds the offset to the caller's tensor too. The legacy model built its
positions afresh on every call, so nobody saw it; engines and transformers 5 pass their
own `position_ids`, and reuse them: every layer stack or kernel run after the first
looks up positions shifted once more. `x += y` on a forward parameter becomes
`x = x + y`: the same value inside the forward, the caller's tensor left alone.
"""

from __future__ import annotations

import libcst as cst

from transforms.base import Transform
from transforms.cst_utils import function_defs, param_names

OUT_OF_PLACE = {cst.AddAssign: cst.Add, cst.SubtractAssign: cst.Subtract,
                cst.MultiplyAssign: cst.Multiply, cst.DivideAssign: cst.Divide}


class OutOfPlaceArgumentUpdates(Transform):
    name = "argument-updates"
    summary = "Turn `arg += x` on a forward parameter into `arg = arg + x`, so the caller's tensor is not changed."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        names = {n for n, i in analysis.classes.items() if i.file == self.filename and "forward" in i.methods}
        return self.rewrite_classes(tree, names, self._rewrite_class)

    def _rewrite_class(self, cls: cst.ClassDef) -> cst.ClassDef:
        forward = function_defs(cls)["forward"]
        params = set(param_names(forward)) - {"self"}
        body = list(forward.body.body)
        for index, stmt in enumerate(body):
            update = stmt.body[0] if isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1 else None
            if not (isinstance(update, cst.AugAssign) and isinstance(update.target, cst.Name)
                    and update.target.value in params and type(update.operator) in OUT_OF_PLACE):
                continue
            operator = OUT_OF_PLACE[type(update.operator)]()
            value = cst.BinaryOperation(update.target, operator, update.value)
            body[index] = stmt.with_changes(body=[cst.Assign([cst.AssignTarget(update.target)], value)])
            self.record(stmt, f"{cls.name.value}.forward: `{update.target.value}` updated out of place")
        if body == list(forward.body.body):
            return cls
        return cls.deep_replace(forward, forward.with_changes(body=forward.body.with_changes(body=body)))
