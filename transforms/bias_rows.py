"""Position biases built from a padding mask follow each row of a prepared mask (CONTRACT C5).

Legacy ALiBi code builds its additive bias in the base model from the 2D padding mask,
`alibi = build_alibi_tensor(attention_mask, heads, dtype)`, counting key positions over the
attended tokens. Engines and transformers' continuous batching pass a prepared 4D mask
`[batch, 1, q, kv]` over several packed requests instead; a builder written for `[batch, kv]`
then fails or mixes the requests. The call goes through `bias_per_query_row`, which hands a
2D mask to the builder unchanged and calls it once per query row of a 4D mask: each row
attends only its own request's keys, so the positions counted over them are that request's.
"""

from __future__ import annotations

import libcst as cst
from libcst.codemod.visitors import AddImportsVisitor

from transforms.base import Transform
from transforms.cst_utils import call_name, code_of, function_defs, is_self_attr, last_part, parse_stmts, walk

MASK_BUILDERS = {"create_causal_mask", "create_sliding_window_causal_mask", "create_bidirectional_mask"}
HELPER_NAME = "bias_per_query_row"
HELPER = f'''def {HELPER_NAME}(build_bias, attention_mask, *args, **kwargs):
    """`build_bias(mask_2d, ...)` gives `[batch, heads, 1, kv]`; on a prepared 4D mask
    `[batch, 1, q, kv]` it runs once per query row, whose allowed keys are that row's own."""
    if attention_mask is None or attention_mask.dim() != 4:
        return build_bias(attention_mask, *args, **kwargs)
    allowed = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
    batch, _, queries, keys = allowed.shape
    bias = build_bias(allowed[:, 0].reshape(batch * queries, keys).long(), *args, **kwargs)
    return bias.reshape(batch, queries, -1, keys).transpose(1, 2)
'''


def _builder_mask(stmt: cst.CSTNode) -> str | None:
    """The mask variable given to a masking_utils builder in `stmt`, if it calls one."""
    for node in walk(stmt):
        if isinstance(node, cst.Call) and last_part(call_name(node)) in MASK_BUILDERS:
            for arg in node.args:
                if arg.keyword is not None and arg.keyword.value == "attention_mask":
                    return code_of(arg.value)
    return None


def _bias_call(stmt: cst.BaseStatement, mask_var: str) -> cst.Call | None:
    """`x = builder(mask, ...)`: a repo function (or method) given the padding mask first
    (the caller also asks that `x` goes to the layers)."""
    if not isinstance(stmt, cst.SimpleStatementLine) or len(stmt.body) != 1 or not isinstance(stmt.body[0], cst.Assign):
        return None
    call = stmt.body[0].value
    if not isinstance(call, cst.Call) or not (isinstance(call.func, cst.Name) or is_self_attr(call.func)):
        return None
    first = call.args[0] if call.args else None
    if first is None or first.keyword is not None or code_of(first.value) != mask_var:
        return None
    return call


def _passed_to_layers(forward: cst.FunctionDef) -> set[str]:
    """Names passed as arguments to a call inside a `for` loop of `forward`: the layer calls."""
    names = set()
    for loop in walk(forward):
        if isinstance(loop, cst.For):
            for call in walk(loop.body):
                if isinstance(call, cst.Call):
                    names |= {code_of(a.value) for a in call.args}
    return names


class BiasPerQueryRow(Transform):
    name = "bias-rows"
    summary = "Build a padding-mask position bias (ALiBi) per query row when the mask arrives prepared in 4D."
    leaves_interface_code = True

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        owners = {n for n in analysis.base_models if analysis.classes[n].file == self.filename}
        if not owners or not self.state.facts.get("additive_bias"):
            return tree
        self._wrapped = False
        new_tree = self.rewrite_classes(tree, owners, self._rewrite_class)
        if not self._wrapped:
            return tree
        first_class = next(i for i, s in enumerate(new_tree.body) if isinstance(s, cst.ClassDef))
        body = list(new_tree.body)
        helper = parse_stmts(HELPER)[0].with_changes(leading_lines=[cst.EmptyLine(), cst.EmptyLine()])
        body.insert(first_class, helper)
        AddImportsVisitor.add_needed_import(self.context, "torch")  # the helper's; kept by any file that has it
        return new_tree.with_changes(body=body)

    def _rewrite_class(self, cls: cst.ClassDef) -> cst.ClassDef:
        forward = function_defs(cls).get("forward")
        if forward is None:
            return cls
        body = list(forward.body.body)
        mask_at = next(((i, m) for i, s in enumerate(body) if (m := _builder_mask(s))), None)
        if mask_at is None:
            return cls
        changed = False  # in this class; `self._wrapped` says so for the file
        to_layers = _passed_to_layers(forward)
        for i in range(mask_at[0]):
            call = _bias_call(body[i], mask_at[1])
            if call is None or code_of(body[i].body[0].targets[0].target) not in to_layers:
                continue
            wrapped = call.with_changes(func=cst.Name(HELPER_NAME), args=[cst.Arg(call.func), *call.args])
            body[i] = body[i].with_changes(body=[body[i].body[0].with_changes(value=wrapped)])
            self.record(call, f"{cls.name.value}.forward: {code_of(call.func)} builds its bias per query row of a 4D mask")
            changed = True
        if not changed:
            return cls
        self._wrapped = True
        return cls.deep_replace(forward, forward.with_changes(body=forward.body.with_changes(body=body)))
