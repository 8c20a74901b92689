"""Tuple caches become the Cache API (CONTRACT C4; LEGACY_PATTERNS B).

Before transformers 4.36 each layer received `(past_key, past_value)` and returned a new
tuple, and the model gathered them into a tuple of tuples. transformers 5 hands the model
one `Cache` object and expects every layer to `update` it. The rewrite, by pattern:

In attention modules (the cache parameter is the forward parameter named `*past*`):
- `past[0].shape[-2]` (or `.size(-2)`, `.shape[2]`)  -> `past.get_seq_length(self.layer_idx)`
- `k = torch.cat([past[0], k], dim=...)` and the value twin  -> `k, v = past.update(k, v, self.layer_idx)`
  (also after `past_k, past_v = past` unpacking, which is removed)
- `present = (k, v)` / `(k, v) if use_cache else None`  -> the cache object itself

In base models (the parameter `past_key_values`):
- a `DynamicCache` is created when `use_cache` is on and none was given
- `past_key_values[0][0].shape[2]`  -> `past_key_values.get_seq_length()`
- `past_key_values[i]`  -> `past_key_values` (every layer shares the one cache)
- `zip(self.layers, past_key_values)`  -> `zip(self.layers, [past_key_values] * len(self.layers))`
- `past_key_values = tuple([None] * n)`  -> `past_key_values = None`
- `past_key_values[0] is not None` (a past was given)  -> `(past_key_values is not None and past_key_values.get_seq_length() > 0)`
- the tuple that gathers each layer's present  -> the cache itself.
"""

from __future__ import annotations

import libcst as cst
from libcst.codemod.visitors import AddImportsVisitor

from transforms.base import Transform
from transforms.cst_utils import (
    assigned_names,
    code_of,
    dotted,
    function_defs,
    last_part,
    param_names,
    parse_expr,
    parse_stmts,
    single_assign,
)


def _cache_param(fn: cst.FunctionDef, plural: bool) -> str | None:
    for name in param_names(fn):
        if "past" in name and name.endswith("s") == plural:
            return name
    return None


def _uses_tuple_cache(fn: cst.FunctionDef, cache: str) -> bool:
    text = code_of(fn)
    return f"{cache}[0]" in text or f"= {cache}\n" in text or f"{cache}[idx]" in text


def _is_length_of_first(node: cst.CSTNode, base: str) -> bool:
    """`base.shape[2]`, `base.shape[-2]`, `base.size(-2)`, `base.size(2)` with base given as code."""
    text = code_of(node).replace(" ", "")
    return text in {f"{base}.shape[-2]", f"{base}.shape[2]", f"{base}.size(-2)", f"{base}.size(2)"}


class CacheObjects(Transform):
    name = "tuple-cache"
    summary = "Replace tuple key/value caches with the Cache API."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        here = {n for n, info in analysis.classes.items() if info.file == self.filename}
        tree = self.rewrite_classes(tree, analysis.attention & here, self._attention)
        tree = self.rewrite_classes(tree, (analysis.base_models - analysis.attention) & here, self._base_model)
        heads = set(analysis.heads) - analysis.attention - analysis.base_models
        return self.rewrite_classes(tree, heads & here, self._head)

    # -- attention -------------------------------------------------------------------------
    def _attention(self, cls: cst.ClassDef) -> cst.ClassDef:
        """Every method that takes the cache (forward, or a helper it delegates to)."""
        for method in function_defs(cls).values():
            cache = _cache_param(method, plural=False)
            if cache is None or not _uses_tuple_cache(method, cache) or f"{cache}.update(" in code_of(method):
                continue
            new_body = self._attention_statements(list(method.body.body), cache, cls.name.value)
            if new_body is None:
                continue
            new_method = method.with_changes(body=method.body.with_changes(body=new_body))
            new_method = new_method.visit(_LengthOfPast(cache, f"{cache}.get_seq_length(self.layer_idx)", index_depth=1))
            self.record(method, f"{cls.name.value}.{method.name.value}: tuple cache `{cache}` -> Cache.update(..., self.layer_idx)")
            cls = cls.deep_replace(method, new_method)
        return cls

    def _attention_statements(self, body, cache, where):
        """Rewrite the concatenation and the `present` tuple, inside branches too."""
        finder = _AttentionCache(cache)
        new_body = [stmt.visit(finder) for stmt in body]
        new_body = [s for s in new_body if not isinstance(s, cst.RemovalSentinel)]
        if finder.key is None or finder.value is None:
            self.refuse(body[0], f"tuple cache `{cache}` is read but no `torch.cat` with it was found", where)
            return None
        return [s.visit(_PresentIsCache(finder.key, finder.value, cache, finder.key_statement)) for s in new_body]

    # -- heads -----------------------------------------------------------------------------
    def _head(self, cls: cst.ClassDef) -> cst.ClassDef:
        """Generation helpers kept on a head read the cache length the tuple way."""
        for method in function_defs(cls).values():
            cache = _cache_param(method, plural=True)
            if cache is None or f"{cache}[0][0]" not in code_of(method):
                continue
            new_method = method.visit(_LengthOfPast(cache, f"{cache}.get_seq_length()", index_depth=2))
            if new_method is not method:
                self.record(method, f"{cls.name.value}.{method.name.value}: cache length from get_seq_length()")
                cls = cls.deep_replace(method, new_method)
        return cls

    # -- base model ------------------------------------------------------------------------
    def _base_model(self, cls: cst.ClassDef) -> cst.ClassDef:
        forward = function_defs(cls).get("forward")
        cache = _cache_param(forward, plural=True) if forward else None
        text = code_of(forward) if forward else ""
        if cache is None or not (f"{cache}[0][0]" in text or f"{cache}[idx]" in text or f", {cache})" in text):
            return cls
        new_forward = forward.visit(_LengthOfPast(cache, f"{cache}.get_seq_length()", index_depth=2))
        new_forward = new_forward.visit(_SharedCache(cache))
        body = list(new_forward.body.body)
        create = parse_stmts(
            f"if use_cache and not isinstance({cache}, Cache):\n"
            f"    {cache} = DynamicCache(config=self.config)\n"
        )
        insert_at = 0
        for i, stmt in enumerate(body):
            if "use_cache" in assigned_names(stmt):
                insert_at = i + 1
                break
        if "use_cache" not in param_names(forward):
            self.refuse(forward, "base model forward has a tuple cache but no use_cache parameter", cls.name.value)
            return cls
        body[insert_at:insert_at] = create
        new_forward = new_forward.with_changes(body=new_forward.body.with_changes(body=body))
        new_forward = new_forward.visit(_GatheredPresents(cache))
        AddImportsVisitor.add_needed_import(self.context, "transformers.cache_utils", "Cache")
        AddImportsVisitor.add_needed_import(self.context, "transformers.cache_utils", "DynamicCache")
        self.record(forward, f"{cls.name.value}.forward: one DynamicCache shared by every layer instead of tuples")
        return cls.deep_replace(forward, new_forward)


class _LengthOfPast(cst.CSTTransformer):
    """`past[0].shape[-2]` (depth 1) or `past[0][0].shape[2]` (depth 2) -> replacement."""

    def __init__(self, cache: str, replacement: str, index_depth: int):
        self.base = cache + "[0]" * index_depth
        self.replacement = replacement

    def leave_Subscript(self, original, updated):
        return parse_expr(self.replacement) if _is_length_of_first(updated, self.base) else updated

    def leave_Call(self, original, updated):
        return parse_expr(self.replacement) if _is_length_of_first(updated, self.base) else updated


class _AttentionCache(cst.CSTTransformer):
    """The two `torch.cat` statements become one `update`; unpacking of the cache goes."""

    def __init__(self, cache: str):
        self.cache = cache
        self.parts: dict[str, int] = {}
        self.key: str | None = None
        self.value: str | None = None
        self.key_statement: str | None = None  # code of the key concatenation, replaced later

    def _part(self, node: cst.BaseExpression) -> int | None:
        text = code_of(node).replace(" ", "")
        if text in (f"{self.cache}[0]", f"{self.cache}[1]"):
            return int(text[-2])
        return self.parts.get(text)

    def leave_SimpleStatementLine(self, original, updated):
        assign = single_assign(updated)
        if assign is None:
            return updated
        targets, value = assign
        # past_key = layer_past[0]
        if isinstance(targets[0], cst.Name) and code_of(value).replace(" ", "") in (f"{self.cache}[0]", f"{self.cache}[1]"):
            self.parts[targets[0].value] = int(code_of(value).strip()[-2])
            return cst.RemoveFromParent()
        # past_key, past_value = layer_past
        if isinstance(targets[0], cst.Tuple) and code_of(value) == self.cache and len(targets[0].elements) == 2:
            for i, element in enumerate(targets[0].elements):
                self.parts[code_of(element.value)] = i
            return cst.RemoveFromParent()
        if not (isinstance(value, cst.Call) and last_part(dotted(value.func)) == "cat" and value.args):
            return updated
        pieces = value.args[0].value
        if not isinstance(pieces, (cst.List, cst.Tuple)) or len(pieces.elements) != 2:
            return updated
        part = self._part(pieces.elements[0].value)
        new = code_of(pieces.elements[1].value)
        target = code_of(targets[0])
        if part is None or new != target:
            return updated
        if part == 0:
            self.key = target
            self.key_statement = code_of(updated)
            return updated  # replaced once the value's name is known
        self.value = target
        return cst.RemoveFromParent()

    def leave_IndentedBlock(self, original, updated):
        if not updated.body:
            return updated.with_changes(body=[cst.SimpleStatementLine(body=[cst.Pass()])])
        return updated


class _PresentIsCache(cst.CSTTransformer):
    """Finish the update and make every `(k, v)` present tuple the cache object."""

    def __init__(self, key: str, value: str, cache: str, key_statement: str):
        self.key, self.value, self.cache = key, value, cache
        self.key_statement = key_statement
        self.targets: set[int] = set()

    def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
        self.targets.add(id(node.target))

    def leave_SimpleStatementLine(self, original, updated):
        if code_of(updated) == self.key_statement:
            return parse_stmts(f"{self.key}, {self.value} = {self.cache}.update({self.key}, {self.value}, self.layer_idx)\n")[0]
        return updated

    def leave_Tuple(self, original, updated):
        names = [code_of(e.value) for e in updated.elements]
        if names == [self.key, self.value] and id(original) not in self.targets:
            return cst.Name(self.cache)
        return updated


class _SharedCache(cst.CSTTransformer):
    """Every layer gets the one cache object."""

    def __init__(self, cache: str):
        self.cache = cache

    def leave_Subscript(self, original, updated):
        if code_of(updated.value) == self.cache and len(updated.slice) == 1:
            index = updated.slice[0].slice
            if isinstance(index, cst.Index) and isinstance(index.value, cst.Name):
                return cst.Name(self.cache)
        return updated

    def leave_Call(self, original, updated):
        if dotted(updated.func) == "zip" and len(updated.args) == 2 and code_of(updated.args[1].value) == self.cache:
            layers = code_of(updated.args[0].value)
            return updated.with_changes(args=[updated.args[0], cst.Arg(parse_expr(f"[{self.cache}] * len({layers})"))])
        return updated

    def leave_Comparison(self, original, updated):
        """`cache[0] is not None` asked whether a past was given (layers held `None` without one)."""
        if len(updated.comparisons) != 1 or code_of(updated.comparisons[0].comparator) != "None":
            return updated
        left, operator = updated.left, updated.comparisons[0].operator
        if not (
            isinstance(left, cst.Subscript)
            and code_of(left.value) == self.cache
            and len(left.slice) == 1
            and isinstance(left.slice[0].slice, cst.Index)
            and isinstance(left.slice[0].slice.value, cst.Integer)
        ):
            return updated
        if isinstance(operator, cst.IsNot):
            return parse_expr(f"({self.cache} is not None and {self.cache}.get_seq_length() > 0)")
        if isinstance(operator, cst.Is):
            return parse_expr(f"({self.cache} is None or {self.cache}.get_seq_length() == 0)")
        return updated

    def leave_Assign(self, original, updated):
        if code_of(updated.targets[0].target) == self.cache and code_of(updated.value).replace(" ", "").startswith("tuple([None]*"):
            return updated.with_changes(value=cst.Name("None"))
        return updated


class _GatheredPresents(cst.CSTTransformer):
    """`presents = () if use_cache else None` gathers layer tuples: it becomes the cache."""

    def __init__(self, cache: str):
        self.cache = cache
        self.gatherers: set[str] = set()

    def leave_Assign(self, original, updated):
        text = code_of(updated.value).replace(" ", "")
        target = code_of(updated.targets[0].target)
        if text == "()ifuse_cacheelseNone":
            self.gatherers.add(target)
            return updated.with_changes(value=parse_expr(f"{self.cache} if use_cache else None"))
        if target in self.gatherers and text.startswith(f"{target}+("):
            return cst.RemoveFromParent()
        return updated

    def leave_AugAssign(self, original, updated):
        if code_of(updated.target) in self.gatherers and isinstance(updated.operator, cst.AddAssign):
            return cst.RemoveFromParent()
        return updated

    def leave_SimpleStatementLine(self, original, updated):
        return cst.RemoveFromParent() if not updated.body else updated

    def leave_If(self, original, updated):
        # `if use_cache: presents += (...)` is empty once the gathering is gone.
        inner = updated.body.body
        if updated.orelse is None and (not inner or all(code_of(s).strip() == "pass" for s in inner)):
            return cst.RemoveFromParent()
        return updated

    def leave_IndentedBlock(self, original, updated):
        if not updated.body:
            return updated.with_changes(body=[cst.SimpleStatementLine(body=[cst.Pass()])])
        return updated
