"""Learned positions counted from the padding mask also take `position_ids` (CONTRACT C3, C5).

The BART-lineage decoders (OPT, BioGPT) look their learned positions up in a module that
counts them from the 2-D padding mask, `positions = cumsum(attention_mask) * attention_mask - 1`,
and is called as `self.embed_positions(attention_mask, past_length)`. Engines and
transformers' continuous batching give `position_ids` (packed sequences, a cache of their
own) and a prepared mask or none: counted from that mask, the positions are wrong. The
module gets a `position_ids` parameter that, when given, replaces the count; the caller
passes its own `position_ids` (a new parameter where it had none, so the keyword reaches it
through `**kwargs`), and builds them as the legacy all-ones mask counted them when neither a
mask nor positions are given. Without `position_ids` the legacy count runs unchanged.

A guard the same decoders hold, `elif attention_mask.shape[1] != past + seq: raise ...`,
checks a 2-D mask; a prepared 4-D mask passes it only when the check is skipped for it.
"""

from __future__ import annotations

import libcst as cst

from transforms.base import Transform
from transforms.cst_utils import (
    call_name,
    code_of,
    dotted,
    function_defs,
    is_docstring,
    keyword_arg,
    last_part,
    names_read,
    param_names,
    parse_expr,
    parse_stmts,
    single_assign,
    star_kwargs_name,
    walk,
    with_none_param,
)

POSITIONS = "position_ids"


def counted_positions(forward: cst.FunctionDef) -> tuple[str, str, str] | None:
    """(first parameter, positions variable, how they are counted) when `forward` counts
    positions and returns a lookup of them: "mask" for a cumsum of its first parameter (a
    padding mask), "arange" for `torch.arange(past, past + seq)` shared by every row; else None."""
    params = param_names(forward)
    if len(params) < 2 or POSITIONS in params:
        return None
    mask = params[1]
    body = [s for s in forward.body.body if not is_docstring(s)]
    if not body or not isinstance(body[-1], cst.SimpleStatementLine) or not isinstance(body[-1].body[0], cst.Return):
        return None
    counted = kind = None
    for stmt in body[:-1]:
        assign = single_assign(stmt)
        if not assign:
            return None
        if counted is not None or not isinstance(assign[0][0], cst.Name):
            continue
        cumsums = [c for c in walk(assign[1]) if isinstance(c, cst.Call) and last_part(call_name(c) or "") == "cumsum"]
        if any(mask in names_read(c) for c in cumsums):
            counted, kind = assign[0][0].value, "mask"
        elif isinstance(assign[1], cst.Call) and last_part(call_name(assign[1]) or "") == "arange":
            counted, kind = assign[0][0].value, "arange"
    if counted is None or counted not in names_read(body[-1]):
        return None
    return mask, counted, kind


# Positions from `arange` are one row, shared by the batch: given `position_ids`, that row.
ONE_ROW = """\
if {positions}.shape[0] > 1 and not torch.equal({positions}, {positions}[:1].expand_as({positions})):
    raise ValueError("this model looks its positions up once for the whole batch: rows of position_ids must be equal")
{counted} = {positions}[0]
"""


class MaskCountedPositions(Transform):
    name = "mask-positions"
    summary = "Let learned positions counted from the padding mask take position_ids, and pass them."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        counters = {}
        for name, info in analysis.classes.items():
            forward = info.methods.get("forward")
            found = counted_positions(forward) if forward is not None else None
            if found:
                counters[name] = found
        if not counters:
            return tree
        callers = {
            n: {a: counters[c][2] for a, c in i.children.items() if c in counters}
            for n, i in analysis.classes.items()
            if i.file == self.filename and any(c in counters for c in i.children.values())
        }
        mine = {n for n in counters if analysis.classes[n].file == self.filename}
        tree = self.rewrite_classes(tree, mine, lambda cls: self._rewrite_counter(cls, counters[cls.name.value]))
        return self.rewrite_classes(tree, set(callers), lambda cls: self._rewrite_caller(cls, callers[cls.name.value]))

    def _rewrite_counter(self, cls: cst.ClassDef, found: tuple[str, str, str]) -> cst.ClassDef:
        forward = function_defs(cls)["forward"]
        _, counted, kind = found
        given_code = f"{counted} = {POSITIONS}\n" if kind == "mask" else ONE_ROW.format(positions=POSITIONS, counted=counted)
        body = list(forward.body.body)
        head = [s for s in body[:1] if is_docstring(s)]
        counting, returned = body[len(head):-1], body[-1]
        given = cst.If(
            test=parse_expr(f"{POSITIONS} is None"),
            body=cst.IndentedBlock(body=counting),
            orelse=cst.Else(body=cst.IndentedBlock(body=parse_stmts(given_code))),
            leading_lines=counting[0].leading_lines,
        )
        new_forward = with_none_param(forward, POSITIONS).with_changes(
            body=forward.body.with_changes(body=[*head, given, returned])
        )
        self.record(forward, f"{cls.name.value}.forward: positions counted by {kind} unless `position_ids` are given")
        return cls.deep_replace(forward, new_forward)

    def _rewrite_caller(self, cls: cst.ClassDef, held: dict[str, str]) -> cst.ClassDef:
        for method in function_defs(cls).values():
            body = list(method.body.body)
            calls = [
                (i, c) for i, stmt in enumerate(body) for c in walk(stmt)
                if isinstance(c, cst.Call) and (dotted(c.func) or "").removeprefix("self.") in held
                and (dotted(c.func) or "").startswith("self.")
            ]
            nested = [c for c in walk(method.body) if isinstance(c, cst.Call) and (dotted(c.func) or "").startswith("self.")
                      and dotted(c.func).removeprefix("self.") in held]
            if len(nested) > len(calls) or len(calls) > 1 or (calls and not calls[0][1].args):
                self.refuse(method, "positions are counted from the mask by a call expected once, at the top of the "
                            "method, as `self.<positions>(mask, past_length)`", cls.name.value)
                return cls
            if not calls:
                continue
            index, call = calls[0]
            if any(a.keyword and a.keyword.value == POSITIONS for a in call.args):
                continue
            kind = held[dotted(call.func).removeprefix("self.")]
            new_method = self._pass_positions(cls.name.value, method, body, index, call, kind)
            if new_method is None:
                return cls
            cls = cls.deep_replace(method, new_method)
        return cls

    def _pass_positions(self, owner, method, body, index, call, kind) -> cst.FunctionDef | None:
        stmt = body[index]
        passed = stmt.deep_replace(call, call.with_changes(args=[*call.args, keyword_arg(POSITIONS, POSITIONS)]))
        if kind == "mask":
            # No mask and no positions: the positions an all-ones mask counts.
            mask = code_of(call.args[0].value)
            past = code_of(call.args[1].value) if len(call.args) > 1 and call.args[1].keyword is None else "0"
            embeds = "inputs_embeds"
            if not any(embeds in _bound(s) for s in body[:index]):
                self.refuse(stmt, f"no `{embeds}` before the positions are counted, to size them without a mask", owner)
                return None
            default = parse_stmts(
                f"if {POSITIONS} is None and {mask} is None:\n"
                f"    {POSITIONS} = torch.arange({past}, {past} + {embeds}.shape[1], device={embeds}.device).unsqueeze(0)\n"
            )[0]
            body[index:index + 1] = [default.with_changes(leading_lines=stmt.leading_lines), passed.with_changes(leading_lines=[])]
            self._guard_length_checks(owner, body, mask)
        else:
            body[index] = passed
        new_method = method.with_changes(body=method.body.with_changes(body=body))
        if POSITIONS not in param_names(method) and star_kwargs_name(method) != POSITIONS:
            new_method = with_none_param(new_method, POSITIONS)
        self.record(stmt, f"{owner}.{method.name.value}: `position_ids` passed to the positions it counted by {kind}")
        return new_method

    def _guard_length_checks(self, owner: str, body: list, mask: str) -> None:
        """`if/elif mask.shape[1] != ...: raise` checks a 2-D padding mask; a prepared 4-D mask skips it."""
        for index, stmt in enumerate(body):
            branch = stmt
            while isinstance(branch, cst.If):
                checks = [c for c in walk(branch.test) if isinstance(c, cst.Comparison)
                          and code_of(c.left) == f"{mask}.shape[1]" and _raises(branch.body)]
                if checks:
                    guarded = cst.BooleanOperation(parse_expr(f"{mask}.ndim == 2"), cst.And(), checks[0])
                    body[index] = stmt.deep_replace(checks[0], guarded)
                    self.record(branch, f"{owner}: the 2-D mask length check skips prepared 4-D masks")
                    return
                branch = branch.orelse if isinstance(branch.orelse, cst.If) else None


def _raises(block: cst.BaseSuite) -> bool:
    return any(isinstance(n, cst.Raise) for n in walk(block))


def _bound(stmt: cst.CSTNode) -> set[str]:
    """Names a statement assigns anywhere inside it (branches included)."""
    names = set()
    for node in walk(stmt):
        if isinstance(node, (cst.Assign, cst.AnnAssign)):
            targets = node.targets if isinstance(node, cst.Assign) else [node]
            for target in targets:
                if isinstance(target.target, cst.Name):
                    names.add(target.target.value)
        elif isinstance(node, cst.Param):
            names.add(node.name.value)
    return names
