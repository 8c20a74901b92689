"""Route attention through `ALL_ATTENTION_FUNCTIONS` (CONTRACT B1-B3).

The legacy eager math inside an attention forward (scores = q k^T, mask, softmax,
dropout, probs v) is cut out, unchanged but for names, into a module-level
`eager_attention_forward`, and the forward calls the interface once in its place. The
region is found by data flow: the softmax, the matmul that produced its input, and the
matmul that consumes its output. Key/value head repetition moves into the eager function
because every other kernel repeats heads itself from `module.num_key_value_groups`.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass

import libcst as cst
from libcst.codemod.visitors import AddImportsVisitor

from transforms.base import Transform
from transforms.cst_utils import (
    assigned_names,
    call_name,
    code_of,
    dotted,
    free_names,
    function_defs,
    is_self_attr,
    last_part,
    names_read,
    parse_expr,
    parse_stmts,
    single_assign,
    spaced,
    star_kwargs_name,
    walk,
)
from transforms.masks import uses_sliding_window

SOFTMAX = {"softmax", ".softmax"}
MATMUL = {"matmul", ".matmul", "bmm"}
REPEAT_HINTS = ("repeat",)


@dataclass
class Region:
    """The span of forward statements holding the eager attention math."""

    start: int
    end: int  # inclusive; guards after the output matmul included
    query: str
    key: str
    value: str
    output: str
    weights: str
    scaling_code: str  # expression for `self.scaling`, in terms of `self`
    score_index: int
    repeat_indices: list[int]
    transpose_index: int


class RouteAttention(Transform):
    name = "attention-interface"
    summary = "Move eager attention math into eager_attention_forward and call ALL_ATTENTION_FUNCTIONS."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        targets = [n for n in sorted(analysis.attention) if analysis.classes[n].file == self.filename]
        if not targets:
            return tree
        new_body: list[cst.CSTNode] = []
        emitted: dict[str, str] = {}  # eager function code -> its name
        for stmt in tree.body:
            if isinstance(stmt, cst.ClassDef) and stmt.name.value in targets:
                rewritten, eager = self._rewrite_class(stmt, emitted, tree)
                if eager is not None:
                    new_body.append(eager)
                new_body.append(rewritten)
            else:
                new_body.append(stmt)
        if emitted:
            AddImportsVisitor.add_needed_import(self.context, "transformers.modeling_utils", "ALL_ATTENTION_FUNCTIONS")
        return tree.with_changes(body=new_body)

    # -- one attention class --------------------------------------------------------------
    def _rewrite_class(self, cls: cst.ClassDef, emitted: dict[str, str], tree: cst.Module):
        methods = function_defs(cls)
        forward = methods.get("forward")
        if forward is None:
            self.refuse(cls, "attention class has no forward method", cls.name.value)
            return cls, None
        if "get_interface(" in code_of(forward) and "ALL_ATTENTION_FUNCTIONS" in code_of(forward):
            self.state.facts.setdefault("routed", set()).add(cls.name.value)
            return cls, None  # already on the interface
        body = list(forward.body.body)
        region = self._find_region(body, forward, cls, tree)
        if region is None:
            return cls, None
        init = methods.get("__init__")
        has_config = init is not None and ("config" in [p.name.value for p in init.params.params] or "self.config" in code_of(init))
        if not has_config:
            self.refuse(cls, "attention module has no `config` to read the selected kernel from", cls.name.value)
            return cls, None

        kwargs_name = star_kwargs_name(forward) or "kwargs"
        dropout_code, eager_code = self._eager_function(body, region, self._mask_candidate(forward))
        eager_name = emitted.get(eager_code)
        eager_node = None
        if eager_name is None:
            eager_name = "eager_attention_forward" if not emitted else f"eager_attention_forward_{len(emitted)}"
            emitted[eager_code] = eager_name
            eager_node = spaced(cst.parse_statement(eager_code.replace("def eager_attention_forward(", f"def {eager_name}(", 1)))

        mask_name = self._mask_name(body, region, forward)
        window = "    sliding_window=self.sliding_window,\n" if uses_sliding_window(self.state.analysis) else ""
        call_site = _with_blank_line_before(parse_stmts(
            f"attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(\n"
            f"    self.config._attn_implementation, {eager_name}\n)\n"
            f"{region.output}, {region.weights} = attention_interface(\n"
            f"    self,\n    {region.query},\n    {region.key},\n    {region.value},\n    {mask_name},\n"
            f"    dropout={dropout_code},\n    scaling=self.scaling,\n{window}    **{kwargs_name},\n)\n"
        ))
        dropped = set(region.repeat_indices) | {region.transpose_index} | set(range(region.start, region.end + 1))
        new_body: list[cst.BaseStatement] = []
        for i, stmt in enumerate(body):
            if i == region.start:
                new_body += call_site
            if i not in dropped:
                new_body.append(stmt)
        new_forward = forward.with_changes(body=forward.body.with_changes(body=new_body))
        if star_kwargs_name(forward) is None:
            new_forward = _add_star_kwargs(new_forward)
        self.state.facts.setdefault("routed", set()).add(cls.name.value)
        self.record(forward, f"{cls.name.value}.forward: attention math moved to {eager_name}; one interface call")

        new_init = self._complete_init(cls, init, region, body) if init is not None else None
        new_members = []
        for member in cls.body.body:
            if member is forward:
                new_members.append(new_forward)
            elif member is init and new_init is not None:
                new_members.append(new_init)
            else:
                new_members.append(member)
        return cls.with_changes(body=cls.body.with_changes(body=new_members)), eager_node

    # -- finding the math ------------------------------------------------------------------
    def _find_region(self, body, forward, cls, tree) -> Region | None:
        where = cls.name.value
        softmax_index = next((i for i, s in enumerate(body) if _has_call(s, SOFTMAX)), None)
        if softmax_index is None:
            self.refuse(forward, "no softmax at the top level of forward (math in a helper or a branch)", where)
            return None
        assign = single_assign(body[softmax_index])
        softmax_call = next(c for c in walk(body[softmax_index]) if call_name(c) and last_part(call_name(c)) in {"softmax"} | {".softmax"})
        scores = _first_name_arg(softmax_call)
        if assign is None or scores is None or not isinstance(assign[0][0], cst.Name):
            self.refuse(body[softmax_index], "softmax is not a plain `name = softmax(name, ...)` assignment", where)
            return None
        weights = assign[0][0].value

        score_index = None
        for i in range(softmax_index, -1, -1):
            if scores in assigned_names(body[i]) and _has_call(body[i], MATMUL):
                score_index = i
                break
        if score_index is None:
            self.refuse(body[softmax_index], f"could not find the q @ k^T matmul that computes {scores}", where)
            return None
        for i in range(score_index + 1, softmax_index):
            if scores in assigned_names(body[i]) and _is_rescale(body[i], scores):
                self.refuse(body[i], f"{scores} is scaled in its own statement; expected the scale in the q @ k^T line", where)
                return None
        score_value = single_assign(body[score_index])[1]
        matmul, scaling = _split_scaling(score_value)
        if matmul is None or len(matmul.args) < 2:
            self.refuse(body[score_index], "scores are not `matmul(q, k.transpose(...))` with an optional scale", where)
            return None
        query = dotted(matmul.args[0].value)
        key_arg = matmul.args[1].value
        is_transpose = isinstance(key_arg, cst.Call) and isinstance(key_arg.func, cst.Attribute)
        is_transpose = is_transpose and key_arg.func.attr.value == "transpose"
        key = dotted(key_arg.func.value) if is_transpose else None
        if not query or not key or "." in query or "." in key:
            self.refuse(body[score_index], "q and k^T in the score matmul are not plain variables", where)
            return None

        output_index = None
        for i in range(softmax_index + 1, len(body)):
            if _has_call(body[i], MATMUL) and weights in names_read(body[i]):
                output_index = i
                break
        if output_index is None:
            self.refuse(body[softmax_index], f"could not find the matmul of {weights} with the values", where)
            return None
        out_assign = single_assign(body[output_index])
        out_call = out_assign[1] if out_assign else None
        if not (isinstance(out_call, cst.Call) and len(out_call.args) == 2 and out_assign and isinstance(out_assign[0][0], cst.Name)):
            self.refuse(body[output_index], "the probs @ v statement is not `out = matmul(probs, v)`", where)
            return None
        value = dotted(out_call.args[1].value)
        output = out_assign[0][0].value

        end = output_index
        while end + 1 < len(body) and _is_guard(body[end + 1]):
            end += 1
        transpose_index = end + 1
        if transpose_index >= len(body) or not _is_head_transpose(body[transpose_index], output):
            self.refuse(
                body[min(transpose_index, len(body) - 1)],
                f"expected `{output} = {output}.transpose(1, 2)` after the attention math",
                where,
            )
            return None
        repeat_indices = [
            i
            for i in range(score_index)
            if assigned_names(body[i]) & {key, value}
            and any(h in last_part(call_name(c) or "").lower() for c in walk(body[i]) for h in REPEAT_HINTS)
        ]
        region = Region(
            start=score_index,
            end=end,
            query=query,
            key=key,
            value=value,
            output=output,
            weights=weights,
            scaling_code=scaling,
            score_index=score_index,
            repeat_indices=repeat_indices,
            transpose_index=transpose_index,
        )
        if not self._free_names_ok(body, region, forward, tree, where):
            return None
        return region

    def _region_statements(self, body, region: Region) -> list[cst.BaseStatement]:
        """The math, without shape guards: they check locals the eager function lacks."""
        indices = [*region.repeat_indices, *range(region.start, region.end + 1)]
        return [(i, body[i].visit(_GuardStripper())) for i in indices if not _is_guard(body[i])]

    def _free_names_ok(self, body, region: Region, forward, tree, where) -> bool:
        module_names = _module_level_names(tree)
        bound = {region.query, region.key, region.value, "self"}
        allowed_params = {self._mask_candidate(forward)}
        for index, stmt in self._region_statements(body, region):
            free, bound = free_names([stmt], bound)
            free -= module_names | set(dir(builtins)) | allowed_params
            if free:
                self.refuse(body[index], f"attention math reads {sorted(free)}, which the interface cannot pass", where)
                return False
        return True

    @staticmethod
    def _mask_candidate(forward: cst.FunctionDef) -> str:
        params = [p.name.value for p in forward.params.params]
        return next((p for p in params if "mask" in p and "head" not in p), "attention_mask")

    def _mask_name(self, body, region: Region, forward) -> str:
        candidate = self._mask_candidate(forward)
        reads = set()
        for _, stmt in self._region_statements(body, region):
            reads |= names_read(stmt)
        return candidate if candidate in reads else "None"

    # -- the eager function ----------------------------------------------------------------
    def _eager_function(self, body, region: Region, mask_name: str) -> tuple[str, str]:
        renames = {region.query: "query", region.key: "key", region.value: "value", "self": "module"}
        renames[mask_name] = "attention_mask"
        dropout_code = "0.0"
        lines = []
        for position, (index, stmt) in enumerate(self._region_statements(body, region)):
            if position == 0:
                stmt = stmt.with_changes(leading_lines=[])
            if index == region.score_index:
                assign = single_assign(stmt)
                matmul, _ = _split_scaling(assign[1])
                stmt = stmt.with_changes(
                    body=[cst.Assign(targets=stmt.body[0].targets, value=parse_expr(f"{code_of(matmul)} * scaling"))]
                )
            found = _dropout_probability(stmt)
            if found is not None:
                dropout_code, stmt = found
            stmt = stmt.visit(_Renamer(renames))
            lines.append(code_of(stmt).rstrip("\n"))
        out = "attn_output" if region.output != "attn_output" else region.output
        renamed_output = {region.output: out}
        text = "\n".join(lines)
        if region.output != out:
            text = code_of(cst.parse_module(text).visit(_Renamer(renamed_output)))
        indented = "\n".join("    " + line if line.strip() else "" for line in text.splitlines())
        code = (
            "def eager_attention_forward(\n"
            "    module: torch.nn.Module,\n"
            "    query: torch.Tensor,\n"
            "    key: torch.Tensor,\n"
            "    value: torch.Tensor,\n"
            "    attention_mask: torch.Tensor | None,\n"
            "    scaling: float,\n"
            "    dropout: float = 0.0,\n"
            "    **kwargs,\n"
            "):\n"
            f"{indented}\n"
            f"    {out} = {out}.transpose(1, 2).contiguous()\n"
            f"    return {out}, {region.weights}\n"
        )
        return dropout_code, code

    # -- attributes the interface reads (B3) -----------------------------------------------
    def _complete_init(self, cls, init: cst.FunctionDef, region: Region, forward_body) -> cst.FunctionDef:
        assigned = {
            s.attr.value for s in walk(init) if isinstance(s, cst.Attribute) and is_self_attr(s)
        }
        params = [p.name.value for p in init.params.params]
        additions = []
        if "scaling" not in assigned:
            additions.append(f"self.scaling = {region.scaling_code}")
        if "config" not in assigned and "config" in params:
            additions.append("self.config = config")
        if "is_causal" not in assigned:
            additions.append("self.is_causal = True")
        if "sliding_window" not in assigned and uses_sliding_window(self.state.analysis):
            additions.append('self.sliding_window = getattr(self.config, "sliding_window", None)')
        if "num_key_value_groups" not in assigned:
            additions.append(f"self.num_key_value_groups = {self._groups_code(forward_body, region)}")
        if not additions:
            return init
        self.record(init, f"{cls.name.value}.__init__: added " + ", ".join(a.split(" =")[0] for a in additions))
        stmts = parse_stmts("\n".join(additions) + "\n")
        return init.with_changes(body=init.body.with_changes(body=[*init.body.body, *stmts]))

    @staticmethod
    def _groups_code(body, region: Region) -> str:
        for i in region.repeat_indices:
            call = next((c for c in walk(body[i]) if isinstance(c, cst.Call) and len(c.args) >= 2), None)
            if call is not None:
                return code_of(call.args[1].value)
        return "1"


# -- helpers -------------------------------------------------------------------------------
def _is_rescale(stmt: cst.CSTNode, scores: str) -> bool:
    """`scores = scores / x`, `scores = scores * x`, `scores /= x` or `scores *= x`."""
    if isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1:
        small = stmt.body[0]
        if isinstance(small, cst.AugAssign):
            return isinstance(small.operator, (cst.DivideAssign, cst.MultiplyAssign))
    assign = single_assign(stmt)
    value = assign[1] if assign else None
    return (
        isinstance(value, cst.BinaryOperation)
        and isinstance(value.operator, (cst.Divide, cst.Multiply))
        and scores in (dotted(value.left), dotted(value.right))
    )


def _with_blank_line_before(stmts: list[cst.BaseStatement]) -> list[cst.BaseStatement]:
    return [stmts[0].with_changes(leading_lines=[cst.EmptyLine(indent=False)]), *stmts[1:]]


def _has_call(stmt: cst.CSTNode, names: set[str]) -> bool:
    return any(last_part(call_name(c)) in names or call_name(c) in names for c in walk(stmt) if isinstance(c, cst.Call))


def _first_name_arg(call: cst.Call) -> str | None:
    if call_name(call) == ".softmax":
        return dotted(call.func.value)
    return dotted(call.args[0].value) if call.args else None


def _split_scaling(value: cst.BaseExpression) -> tuple[cst.Call | None, str]:
    """`matmul(q, kT) / X` -> (matmul, "1 / X"); `* X` -> X; bare matmul -> 1.0."""
    if isinstance(value, cst.Call) and last_part(call_name(value)) in {"matmul"} | {".matmul"}:
        return value, "1.0"
    if isinstance(value, cst.BinaryOperation) and isinstance(value.left, cst.Call):
        scale = code_of(value.right)
        if not _refers_only_to_self(value.right):
            return None, ""
        if isinstance(value.operator, cst.Divide):
            return value.left, f"1 / {scale}"
        if isinstance(value.operator, cst.Multiply):
            return value.left, scale
    return None, ""


def _refers_only_to_self(expr: cst.BaseExpression) -> bool:
    """A scale that `__init__` can compute: constants, module globals and `self.*`."""
    for node in walk(expr):
        if isinstance(node, cst.Attribute) and isinstance(node.value, cst.Name) and node.value.value not in {"self", "math", "torch", "np", "numpy"}:
            return False
    return True


def _is_guard(stmt: cst.CSTNode) -> bool:
    """`if <shape check>: raise ...` with nothing else in it."""
    if not isinstance(stmt, cst.If) or stmt.orelse is not None:
        return False
    inner = stmt.body.body if isinstance(stmt.body, cst.IndentedBlock) else []
    return bool(inner) and all(
        isinstance(s, cst.SimpleStatementLine) and all(isinstance(x, cst.Raise) for x in s.body) for s in inner
    )


def _is_head_transpose(stmt: cst.CSTNode, output: str) -> bool:
    assign = single_assign(stmt)
    if not assign or dotted(assign[0][0]) != output:
        return False
    text = code_of(assign[1]).replace(" ", "")
    return text in {f"{output}.transpose(1,2).contiguous()", f"{output}.transpose(1,2)"}


def _dropout_probability(stmt: cst.BaseStatement) -> tuple[str, cst.BaseStatement] | None:
    """Find a functional dropout in `stmt`; return the call site's dropout and the stmt with `p=dropout`."""
    for node in walk(stmt):
        if isinstance(node, cst.Call) and last_part(call_name(node)) == "dropout":
            p_arg = next((a for a in node.args if a.keyword and a.keyword.value == "p"), None)
            if p_arg is None and len(node.args) >= 2 and node.args[1].keyword is None:
                p_arg = node.args[1]
            if p_arg is None:
                return None
            site = f"0.0 if not self.training else {code_of(p_arg.value)}"
            new_call = node.with_changes(args=[a.with_changes(value=cst.Name("dropout")) if a is p_arg else a for a in node.args])
            return site, stmt.deep_replace(node, new_call)
        if isinstance(node, cst.Call) and is_self_attr(node.func) and "drop" in node.func.attr.value:
            return f"self.{node.func.attr.value}.p if self.training else 0.0", stmt
    return None


def _module_level_names(tree: cst.Module) -> set[str]:
    names: set[str] = set()
    for stmt in tree.body:
        if isinstance(stmt, (cst.FunctionDef, cst.ClassDef)):
            names.add(stmt.name.value)
        elif isinstance(stmt, cst.SimpleStatementLine):
            for small in stmt.body:
                if isinstance(small, (cst.Import, cst.ImportFrom)) and not isinstance(small.names, cst.ImportStar):
                    for alias in small.names:
                        bound = alias.asname.name if alias.asname else alias.name
                        names.add(dotted(bound).split(".")[0])
            names |= assigned_names(stmt)
        elif isinstance(stmt, (cst.If, cst.Try)):
            for node in walk(stmt):
                if isinstance(node, cst.ImportAlias):
                    bound = node.asname.name if node.asname else node.name
                    names.add(dotted(bound).split(".")[0])
    return names


class _GuardStripper(cst.CSTTransformer):
    def leave_If(self, original: cst.If, updated: cst.If):
        return cst.RemoveFromParent() if _is_guard(updated) else updated


class _Renamer(cst.CSTTransformer):
    def __init__(self, renames: dict[str, str]):
        self.renames = renames

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.Attribute:
        return updated.with_changes(attr=original.attr)  # attribute names are never renamed

    def leave_Arg(self, original: cst.Arg, updated: cst.Arg) -> cst.Arg:
        return updated.with_changes(keyword=original.keyword)

    def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.Name:
        return updated.with_changes(value=self.renames.get(updated.value, updated.value))


def _add_star_kwargs(fn: cst.FunctionDef) -> cst.FunctionDef:
    param = cst.Param(name=cst.Name("kwargs"), star="**")
    return fn.with_changes(params=fn.params.with_changes(star_kwarg=param))
