"""Build attention masks with transformers' `masking_utils` (CONTRACT B5).

Legacy base models prepare the 4D mask by hand or with helpers such as
`_prepare_4d_causal_attention_mask(_for_sdpa)`, one branch per backend. `masking_utils`
returns the form the selected backend wants (additive float for eager, boolean or None
for sdpa, a block mask for flex), so the whole branch becomes one call. The call's
keywords follow the installed signature, which moved within transformers 5.x.

A hand-built additive padding mask (`(1.0 - mask) * finfo.min`) is causal only where the
model adds causality itself (a `tril` buffer, a causal helper, `is_causal=True`); without
that it is an encoder's, and becomes `create_bidirectional_mask`.
"""

from __future__ import annotations

import inspect

import libcst as cst
from libcst.codemod.visitors import AddImportsVisitor

from transforms.base import Transform
from transforms.causal_buffer import WINDOW_SWITCHES
from transforms.config_defaults import CONFIG_READS
from transforms.cst_utils import (
    call_name,
    code_of,
    function_defs,
    last_part,
    names_read,
    param_names,
    parse_stmts,
    single_assign,
    walk,
)

CAUSAL_HELPERS = {
    "_prepare_4d_causal_attention_mask",
    "_prepare_4d_causal_attention_mask_for_sdpa",
    "_prepare_decoder_attention_mask",
    "_update_causal_mask",
    "_prepare_4d_causal_attention_mask_with_cache_position",
}
# Encoder masks: causal only when the config says the model is a decoder (transformers 4's
# get_extended_attention_mask made the same choice).
ENCODER_HELPERS = {"get_extended_attention_mask", "_prepare_4d_attention_mask_for_sdpa", "_prepare_4d_attention_mask"}


def _replace_once_embedded(body: list, index: int, new_stmt: cst.BaseStatement, embeds_var: str, target: str) -> None:
    """Replace `body[index]` with `new_stmt`, moved after the statement that computes the
    embeddings when the legacy mask code ran before them, but before the first statement
    that reads the mask: the embeddings' name may be bound again by the layers' own call
    (`hidden_states = self.encoder(hidden_states, attention_mask=mask)`)."""
    first_read = next((i for i in range(index + 1, len(body)) if target in names_read(body[i])), len(body))
    binds = [i for i in range(index, len(body)) if _binds(body[i], embeds_var)]
    place = max([i for i in binds if i < first_read] or binds, default=index)
    body.insert(place + 1, new_stmt)
    del body[index]


def _binds(stmt: cst.CSTNode, name: str) -> bool:
    """Whether `stmt` assigns `name` anywhere inside it (branches included)."""
    return any(isinstance(n, cst.Assign) and any(code_of(t.target) == name for t in n.targets) for n in walk(stmt))


def _extended_mask_var(stmt: cst.CSTNode) -> str | None:
    """`mask = (1.0 - mask) * torch.finfo(dtype).min` anywhere in `stmt`: the hand-built
    additive padding mask of pre-4.36 code (causality then came from a buffer)."""
    for node in walk(stmt):
        if isinstance(node, cst.Assign) and isinstance(node.value, cst.BinaryOperation):
            value = node.value
            left = value.left
            if isinstance(value.operator, cst.Multiply) and "finfo" in code_of(value.right) and isinstance(left, cst.BinaryOperation):
                if isinstance(left.operator, cst.Subtract) and code_of(left.left) in ("1.0", "1"):
                    return code_of(node.targets[0].target)
    return None


# Steps that turn a `[batch, seq]` padding mask into the `[batch, 1, 1, seq]` float one.
MASK_CHAIN_METHODS = {"unsqueeze", "to", "float", "view", "reshape", "type", "type_as"}


def _padding_mask_chain(body: list, index: int, var: str) -> tuple[str, list[int]]:
    """The 2D padding mask that statements before `body[index]` turned into `var` one step
    at a time (`var = mask.unsqueeze(1).unsqueeze(2)`, `var = var.to(dtype)`), and the
    indices of those statements; `(var, [])` where `body[index]` starts from `var` itself."""
    chain, source = [], var
    for i in range(index - 1, -1, -1):
        assign = single_assign(body[i]) if isinstance(body[i], cst.SimpleStatementLine) else None
        if not assign or len(assign[0]) != 1 or code_of(assign[0][0]) != var:
            break
        root = _chain_root(assign[1])
        if root is None:
            break
        chain.insert(0, i)
        if root != var:
            source = root
            break
    return (source, chain) if source != var else (var, [])


def _chain_root(value: cst.BaseExpression) -> str | None:
    """`mask` for `mask.unsqueeze(1).unsqueeze(2).to(dtype=...)` or `mask[:, None, None, :]`."""
    while True:
        if isinstance(value, cst.Name):
            return value.value
        if isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute):
            if value.func.attr.value not in MASK_CHAIN_METHODS:
                return None
            value = value.func.value
        elif isinstance(value, cst.Subscript):
            value = value.value
        else:
            return None


def _assigned_from(stmt: cst.CSTNode, call: cst.Call) -> str | None:
    """The name the helper's result was assigned to (`causal_mask = helper(...)`)."""
    for node in walk(stmt):
        if isinstance(node, cst.Assign) and node.value is call and len(node.targets) == 1:
            return code_of(node.targets[0].target)
        if isinstance(node, cst.AnnAssign) and node.value is call:
            return code_of(node.target)
    return None


def _mask_reshape(stmt: cst.BaseStatement, mask_var: str) -> cst.Call | None:
    """The `mask.view(...)` / `mask.reshape(...)` call of `mask = mask.view(...)` or
    `mask = mask.view(...) if mask is not None else None`; None for any other statement."""
    if not isinstance(stmt, cst.SimpleStatementLine) or len(stmt.body) != 1:
        return None
    assign = stmt.body[0]
    if not isinstance(assign, cst.Assign) or [code_of(t.target) for t in assign.targets] != [mask_var]:
        return None
    value = assign.value
    if isinstance(value, cst.IfExp):
        if code_of(value.test) != f"{mask_var} is not None" or code_of(value.orelse) != "None":
            return None
        value = value.body
    if isinstance(value, cst.Call) and code_of(value.func) in (f"{mask_var}.view", f"{mask_var}.reshape"):
        return value
    return None


def _helper_calls(stmt: cst.CSTNode, names: set[str] = CAUSAL_HELPERS) -> list[cst.Call]:
    return [c for c in walk(stmt) if isinstance(c, cst.Call) and last_part(call_name(c)) in names]


def uses_bidirectional_mask(analysis) -> bool:
    """Whether a base model builds its self-attention mask the encoder way."""
    for name in analysis.base_models:
        forward = function_defs(analysis.classes[name].node).get("forward")
        if forward is not None and any(
            last_part(call_name(c)) == "get_extended_attention_mask" for c in _helper_calls(forward, ENCODER_HELPERS)
        ):
            return True
    return False


CAUSAL_MARKERS = {"tril", "triu", "_make_causal_mask"} | CAUSAL_HELPERS


def _own_causal_builders(analysis, owner: str) -> dict[str, cst.FunctionDef]:
    """Methods of the base model, other than forward, that build a causal mask themselves
    (`self._prepare_attn_mask(...)` calling `_make_causal_mask`, or a `tril`): the model's
    own form of the legacy helpers."""
    methods = function_defs(analysis.classes[owner].node)
    return {
        name: fn
        for name, fn in methods.items()
        if name != "forward" and name not in CAUSAL_HELPERS and not name.startswith("__")  # __init__: buffers
        and any(isinstance(c, cst.Call) and last_part(call_name(c)) in CAUSAL_MARKERS for c in walk(fn))
    }


def _returns_bool(fn: cst.FunctionDef) -> bool:
    """Annotated to return a boolean tensor (`-> torch.BoolTensor`)."""
    return fn.returns is not None and "Bool" in code_of(fn.returns.annotation)


def _masked_fill_reads_mask(analysis) -> bool:
    """Whether an attention module reads its mask with `masked_fill(scores, mask, value)`."""
    for name in analysis.attention:
        for node in walk(analysis.classes[name].node):
            if isinstance(node, cst.Call) and last_part(call_name(node)) == "masked_fill":
                args = [code_of(a.value) for a in node.args]
                if any("mask" in a for a in args[:2]):
                    return True
    return False


def _held_by(analysis, owner: str) -> set[str]:
    """`owner` and the repo classes it holds, through modules and layer lists, with their bases."""
    found, pending = set(), [owner]
    while pending:
        name = pending.pop()
        if name in found or name not in analysis.classes:
            continue
        found.add(name)
        info = analysis.classes[name]
        pending += [*info.children.values(), *info.layer_lists.values(), *analysis.ancestors(name)]
    return found


def _has_causal_structure(analysis, owner: str) -> bool:
    """A triangular mask (`torch.tril` buffer, `_make_causal_mask`, a causal helper) or
    `is_causal=True` anywhere in `owner` or the modules it holds."""
    for name in _held_by(analysis, owner):
        for node in walk(analysis.classes[name].node):
            if isinstance(node, cst.Call) and last_part(call_name(node)) in CAUSAL_MARKERS:
                return True
            if isinstance(node, cst.Arg) and node.keyword and node.keyword.value == "is_causal" and code_of(node.value) == "True":
                return True
            if isinstance(node, cst.Assign) and code_of(node.value) == "True" and any(
                code_of(t.target).endswith("is_causal") for t in node.targets
            ):
                return True
    return False


def builds_bidirectional_padding_mask(analysis) -> bool:
    """Whether a base model builds the additive padding mask by hand and nothing in it makes
    attention causal: an encoder, whose attention sees every position."""
    for name in analysis.base_models:
        forward = function_defs(analysis.classes[name].node).get("forward")
        if forward is not None and _extended_mask_var(forward) and not _has_causal_structure(analysis, name):
            return True
    return False


def uses_sliding_window(analysis) -> bool:
    """Whether a base model builds a sliding-window mask: a `sliding_window=` keyword to a
    mask helper, or a mask-helper method of its own that reads `sliding_window`."""
    for name in analysis.base_models:
        methods = function_defs(analysis.classes[name].node)
        forward = methods.get("forward")
        if forward is None:
            continue
        for call in _helper_calls(forward):
            if any(a.keyword and a.keyword.value == "sliding_window" for a in call.args):
                return True
            method = methods.get(last_part(call_name(call)))
            if method is not None and "sliding_window" in code_of(method):
                return True
    return False


class UseMaskingUtils(Transform):
    name = "masks"
    summary = "Replace hand-built masks with masking_utils.create_causal_mask, its sliding-window variant, or create_bidirectional_mask."
    leaves_interface_code = True

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        owners = {n for n in analysis.base_models if analysis.classes[n].file == self.filename}
        if not owners:
            return tree
        return self.rewrite_classes(tree, owners, self._rewrite_class)

    def _rewrite_class(self, cls: cst.ClassDef) -> cst.ClassDef:
        forward = function_defs(cls).get("forward")
        if forward is None:
            return cls
        new_forward = self._rewrite_forward(cls.name.value, forward)
        return cls if new_forward is forward else cls.deep_replace(forward, new_forward)

    def _rewrite_forward(self, owner: str, forward: cst.FunctionDef) -> cst.FunctionDef:
        body = list(forward.body.body)
        params = set(param_names(forward))
        for index, stmt in enumerate(body):
            encoder_calls = [c for c in _helper_calls(stmt, ENCODER_HELPERS) if "encoder" not in code_of(c)]
            if any(last_part(call_name(c)) == "get_extended_attention_mask" for c in encoder_calls):
                return self._encoder_mask(owner, forward, body, index, stmt, encoder_calls, params)
            own = _own_causal_builders(self.state.analysis, owner)
            helper_calls = _helper_calls(stmt, CAUSAL_HELPERS | set(own))
            extended = _extended_mask_var(stmt)
            if not helper_calls and not extended:
                continue
            if helper_calls:
                mask_var, embeds_var = self._mask_and_embeds(helper_calls[0])
                own_builder = own.get(last_part(call_name(helper_calls[0])))
                if own_builder is not None and embeds_var is None:
                    embeds_var = self._embeddings_tensor(owner, body, params)
                target = _assigned_from(stmt, helper_calls[0]) or mask_var
            else:
                embeds_var = self._embeddings_tensor(owner, body, params)
                target = extended
                mask_var, chain = _padding_mask_chain(body, index, extended)
                for i in reversed(chain):  # the legacy reshape and cast of the padding mask go with it
                    del body[i]
                index -= len(chain)
            if mask_var is None or embeds_var is None:
                self.refuse(stmt, "mask built from arguments that name no mask or no embeddings", owner)
                return forward
            if helper_calls or _has_causal_structure(self.state.analysis, owner):
                sliding = uses_sliding_window(self.state.analysis)
                builder = "create_sliding_window_causal_mask" if sliding else "create_causal_mask"
            else:  # a padding mask alone, and no causal structure: every position sees every other
                builder = "create_bidirectional_mask"
            built = self._builder_call(builder, mask_var, embeds_var, params)
            if builder == "create_sliding_window_causal_mask":
                # Legacy helpers take `sliding_window=None` as "no window"; the window builder
                # refuses a config without one, so the plain causal mask stands in for it.
                causal = self._builder_call("create_causal_mask", mask_var, embeds_var, params)
                built = f'(\n    {built}\n    if getattr(self.config, "sliding_window", None) is not None\n    else {causal}\n)'
                AddImportsVisitor.add_needed_import(self.context, "transformers.masking_utils", "create_causal_mask")
            if builder == "create_causal_mask" and self.state.facts.get(WINDOW_SWITCHES):
                built = self._per_layer_type(built, mask_var, embeds_var, params)
            new_stmt = parse_stmts(f"{target} = {built}\n")[0]
            _replace_once_embedded(body, index, new_stmt, embeds_var, target)
            if helper_calls and own_builder is not None and _returns_bool(own_builder):
                if not _masked_fill_reads_mask(self.state.analysis):
                    self.refuse(stmt, f"`{code_of(helper_calls[0].func)}` builds a boolean mask, and no attention "
                                "module reads it with `masked_fill(scores, mask, value)` (True where masked); "
                                "expected that use, or an additive mask", owner)
                    return forward
                # The legacy attention reads "True where masked": the eager mask is cast so.
                body.insert(body.index(new_stmt) + 1, parse_stmts(f"{target} = {target}.bool()\n")[0])
            self._guard_reshapes(owner, body, body.index(new_stmt), mask_var)
            self._guard_bool_casts(owner, body, body.index(new_stmt), target)
            AddImportsVisitor.add_needed_import(self.context, "transformers.masking_utils", builder)
            self.record(stmt, f"{owner}.forward: mask built with masking_utils.{builder}")
            return forward.with_changes(body=forward.body.with_changes(body=body))
        return forward

    def _per_layer_type(self, causal: str, mask_var: str, embeds_var: str, params: set[str]) -> str:
        """Attention modules whose causal buffer was narrowed to a window by a switch (local
        layers) take one mask per layer type; a dict given already (continuous batching's) is kept."""
        sliding = self._builder_call("create_sliding_window_causal_mask", mask_var, embeds_var, params)
        AddImportsVisitor.add_needed_import(self.context, "transformers.masking_utils", "create_sliding_window_causal_mask")
        return (
            f"{mask_var} if isinstance({mask_var}, dict) else {{\n"
            f'    "full_attention": {causal},\n    "sliding_attention": {sliding},\n}}'
        )

    def _guard_reshapes(self, owner: str, body: list, end: int, mask_var: str) -> None:
        """`mask = mask.view(batch, -1)` before the builder flattens a 2D padding mask; engines
        and continuous batching pass a prepared 4D mask, which masking_utils takes as is but
        the reshape scrambles (or, not contiguous, refuses). Such a reshape then applies to
        masks of fewer than 4 dimensions only."""
        for i in range(end):
            reshape = _mask_reshape(body[i], mask_var)
            if reshape is None:
                continue
            guarded = (
                f"{mask_var} = {code_of(reshape)} if {mask_var} is not None and {mask_var}.ndim < 4 else {mask_var}\n"
            )
            body[i] = parse_stmts(guarded)[0].with_changes(leading_lines=body[i].leading_lines)
            self.record(reshape, f"{owner}.forward: the padding-mask reshape skips prepared 4D masks")

    def _guard_bool_casts(self, owner: str, body: list, start: int, mask_var: str) -> None:
        """`mask = mask.bool()` after the helper turned its additive mask into "True where
        masked" for `masked_fill`. masking_utils gives that additive float mask to eager only;
        sdpa's boolean mask (True where attended), its `None` and flex's block mask are already
        what their kernels read, so the cast applies to a floating mask alone, and only for the
        eager function: a prepared additive mask (continuous batching hands one to every
        kernel) is what sdpa and the paged kernels add as it is."""
        cast = f"{mask_var} = {mask_var}.bool()"
        for i in range(start + 1, len(body)):
            if isinstance(body[i], cst.SimpleStatementLine) and code_of(body[i].with_changes(leading_lines=[])).strip() == cast:
                guarded = (
                    f"{cast} if isinstance({mask_var}, torch.Tensor) and {mask_var}.is_floating_point() "
                    f'and self.config._attn_implementation == "eager" else {mask_var}\n'
                )
                original, body[i] = body[i], parse_stmts(guarded)[0].with_changes(leading_lines=body[i].leading_lines)
                self.record(original, f"{owner}.forward: the mask's cast to bool applies to an additive mask only")

    def _encoder_mask(self, owner, forward, body, index, stmt, calls, params) -> cst.FunctionDef:
        """`m = self.get_extended_attention_mask(mask, shape)` (and sdpa variants in the same
        statement) -> the bidirectional mask, or the causal one when the config is a decoder."""
        call = next(c for c in calls if last_part(call_name(c)) == "get_extended_attention_mask")
        mask_var = code_of(call.args[0].value) if call.args else None
        target = _assigned_from(stmt, call)
        embeds_var = self._embeddings_var(owner, body) or ("inputs_embeds" if "inputs_embeds" in params else None)
        if not mask_var or not target or not embeds_var:
            self.refuse(stmt, "encoder mask built from arguments port-model cannot follow", owner)
            return forward
        bidirectional = self._builder_call("create_bidirectional_mask", mask_var, embeds_var, params)
        causal = self._builder_call("create_causal_mask", mask_var, embeds_var, params)
        new_stmt = parse_stmts(
            f"{target} = (\n    {causal}\n    if self.config.is_decoder\n    else {bidirectional}\n)\n"
        )[0]
        _replace_once_embedded(body, index, new_stmt, embeds_var, target)
        # The choice reads `config.is_decoder`, which transformers 5 configs no longer default.
        self.state.facts.setdefault(CONFIG_READS, set()).add("is_decoder")
        for builder in ("create_bidirectional_mask", "create_causal_mask"):
            AddImportsVisitor.add_needed_import(self.context, "transformers.masking_utils", builder)
        self.record(stmt, f"{owner}.forward: encoder mask built with masking_utils.create_bidirectional_mask")
        return forward.with_changes(body=forward.body.with_changes(body=body))

    def _embeddings_tensor(self, owner: str, body, params: set[str]) -> str | None:
        """A name that holds the embeddings where the mask is built: `inputs_embeds` where the
        forward computes it, else the output of the model's embeddings module (a parameter
        `inputs_embeds` is None whenever `input_ids` are given)."""
        if any(_binds(b, "inputs_embeds") for b in body):
            return "inputs_embeds"
        return self._embeddings_var(owner, body) or ("inputs_embeds" if "inputs_embeds" in params else None)

    def _embeddings_var(self, owner: str, body) -> str | None:
        """The variable holding the output of the model's own embeddings module, if any."""
        children = self.state.analysis.classes[owner].children
        embedding_attrs = {a for a, c in children.items() if "embed" in c.lower()}
        for stmt in body:
            for node in walk(stmt):
                if isinstance(node, cst.Assign) and isinstance(node.value, cst.Call):
                    func = code_of(node.value.func)
                    if func.startswith("self.") and func[5:] in embedding_attrs:
                        return code_of(node.targets[0].target)
        return None

    @staticmethod
    def _mask_and_embeds(call: cst.Call) -> tuple[str | None, str | None]:
        """Legacy helpers take (mask, shape, inputs_embeds, past_length), by position or keyword."""
        keywords = {a.keyword.value: code_of(a.value) for a in call.args if a.keyword}
        positional = [code_of(a.value) for a in call.args if a.keyword is None]
        mask = keywords.get("attention_mask") or (positional[0] if positional else None)
        embeds = keywords.get("inputs_embeds") or next((p for p in positional if "embed" in p), None)
        return mask, embeds

    @staticmethod
    def _builder_call(builder: str, mask_var: str, embeds_var: str, params: set[str]) -> str:
        from transformers import masking_utils

        wanted = inspect.signature(getattr(masking_utils, builder)).parameters
        cache_var = "past_key_values" if "past_key_values" in params else "None"
        values = {
            "config": "self.config",
            "inputs_embeds": embeds_var,
            "input_embeds": embeds_var,
            "attention_mask": mask_var,
            "past_key_values": cache_var,
            "position_ids": "position_ids" if "position_ids" in params else "None",
            "cache_position": (
                f"torch.arange({embeds_var}.shape[1], device={embeds_var}.device)"
                f" + ({cache_var}.get_seq_length() if {cache_var} is not None else 0)"
            ),
        }
        parts = [f"{name}={values[name]}" for name in wanted if name in values]
        return f"{builder}(" + ", ".join(parts) + ")"
