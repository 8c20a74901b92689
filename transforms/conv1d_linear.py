"""transformers' `Conv1D` projections become `nn.Linear`, their weights transposed (CONTRACT D1, F3).

`Conv1D(nf, nx)` computes `x @ W + b` with `W` stored `[nx, nf]`; `nn.Linear(nx, nf)`
computes the same with `W` stored `[nf, nx]`. transformers' column- and row-parallel styles
(and the engines' parallel linear layers) split `nn.Linear` only, so a GPT-2 style model
with `Conv1D` cannot be sharded as it is. The constructor is swapped and the checkpoint
conversion transposes each such weight (a `permute` weight op; the bias is unchanged).
Only the projections under the base model that the plan inference found are converted.
"""

from __future__ import annotations

import re

import libcst as cst
from libcst.codemod.visitors import AddImportsVisitor

from porter.weights import WeightOp
from transforms.base import Transform
from transforms.cst_utils import SharingTransformer, dotted, is_self_attr, last_part, walk
from transforms.parallel_plans import plans_for


def weight_pattern(path: str) -> str:
    """`h.*.attn.c_attn` -> a regex for its weight in any checkpoint (with or without the
    head's prefix)."""
    body = re.escape(path).replace(r"\*", r"\d+")
    return rf"((?:.+\.)?{body}\.weight)"


class Conv1DToLinear(Transform):
    name = "conv1d-linear"
    summary = "Turn transformers' Conv1D projections into nn.Linear with transposed weights."
    leaves_interface_code = True

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        plans = plans_for(self.state)
        owners: dict[str, set[str]] = {}
        for path, owner in plans.conv1d.items():
            owners.setdefault(owner, set()).add(path.rsplit(".", 1)[-1])
        analysis = self.state.analysis
        names = {o for o in owners if o in analysis.classes and analysis.classes[o].file == self.filename}
        if not names:
            return tree
        self._converted: set[tuple[str, str]] = set()
        new = self.rewrite_classes(tree, names, lambda cls: self._rewrite(cls, owners[cls.name.value]))
        for path, owner in plans.conv1d.items():
            if (owner, path.rsplit(".", 1)[-1]) in self._converted:
                self.state.weight_ops.append(WeightOp("permute", weight_pattern(path), (r"\1",), perm_spec=(1, 0)))
        if self._converted:
            AddImportsVisitor.add_needed_import(self.context, "torch", "nn")
        return new

    def _rewrite(self, cls: cst.ClassDef, attrs: set[str]) -> cst.ClassDef:
        init = next((s for s in cls.body.body if isinstance(s, cst.FunctionDef) and s.name.value == "__init__"), None)
        if init is None:
            return cls
        swaps: dict[cst.Call, cst.Call] = {}
        for node in walk(init):
            if not isinstance(node, cst.Assign) or not isinstance(node.value, cst.Call):
                continue
            call = node.value
            if last_part(dotted(call.func)) != "Conv1D":
                continue
            if not any(is_self_attr(t.target) and t.target.attr.value in attrs for t in node.targets):
                continue
            args = call.args
            if len(args) != 2 or any(a.keyword or a.star for a in args):
                self.refuse(node, "Conv1D built with other than (nf, nx): cannot tell its sizes", cls.name.value)
                continue
            nf, nx = args[0].value, args[1].value
            swaps[call] = cst.parse_expression("nn.Linear(a, b)").with_changes(
                args=[cst.Arg(nx, comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))), cst.Arg(nf)]
            )
            attr = next(t.target.attr.value for t in node.targets if is_self_attr(t.target))
            self._converted.add((cls.name.value, attr))
            self.record(node, f"{cls.name.value}.{attr}: Conv1D(nf, nx) -> nn.Linear(nx, nf), weight transposed "
                              "in the checkpoint")
        if not swaps:
            return cls

        class _Swap(SharingTransformer):
            def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
                return swaps.get(original, updated)

        return cls.visit(_Swap())
