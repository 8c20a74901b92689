"""Attention whose softmax sits inside a custom autograd function, which port-model refuses.

Some encoders (DeBERTa style) normalise their scores with `XSoftmax.apply(scores, mask, dim)`,
a `torch.autograd.Function` of the repo that masks, applies softmax and zeroes masked rows
in its own `forward` and `backward`. The analysis sees no softmax in the attention class,
so without this check the class would be left unrouted and the port would only fail at
verification. The shape cannot be moved into `eager_attention_forward` faithfully by a
rewrite (the mask semantics and the gradient live in the function), so the class is
refused where it applies the function, naming the function and where it is defined.

Recognised by shape: a class that multiplies tensors (`matmul`, `bmm`, `baddbmm`, `einsum`
or `@`) and calls `F.apply(...)` on a repo class `F` that subclasses an autograd
`Function` whose methods call a softmax.
"""

from __future__ import annotations

import libcst as cst

from transforms.base import Transform
from transforms.cst_utils import call_name, dotted, function_defs, last_part, walk


def softmax_functions(analysis) -> dict[str, cst.ClassDef]:
    """Repo classes that subclass an autograd `Function` and call a softmax: name -> class."""
    from porter.analysis import SOFTMAX_CALLS  # imported here: porter.analysis imports transforms

    found = {}
    for name, info in analysis.classes.items():
        if "Function" not in {last_part(b) for b in info.bases}:
            continue
        calls = {call_name(n) for fn in function_defs(info.node).values() for n in walk(fn)}
        if {last_part(c) if c and not c.startswith(".") else c for c in calls} & SOFTMAX_CALLS:
            found[name] = info.node
    return found


def custom_softmax_call(cls: cst.ClassDef, functions: dict[str, cst.ClassDef]) -> tuple[cst.Call, str] | None:
    """The first `F.apply(...)` of a softmax function `F` in a class that also multiplies tensors."""
    from porter.analysis import MATMUL_CALLS

    applied, multiplies = None, False
    for fn in function_defs(cls).values():
        for node in walk(fn):
            if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.MatrixMultiply):
                multiplies = True
            if not isinstance(node, cst.Call):
                continue
            name = call_name(node) or ""
            multiplies |= (last_part(name) if not name.startswith(".") else name) in MATMUL_CALLS
            owner = dotted(node.func.value) if isinstance(node.func, cst.Attribute) else None
            if applied is None and last_part(name) == "apply" and owner in functions:
                applied = (node, owner)
    return applied if multiplies else None


class RefuseCustomSoftmax(Transform):
    name = "custom-softmax"
    summary = "Refuse attention that normalises its scores with a custom autograd function holding the softmax."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        functions = softmax_functions(analysis)
        if not functions:
            return tree
        for stmt in tree.body:
            if not isinstance(stmt, cst.ClassDef) or stmt.name.value in functions:
                continue
            found = custom_softmax_call(stmt, functions)
            if found is None:
                continue
            call, function = found
            where = analysis.classes[function].file
            self.refuse(
                call,
                f"{stmt.name.value} normalises its attention scores with `{function}.apply` (a custom autograd "
                f"function in {where} that holds the softmax and the masking); port-model moves only a plain "
                "softmax into eager_attention_forward, so this attention cannot be routed through the interface",
                stmt.name.value,
            )
        return tree
