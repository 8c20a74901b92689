"""Route attention through `ALL_ATTENTION_FUNCTIONS` (CONTRACT B1-B3).

The legacy eager math of an attention module, written inline in `forward` or in a helper
method such as `_attn`, is moved, unchanged but for names, scale and causal buffer (see
`attention_math`), into a module-level `eager_attention_forward`; the forward calls the
interface once in its place. Key/value head repetition moves into the eager function too,
because every other kernel repeats heads itself from `module.num_key_value_groups`. The
interface returns `[batch, seq, heads, head_dim]`, so the legacy transpose back from
`[batch, heads, seq, head_dim]` after the math is removed (or, for a merge-heads helper,
replaced by a reshape).
"""

from __future__ import annotations

import builtins
import re
from dataclasses import dataclass, field

import libcst as cst
from libcst.codemod.visitors import AddImportsVisitor

from porter.parallel import BIAS_CLASSES
from transforms.attention_arms import MathBranch, eager_arm_of_kernel_branches, math_branch, switch_of_arm, with_arms
from transforms.attention_bias import added_operands, bound_names, hoist_position_bias
from transforms.attention_math import (
    HEAD_SIZE_ATTRIBUTES,
    SOFTMAX,
    GuardStripper,
    Math,
    NotUnderstood,
    clean_math,
    find_math,
    has_call,
    is_guard,
    mask_scores_in_place,
    rescale_factor,
    softmax_modules_as_calls,
    split_output_product,
    split_softmax_argument,
)
from transforms.base import Transform
from transforms.causal_buffer import WINDOW_SWITCHES, buffers_read_by_where, narrowed_buffer_call, window_narrowing
from transforms.cross_attention import find_cross_attention
from transforms.cst_utils import (
    SharingTransformer,
    assigned_names,
    call_name,
    code_of,
    dotted,
    free_names,
    function_defs,
    is_docstring,
    is_self_attr,
    last_part,
    names_read,
    param_names,
    parse_stmts,
    single_assign,
    spaced,
    star_kwargs_name,
    walk,
)
from transforms.kv_heads_config import KV_GROUPS
from transforms.masks import builds_bidirectional_padding_mask, uses_bidirectional_mask, uses_sliding_window

REPEAT_HINTS = ("repeat",)


@dataclass
class Site:
    """Where the math sits in forward, and what the eager function will run."""

    start: int  # forward statements start..end are replaced by the interface call
    end: int
    math_stmts: list[cst.BaseStatement]  # statements the eager function runs, legacy names
    math: Math
    inputs: dict[str, str]  # query/key/value/attention_mask -> expression at the call site
    targets: tuple[str, str]  # (output, weights) names the forward assigns
    drop: set[int] = field(default_factory=set)
    replace: dict[int, cst.BaseStatement] = field(default_factory=dict)
    extras: dict[str, str] = field(default_factory=dict)  # extra keyword -> call-site expression
    renames: dict[str, str] = field(default_factory=dict)  # math name -> eager name
    folded_helpers: set[str] = field(default_factory=set)
    repeat_stmts: list[cst.BaseStatement] = field(default_factory=list)
    unsupported_branches: list[str] = field(default_factory=list)  # config tests refused at __init__
    refused_switches: list[str] = field(default_factory=list)  # config tests selecting a math arm not routed
    position_bias: str | None = None  # call-site expression of an additive score bias (ALiBi)
    softcap: str | None = None  # call-site expression of the logit cap, for kernels that apply one
    tiled_groups: str | None = None  # the legacy tiled its key/value heads `groups` times (`.repeat`)


@dataclass
class _Path:
    """One way through forward: its statements, the branch arm's among them at lo..hi."""

    body: list[cst.BaseStatement]
    lo: int
    hi: int


@dataclass
class _Route:
    """A path with its math found, its eager function and (once written) its call site."""

    path: _Path
    site: Site
    dropout_code: str
    eager_code: str
    eager_name: str = ""
    call_site: list[cst.BaseStatement] = field(default_factory=list)
    window: tuple[str, str] | None = None  # a causal buffer narrowed to a band under a switch


class RouteAttention(Transform):
    name = "attention-interface"
    summary = "Move eager attention math into eager_attention_forward and call ALL_ATTENTION_FUNCTIONS."
    leaves_interface_code = True

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        targets = [n for n in sorted(analysis.attention) if analysis.classes[n].file == self.filename]
        if not targets:
            return tree
        self._module_names = _module_level_names(tree)
        new_body: list[cst.CSTNode] = []
        emitted: dict[str, str] = {}  # eager function code -> its name
        for stmt in tree.body:
            if isinstance(stmt, cst.ClassDef) and stmt.name.value in targets:
                rewritten, eager_functions = self._rewrite_class(stmt, emitted, tree)
                new_body += eager_functions
                new_body.append(rewritten)
            else:
                new_body.append(stmt)
        if emitted:
            AddImportsVisitor.add_needed_import(self.context, "transformers.modeling_utils", "ALL_ATTENTION_FUNCTIONS")
        return tree.with_changes(body=new_body)

    # -- one attention class --------------------------------------------------------------
    def _rewrite_class(self, cls: cst.ClassDef, emitted: dict[str, str], tree: cst.Module):
        name = cls.name.value
        methods = function_defs(cls)
        forward = methods.get("forward")
        if forward is None:
            self.refuse(cls, "attention class has no forward method", name)
            return cls, []
        cross = find_cross_attention(self.state.analysis, name)
        if cross is not None:
            self.refuse(cross.call, cross.message(name), name)
            return cls, []
        function = self.state.analysis.calls_attention_function.get(name)
        if function is not None:
            where = self.state.analysis.attention_functions[function]
            self.refuse(forward, f"no softmax in forward or in a helper method it calls: the math is in the "
                        f"module-level function `{function}` ({where}), which forward calls (directly or through an "
                        "attribute set in __init__); folding a module-level function into the interface is not "
                        "supported", name)
            return cls, []
        init = methods.get("__init__")
        if init is None or not ("config" in param_names(init) or "self.config" in code_of(init)):
            self.refuse(cls, "attention module has no `config` to read the selected kernel from", name)
            return cls, []
        try:
            body = eager_arm_of_kernel_branches(softmax_modules_as_calls(list(forward.body.body), init))
            branch = math_branch(body)
            if branch is None:
                paths = [_Path(body, 0, len(body))]
            else:
                prefix, suffix = body[: branch.index], body[branch.index + 1 :]
                arms = [split_output_product(split_softmax_argument(arm)) for arm in branch.arms]
                paths = [_Path([*prefix, *arm, *suffix], len(prefix), len(prefix) + len(arm)) for arm in arms]
            routes = self._prepare_routes(paths, branch, forward, methods, init, name)
            if routes is None:
                return cls, []
            if len(routes) == 1:
                branch = None  # the other arms are refused by their config switch
            if len({route.site.math.scaling_code for route in routes}) > 1:
                raise NotUnderstood(branch.branch, "the arms of the branch scale the scores differently: "
                                    f"{sorted({route.site.math.scaling_code for route in routes})}; expected one scale")
        except NotUnderstood as exc:
            self.refuse(exc.node or forward, str(exc), name)
            return cls, []
        kwargs_name = star_kwargs_name(forward) or "kwargs"
        if not all(self._free_names_ok(route.site, tree, name) for route in routes):
            return cls, []
        eager_nodes = []
        for route in routes:
            eager_name, eager_node = self._emit_eager(route, emitted)
            if route.site.position_bias:
                self.state.facts.setdefault(BIAS_CLASSES, set()).add(name)  # read by the parallel plans
            if eager_node is not None:
                eager_nodes.append(eager_node)
            route.call_site = self._call_site(route.site, eager_name, route.dropout_code, kwargs_name)
        try:
            new_body = _routed_body(routes, branch)
        except NotUnderstood as exc:
            self.refuse(exc.node or forward, str(exc), name)
            return cls, []
        site = routes[0].site
        new_forward = forward.with_changes(body=forward.body.with_changes(body=new_body))
        if star_kwargs_name(forward) is None:
            new_forward = _add_star_kwargs(new_forward)
        self.state.facts.setdefault("routed", set()).add(name)
        eager_names = ", ".join(dict.fromkeys(route.eager_name for route in routes))
        calls = "one interface call" if len(routes) == 1 else f"one interface call in each of {len(routes)} arms"
        self.record(forward, f"{name}.forward: attention math moved to {eager_names}; {calls}")

        new_init = self._complete_init(cls, init, site, forward)
        window = next((route.window for route in routes if route.window is not None), None)
        if window is not None:
            new_forward, new_init = self._window_per_layer(cls, new_forward, new_init, window)
        members = []
        for member in cls.body.body:
            if member is forward:
                members.append(new_forward)
            elif member is init:
                members.append(new_init)
            else:
                members.append(member)
        members = self._drop_unused_helpers(cls, members, set().union(*(route.site.folded_helpers for route in routes)))
        members = self._scaling_property(cls, members, site, init)
        members = self._query_prescaled(cls, members, site, init, forward)
        return cls.with_changes(body=cls.body.with_changes(body=members)), eager_nodes

    def _prepare_routes(self, paths, branch, forward, methods, init, name) -> list[_Route] | None:
        """A route per path. An arm of a branch whose math is not understood may be left out
        when a config switch selects it (see attention_arms.switch_of_arm): such configs are
        refused when the module is built, and the repo is refused if its config selects it."""
        routes, failures = [], []
        for arm, path in enumerate(paths):
            try:
                routes.append(self._prepare_route(path, forward, methods, init))
            except NotUnderstood as exc:
                if branch is None:
                    raise
                failures.append((arm, exc))
        if not failures:
            return routes
        arm, exc = failures[0]
        switch = switch_of_arm(self.state.analysis, name, branch.branch, arm) if len(routes) == 1 else None
        if switch is None:
            raise exc
        config = self.state.facts.get("config_json") or {}
        test = switch.test("config" if "config" in param_names(init) else "self.config")
        if bool(config.get(switch.attribute)) == switch.value:
            raise NotUnderstood(exc.node, f"the attention math of the branch arm that `{test}` selects (this repo's "
                                f"config) is not understood: {exc}")
        kept = routes[0]
        kept.path = _Path(kept.path.body, 0, len(kept.path.body))
        kept.site.refused_switches.append(test)
        self.record(exc.node, f"{name}: the branch arm that `{test}` selects is not ported ({exc}); "
                    "that configuration is refused when the module is built")
        return routes

    def _prepare_route(self, path: _Path, forward, methods, init) -> _Route:
        """Find the math of one path through forward and write its eager function."""
        body = split_output_product(split_softmax_argument(mask_scores_in_place(path.body)))
        if len(body) != len(path.body):  # the arms were split already: only a single path grows
            path = _Path(body, 0, len(body))
        body = hoist_position_bias(body, _head_size_attribute(init), _mask_param(forward))
        path = _Path(body, path.lo, path.hi)
        site = self._locate(body, forward, methods, init)
        window = None
        for buffer in sorted(buffers_read_by_where(site.math_stmts)):
            narrowed = narrowed_buffer_call(init, buffer)
            window = window_narrowing(init, narrowed) if narrowed is not None else window
            if narrowed is not None and window is None:
                raise NotUnderstood(
                    narrowed,
                    f"the causal buffer `self.{buffer}` is narrowed beyond a lower triangle by "
                    f"`{code_of(narrowed.func)}(...)` (a per-layer window or band); the causal mask "
                    "from masking_utils that replaces it would drop that",
                )
        _refuse_tiled_heads_with_groups(body, site, init)
        dropout_code, eager_code = self._eager_function(site)
        return _Route(path, site, dropout_code, eager_code, window=window)

    def _emit_eager(self, route: _Route, emitted: dict[str, str]) -> tuple[str, cst.BaseStatement | None]:
        """The name of the route's eager function, and its definition if it is new; the
        facts the backend flags read (B4)."""
        site = route.site
        between = site.math_stmts[site.math.score_index : site.math.softmax_index]
        if site.position_bias:
            # An additive bias reaches sdpa and flex as `position_bias`; flash kernels drop it (B4).
            self.state.facts["additive_bias"] = True
            if _rescaled_after_bias(site):
                # Kernels add the bias after `scaling`; here the legacy math scales it too (B4).
                self.state.facts["bias_rescaled"] = True
        if any(has_call(stmt, {"tanh"}) for stmt in between):
            # Softcapped scores: kernels that take no softcap must not be claimed (B4).
            self.state.facts["softcap"] = True
            folded = {site.math.score_index + k for k in range(len(between))} & set(site.math.rescale_indices)
            kept = [stmt for k, stmt in enumerate(between) if site.math.score_index + k not in folded]
            site.softcap = _softcap_code(kept)
            if site.softcap is None:
                # No cap a kernel could apply the same way (e.g. its division folded into
                # `scaling`): flex attention would drop it, so it is not claimed (B4).
                self.state.facts["softcap_not_passed"] = True
        eager_name = emitted.get(route.eager_code)
        eager_node = None
        if eager_name is None:
            eager_name = "eager_attention_forward" if not emitted else f"eager_attention_forward_{len(emitted)}"
            emitted[route.eager_code] = eager_name
            code = route.eager_code.replace("def eager_attention_forward(", f"def {eager_name}(", 1)
            eager_node = spaced(cst.parse_statement(code))
        route.eager_name = eager_name
        return eager_name, eager_node

    def _window_per_layer(self, cls, forward, init, window: tuple[str, str]):
        """A causal buffer narrowed to a band when `__init__`'s switch says so (GPT-Neo's local
        layers): the module keeps the window as `self.sliding_window` (None for the others),
        and takes its own mask from the base model's `{"full_attention": ..., "sliding_attention": ...}`
        (see masks and [window_layers](window_layers.md))."""
        test, size = window
        name = cls.name.value
        self.state.facts.setdefault(WINDOW_SWITCHES, {})[name] = window
        mask = _mask_param(forward)
        pick = parse_stmts(
            f"if isinstance({mask}, dict):  # one mask per layer type, from the base model\n"
            f'    {mask} = {mask}["sliding_attention" if self.sliding_window is not None else "full_attention"]\n'
        )
        body = list(forward.body.body)
        docstring = 1 if body and is_docstring(body[0]) else 0
        forward = forward.with_changes(body=forward.body.with_changes(body=[*body[:docstring], *pick, *body[docstring:]]))
        init = init.with_changes(body=init.body.with_changes(
            body=[*init.body.body, *parse_stmts(f"self.sliding_window = ({size}) if {test} else None\n")]
        ))
        self.record(init, f"{name}: the causal buffer's band (window {size} where {test}) becomes self.sliding_window "
                    "and a sliding-window mask")
        return forward, init

    def _query_prescaled(self, cls, members, site: Site, init, forward):
        """BART-lineage code scales the query where it is projected with its own `self.scaling`
        (`q = self.q_proj(h) * self.scaling`), so the math has no scale. The interface would
        read that same attribute as the score scale and scale twice: the legacy attribute
        becomes `self.query_scaling` and `self.scaling` is 1.0."""
        assigned = {s.attr.value for s in walk(init) if isinstance(s, cst.Attribute) and is_self_attr(s)}
        if site.math.scaling_code != "1.0" or "scaling" not in assigned or "query_scaling" in assigned:
            return members
        if not any(isinstance(n, cst.Attribute) and is_self_attr(n, "scaling") for n in walk(forward)):
            return members
        renamed = []
        for member in members:
            if isinstance(member, cst.FunctionDef) and member.name.value in ("__init__", "forward"):
                member = member.visit(_QueryScaling())
                if member.name.value == "__init__":
                    line = parse_stmts("self.scaling = 1.0  # the query is scaled before the interface\n")
                    member = member.with_changes(body=member.body.with_changes(body=[*member.body.body, *line]))
            renamed.append(member)
        self.record(init, f"{cls.name.value}: the query's own scale is self.query_scaling; self.scaling = 1.0")
        return renamed

    # -- finding the math ------------------------------------------------------------------
    def _locate(self, body, forward, methods, init) -> Site:
        head_attr = _head_size_attribute(init)
        if any(has_call(s, SOFTMAX) for s in body):
            return self._inline_site(body, forward, head_attr)
        return self._helper_site(body, methods, head_attr, forward, init)

    def _inline_site(self, body, forward, head_attr) -> Site:
        math = find_math(body, head_attr)
        end = math.output_index
        while end + 1 < len(body) and is_guard(body[end + 1]):
            end += 1
        no_op_views = set()
        while end + 1 + len(no_op_views) < len(body) and _views_as_query(body[end + 1 + len(no_op_views)], math, forward):
            no_op_views.add(end + 1 + len(no_op_views))
        transpose_index = end + 1 + len(no_op_views)
        replace = {}
        if transpose_index < len(body) and not _restores_heads(body[transpose_index], math.output):
            merged = _without_head_restore(body[transpose_index], math.output)
            if merged is not None:
                replace[transpose_index] = merged
        if transpose_index >= len(body) or not (replace or _restores_heads(body[transpose_index], math.output)):
            raise NotUnderstood(
                body[min(transpose_index, len(body) - 1)],
                f"expected `{math.output} = {math.output}.transpose(1, 2)` after the attention math",
            )
        repeats = [
            i
            for i in range(math.score_index)
            if assigned_names(body[i]) & {math.key, math.value}
            and any(h in last_part(call_name(c) or "").lower() for c in walk(body[i]) for h in REPEAT_HINTS)
        ]
        tiled = _tiled_groups([body[i] for i in repeats])
        stmts = [_interleaved(body[i]) if tiled else body[i] for i in repeats] + body[math.score_index : end + 1]
        known = {math.query, math.key, math.value, _mask_param(forward)} | self._module_names
        stmts, unsupported = _split_config_branches(stmts, known)
        local_math = find_math(stmts, head_attr)
        stmts = _softmax_dtype_of_query(stmts, local_math, set(param_names(forward)))
        mask = _mask_param(forward)
        reads = set().union(*(names_read(s) for s in stmts))
        inputs = {"query": math.query, "key": math.key, "value": math.value}
        inputs["attention_mask"] = mask if mask in reads else "None"
        renames = {math.query: "query", math.key: "key", math.value: "value", mask: "attention_mask"}
        # A head mask given to forward reaches the eager function as a keyword; kernels
        # other than eager never applied one (legacy sdpa classes fell back to eager for it).
        extras = {p: p for p in param_names(forward) if "head_mask" in p and p in reads}
        # A bias handed to forward, or built in forward before the math (see attention_bias).
        built = set().union(set(), *(bound_names(s) for s in body[: math.score_index]))
        built = {n for n in built - {math.query, math.key, math.value} if "mask" not in n}
        bias = _additive_bias(stmts, local_math, (set(param_names(forward)) | built) - {mask, "self", *extras})
        if bias is not None:
            renames[bias] = "position_bias"
        return Site(
            start=math.score_index,
            end=end,
            math_stmts=stmts,
            math=local_math,
            inputs=inputs,
            targets=(math.output, math.weights),
            drop={*repeats, *no_op_views} if replace else {transpose_index, *repeats, *no_op_views},
            replace=replace,
            renames=renames,
            extras=extras,
            repeat_stmts=[_interleaved(body[i]) if tiled else body[i] for i in repeats],
            tiled_groups=tiled,
            unsupported_branches=unsupported,
            position_bias=bias,
        )

    def _helper_site(self, body, methods, head_attr, forward, init) -> Site:
        bodies = {n: softmax_modules_as_calls(list(fn.body.body), init) for n, fn in methods.items()}
        helpers = {n for n in methods if n not in ("forward", "__init__") and any(has_call(s, SOFTMAX) for s in bodies[n])}
        if not helpers:
            raise NotUnderstood(forward, "no softmax in forward or in a helper method it calls")
        index, call, chosen, alternatives = _helper_call(body, helpers)
        if call is None:
            raise NotUnderstood(forward, f"forward calls the attention helper(s) {sorted(helpers)} in a form not understood")
        helper = methods[chosen]
        stmts = split_output_product(split_softmax_argument(bodies[chosen]))
        returned = stmts[-1] if stmts else None
        if not (isinstance(returned, cst.SimpleStatementLine) and isinstance(returned.body[0], cst.Return)):
            raise NotUnderstood(helper, f"{chosen} does not end with `return output, weights`")
        stmts = stmts[:-1]
        math = find_math(stmts, head_attr)
        returned_names = [code_of(e.value) for e in getattr(returned.body[0].value, "elements", [])]
        if returned_names[:1] != [math.output]:
            raise NotUnderstood(returned, f"{chosen} returns {returned_names}, expected ({math.output}, ...)")
        weights_returned = returned_names[1] if len(returned_names) > 1 else None

        bound = _bind_arguments(helper, call)
        mask_param = next((p for p in param_names(helper) if "mask" in p and "head" not in p), None)
        inputs = {
            "query": bound.get(math.query),
            "key": bound.get(math.key),
            "value": bound.get(math.value),
            "attention_mask": bound.get(mask_param, "None") if mask_param else "None",
        }
        if None in inputs.values():
            raise NotUnderstood(call, f"q, k or v of {chosen} are not parameters passed by forward")
        reads = set().union(*(names_read(s) for s in stmts))
        extras = {
            p: bound[p]
            for p in param_names(helper)[1:]
            if p in reads and p in bound and p not in (math.query, math.key, math.value, mask_param) and bound[p] != "None"
        }
        assign = single_assign(body[index]) if isinstance(body[index], cst.SimpleStatementLine) else None
        target_nodes = assign[0][0] if assign else _assign_targets_of(call, body[index])
        targets = [code_of(e.value) for e in getattr(target_nodes, "elements", [])] or [code_of(target_nodes)]
        output = targets[0]
        weights = targets[1] if len(targets) > 1 else "_"
        replace, drop = {}, set()
        after = index + 1
        if after < len(body) and _restores_heads(body[after], output):
            drop.add(after)
        elif after < len(body) and _without_head_restore(body[after], output) is not None:
            replace[after] = _without_head_restore(body[after], output)
        elif after < len(body) and _merges_heads(body[after], output, methods):
            replace[after] = parse_stmts(f"{output} = {output}.reshape(*{output}.shape[:-2], -1).contiguous()\n")[0]
        else:
            raise NotUnderstood(body[min(after, len(body) - 1)], f"expected heads to be merged back from `{output}` after {chosen}")
        renames = {math.query: "query", math.key: "key", math.value: "value"}
        if mask_param:
            renames[mask_param] = "attention_mask"
        bias = _additive_bias(stmts, math, set(extras))
        if bias is not None:
            renames[bias] = "position_bias"
        if weights_returned and weights_returned != math.weights:
            raise NotUnderstood(returned, f"{chosen} returns weights `{weights_returned}`, not the softmax output")
        return Site(
            start=index,
            end=index,
            math_stmts=stmts,
            math=math,
            inputs=inputs,
            targets=(output, weights),
            drop=drop,
            replace=replace,
            extras=extras,
            renames=renames,
            folded_helpers={chosen, *alternatives},
            position_bias=extras.pop(bias) if bias is not None else None,
        )

    def _free_names_ok(self, site: Site, tree, where) -> bool:
        module_names = _module_level_names(tree)
        allowed = {site.math.query, site.math.key, site.math.value, "self", "scaling", "dropout", "kwargs"}
        allowed |= {*site.renames, *site.extras}
        bound = set(allowed)
        for index, stmt in enumerate(site.math_stmts):
            if index in site.math.rescale_indices or is_guard(stmt):
                continue
            free, bound = free_names([stmt.visit(GuardStripper())], bound)
            free -= module_names | set(dir(builtins))
            if free:
                self.refuse(stmt, f"attention math reads {sorted(free)}, which the interface cannot pass", where)
                return False
        return True

    # -- the eager function ----------------------------------------------------------------
    def _eager_function(self, site: Site) -> tuple[str, str]:
        renames = {**site.renames, "self": "module", site.math.output: "attn_output"}
        dropout_code = "0.0"
        lines = [f'{extra} = kwargs.get("{extra}")' for extra in site.extras]
        for position, stmt in enumerate(clean_math(list(site.math_stmts), site.math)):
            if position == 0:
                stmt = stmt.with_changes(leading_lines=[])
            found = _dropout_probability(stmt)
            if found is not None:
                dropout_code, stmt = found
            stmt = stmt.visit(_Renamer(renames))
            lines.append(code_of(stmt).rstrip("\n"))
        text = "\n".join(lines)
        bias_param = "    position_bias: torch.Tensor | None = None,\n" if site.position_bias else ""
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
            f"{bias_param}"
            "    **kwargs,\n"
            "):\n"
            f"{indented}\n"
            "    attn_output = attn_output.transpose(1, 2).contiguous()\n"
            f"    return attn_output, {renames.get(site.math.weights, site.math.weights)}\n"
        )
        return dropout_code, code

    def _call_site(self, site: Site, eager_name: str, dropout_code: str, kwargs_name: str) -> list[cst.BaseStatement]:
        window = "    sliding_window=self.sliding_window,\n" if uses_sliding_window(self.state.analysis) else ""
        extras = "".join(f"    {k}={v},\n" for k, v in site.extras.items())
        if site.position_bias:
            extras += f"    position_bias={site.position_bias},\n"
        if site.softcap:
            extras += f"    softcap={site.softcap},\n"
        plain = self._plain_call_site(site, eager_name, dropout_code, kwargs_name, window, extras)
        if site.position_bias and site.inputs["attention_mask"] != "None":
            plain = _bias_into_paged_eager_mask(site) + plain
        return _with_blank_line_before(_reordered_heads(plain, site)) if site.tiled_groups else plain

    def _plain_call_site(self, site, eager_name, dropout_code, kwargs_name, window, extras):
        output, weights = site.targets
        inputs = site.inputs
        return _with_blank_line_before(
            parse_stmts(
                f"attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(\n"
                f"    self.config._attn_implementation, {eager_name}\n)\n"
                f"{output}, {weights} = attention_interface(\n"
                f"    self,\n    {inputs['query']},\n    {inputs['key']},\n    {inputs['value']},\n"
                f"    {inputs['attention_mask']},\n"
                f"    dropout={dropout_code},\n    scaling=self.scaling,\n{window}{extras}    **{kwargs_name},\n)\n"
            )
        )

    # -- attributes the interface reads (B3) -----------------------------------------------
    def _complete_init(self, cls, init: cst.FunctionDef, site: Site, forward: cst.FunctionDef) -> cst.FunctionDef:
        assigned = {s.attr.value for s in walk(init) if isinstance(s, cst.Attribute) and is_self_attr(s)}
        additions = []
        tensor_scale = _reads_tensor(site.math.scaling_code, init)
        if "scaling" not in assigned and not tensor_scale:
            additions.append(f"self.scaling = {site.math.scaling_code}")
        if "config" not in assigned and "config" in param_names(init):
            additions.append("self.config = config")
        if "is_causal" not in assigned:
            additions.append(f"self.is_causal = {self._causal_code(site, init)}")
        elif self._causal_code(site, init) == "True":
            init = self._causal_by_default(cls, init)
        if "sliding_window" not in assigned and uses_sliding_window(self.state.analysis):
            additions.append('self.sliding_window = getattr(self.config, "sliding_window", None)')
        if "num_key_value_groups" not in assigned:
            groups = _groups_code(site.repeat_stmts) or _broadcast_groups_code(forward, site) or "1"
            additions.append(f"self.num_key_value_groups = {groups}")
            self.state.facts.setdefault(KV_GROUPS, {})[cls.name.value] = groups  # read by kv-heads-config
        head = _head_size_attribute(init)
        if "head_dim" not in assigned and head is not None:
            additions.append(f"self.head_dim = self.{head}")
        for test in [*site.unsupported_branches, *site.refused_switches]:
            message = f"{cls.name.value}: the configuration selects `{test}`, which port-model did not port"
            additions.append(f"if {test}:\n    raise NotImplementedError({message!r})")
            why = "its math reads forward's locals" if test in site.unsupported_branches else "its attention arm is not routed"
            self.record(init, f"{cls.name.value}: `{test}` refused at load time: {why}")
        if not additions:
            return init
        added = [a.split(" =")[0] for a in additions if not a.startswith("if ")]
        self.record(init, f"{cls.name.value}.__init__: added " + ", ".join(added))
        stmts = parse_stmts("\n".join(additions) + "\n")
        return init.with_changes(body=init.body.with_changes(body=[*init.body.body, *stmts]))

    def _causal_code(self, site: Site, init: cst.FunctionDef) -> str:
        """What `self.is_causal` is, from how the model masks its attention."""
        if site.inputs["attention_mask"] == "None" and not any(has_call(s, {"where"}) for s in site.math_stmts):
            # The legacy math takes no mask and keeps no causal buffer: it is bidirectional
            # (a vision tower), and a kernel given no mask must not make it causal.
            return "False"
        if builds_bidirectional_padding_mask(self.state.analysis):
            return "False"  # a hand-built padding mask, nothing causal
        if uses_bidirectional_mask(self.state.analysis):
            return 'bool(getattr(config, "is_decoder", False))' if "config" in param_names(init) else "False"
        return "True"

    def _causal_by_default(self, cls, init: cst.FunctionDef) -> cst.FunctionDef:
        """`self.is_causal = is_causal` from a parameter defaulting to False, in a model whose
        mask is causal: the legacy layers built it without the argument (causality came in the
        mask only), so a kernel given no mask attended both ways. The default becomes True;
        a builder that passes False explicitly keeps it."""
        stored = next((a for s in walk(init) if (a := single_assign(s)) and code_of(a[0][0]) == "self.is_causal"), None)
        if stored is None or not isinstance(stored[1], cst.Name):
            return init
        param = next((p for p in init.params.params if p.name.value == stored[1].value), None)
        if param is None or param.default is None or code_of(param.default) != "False":
            return init
        self.record(init, f"{cls.name.value}.__init__: `{param.name.value}` defaults to True: the model's mask is causal")
        return init.deep_replace(param, param.with_changes(default=cst.Name("True")))

    def _scaling_property(self, cls, members, site: Site, init):
        """A scale computed from a buffer cannot be taken in __init__ (buffers are on the meta
        device then): it becomes a property read at call time."""
        if not _reads_tensor(site.math.scaling_code, init) or any(
            isinstance(m, cst.FunctionDef) and m.name.value == "scaling" for m in members
        ):
            return members
        prop = parse_stmts(f"@property\ndef scaling(self) -> float:\n    return float({site.math.scaling_code})\n")
        self.record(cls, f"{cls.name.value}.scaling is a property: the scale reads a tensor")
        return [*members, *prop]

    def _drop_unused_helpers(self, cls, members, helpers: set[str]):
        if not helpers:
            return members
        text = "\n".join(code_of(m) for m in members)
        kept = []
        for member in members:
            if isinstance(member, cst.FunctionDef) and member.name.value in helpers and f"self.{member.name.value}(" not in text:
                self.record(member, f"{cls.name.value}.{member.name.value} removed: its math is in the eager function")
                continue
            kept.append(member)
        return kept


# -- helpers -------------------------------------------------------------------------------
def _routed_body(routes: list[_Route], branch: MathBranch | None) -> list[cst.BaseStatement]:
    """Forward's new statements: each path with its math replaced by its call site; the
    paths of a branch put back together around their arms."""
    parts = []
    for route in routes:
        site, path = route.site, route.path
        if not path.lo <= site.start <= site.end < path.hi:
            raise NotUnderstood(path.body[site.start], "the attention math reaches out of its branch arm")
        prefix, arm, suffix = [], [], []
        for i, stmt in enumerate(path.body):
            part = prefix if i < path.lo else arm if i < path.hi else suffix
            if i == site.start:
                arm += route.call_site
            if site.start <= i <= site.end or i in site.drop:
                continue
            part.append(site.replace.get(i, stmt))
        parts.append((prefix, arm, suffix))
    prefix, _, suffix = parts[0]
    if branch is None:
        return [*prefix, *parts[0][1], *suffix]
    for other_prefix, _, other_suffix in parts[1:]:
        if [code_of(s) for s in (*other_prefix, *other_suffix)] != [code_of(s) for s in (*prefix, *suffix)]:
            raise NotUnderstood(branch.branch, "the arms need different changes outside the branch")
    arms = [arm for _, arm, _ in parts]
    return [*prefix, with_arms(branch.branch, arms), *suffix]


def _head_size_attribute(init: cst.FunctionDef | None) -> str | None:
    if init is None:
        return None
    assigned = {s.attr.value for s in walk(init) if isinstance(s, cst.Attribute) and is_self_attr(s)}
    return next((a for a in HEAD_SIZE_ATTRIBUTES if a in assigned), None)


def _reads_tensor(code: str, init: cst.FunctionDef) -> bool:
    """Whether a scale expression reads a tensor: a torch call, a registered buffer, or an
    attribute that __init__ assigns from a torch call (`self.scale = torch.sqrt(...)`)."""
    buffers = {
        c.args[0].value.evaluated_value
        for c in walk(init)
        if isinstance(c, cst.Call) and last_part(call_name(c)) == "register_buffer" and c.args
        and isinstance(c.args[0].value, cst.SimpleString)
    }
    tensors = {
        target.attr.value
        for node in walk(init)
        if isinstance(node, cst.Assign) and "torch." in code_of(node.value)
        for target in (t.target for t in node.targets)
        if isinstance(target, cst.Attribute) and is_self_attr(target)
    }
    return "torch." in code or any(re.search(rf"\bself\.{a}\b", code) for a in buffers | tensors)


def _softmax_dtype_of_query(stmts, math: Math, params: set[str]) -> list:
    """`softmax(s, dim=-1, dtype=hidden_states.dtype)` with the layer's input, which the eager
    function does not get: the query is projected from it, so it has that dtype."""
    stmt = stmts[math.softmax_index]
    call = next(c for c in walk(stmt) if isinstance(c, cst.Call) and last_part(call_name(c)) in SOFTMAX)
    arg = next((a for a in call.args if a.keyword is not None and a.keyword.value == "dtype"), None)
    if arg is None or not isinstance(arg.value, cst.Attribute) or arg.value.attr.value != "dtype":
        return stmts
    source = dotted(arg.value.value)
    if source not in params or source in (math.query, math.key, math.value):
        return stmts
    new_arg = arg.with_changes(value=arg.value.with_changes(value=cst.Name(math.query)))
    return [*stmts[: math.softmax_index], stmt.deep_replace(arg, new_arg), *stmts[math.softmax_index + 1 :]]


def _split_config_branches(stmts, inputs: set[str]) -> tuple[list, list[str]]:
    """Branches chosen by the module's own settings (`if self.position_embedding_type == ...:`)
    whose math needs forward's locals cannot move into the eager function. They are taken
    out, and the port refuses those settings when the module is built instead of guessing."""
    kept, refused = [], []
    bound = set(inputs) | {"self", "scaling", "dropout", "kwargs", "torch", "math", "nn", "F"}
    for stmt in stmts:
        if isinstance(stmt, cst.If) and names_read(stmt.test) <= {"self"}:
            free, _ = free_names([stmt], bound | set(dir(builtins)))
            if free:
                refused.append(code_of(stmt.test))
                continue
        _, bound = free_names([stmt], bound)
        kept.append(stmt)
    return kept, refused


def _additive_bias(stmts, math: Math, candidates: set[str]) -> str | None:
    """A tensor given to the attention (not the mask) that is added to the scores before the
    softmax: an ALiBi or relative position bias, `scores = scores + alibi` or `scores += bias`."""
    scores = set()
    for stmt in stmts[math.score_index : math.softmax_index]:
        scores |= assigned_names(stmt)
    for stmt in stmts[math.score_index + 1 : math.softmax_index]:
        for operands in added_operands(stmt):
            if operands & scores:
                found = (operands - scores) & candidates
                if found:
                    return found.pop()
    return None


PAGED_EAGER = "paged|eager"  # continuous batching's eager kernel: it adds the mask, takes no position_bias


def _bias_into_paged_eager_mask(site: Site) -> list[cst.BaseStatement]:
    """Continuous batching's eager kernel adds the (additive) mask it is given and drops
    `position_bias`: for it, the bias goes into the mask, where it adds the same."""
    mask, bias = site.inputs["attention_mask"], site.position_bias
    return _with_blank_line_before(parse_stmts(
        f'if self.config._attn_implementation == "{PAGED_EAGER}" and {mask} is not None:\n'
        f"    {mask} = {mask} + {bias}  # that kernel adds the mask but never a position bias\n"
    ))


def _rescaled_after_bias(site: Site) -> bool:
    """Whether the scores are rescaled after the position bias is added to them."""
    bias = next(name for name, renamed in site.renames.items() if renamed == "position_bias")
    scores = assigned_names(site.math_stmts[site.math.score_index])
    added = False
    for stmt in site.math_stmts[site.math.score_index + 1 : site.math.softmax_index]:
        if added and any(rescale_factor(stmt, name) is not None for name in scores):
            return True
        added = added or bias in names_read(stmt)
    return False


def _softcap_code(stmts) -> str | None:
    """`cap` in `s = s / cap; s = tanh(s); s = s * cap` (or `cap * tanh(s / cap)`), when `cap`
    is a module attribute: flex and flash kernels apply it themselves given `softcap=`."""
    divisors, factors = set(), set()
    for stmt in stmts:
        for node in walk(stmt):
            if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Divide):
                divisors.add(code_of(node.right))
            elif isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Multiply):
                factors |= {code_of(node.left), code_of(node.right)}
    caps = sorted(c for c in divisors & factors if c.startswith("self.") and c.count("(") == 0)
    return caps[0] if len(caps) == 1 else None


def _mask_param(forward: cst.FunctionDef) -> str:
    params = [p.name.value for p in forward.params.params]
    return next((p for p in params if "mask" in p and "head" not in p and "encoder" not in p), "attention_mask")


def _tiles_heads(stmt: cst.CSTNode) -> bool:
    """`key = key.repeat(1, n, 1, 1)`: a tensor's own `repeat` tiles the heads (query head h
    reads key head h % kv_heads), where kernels repeat each head in place (h // groups), as
    `repeat_kv` and `repeat_interleave` do."""
    return _tiling_call(stmt) is not None


def _tiling_call(stmt: cst.CSTNode) -> cst.Call | None:
    return next((c for c in walk(stmt) if isinstance(c, cst.Call) and isinstance(c.func, cst.Attribute)
                 and c.func.attr.value == "repeat"), None)


def _tiled_groups(repeat_stmts) -> str | None:
    """The head factor of tiling repeats, `x.repeat(1, n, 1, 1)` on [batch, heads, seq, dim]."""
    tiling = [_tiling_call(s) for s in repeat_stmts if _tiles_heads(s)]
    if not tiling:
        return None
    for stmt, call in zip([s for s in repeat_stmts if _tiles_heads(s)], tiling, strict=True):
        if len(call.args) != 4 or [code_of(a.value) for i, a in enumerate(call.args) if i != 1] != ["1", "1", "1"]:
            raise NotUnderstood(stmt, "key/value heads repeated with `.repeat` on an axis other than the heads; "
                                "expected `x.repeat(1, groups, 1, 1)` on [batch, heads, seq, head_dim]")
    return code_of(tiling[0].args[1].value)


def _interleaved(stmt: cst.BaseStatement) -> cst.BaseStatement:
    """`k = k.repeat(1, n, 1, 1)` -> `k = torch.repeat_interleave(k, n, dim=1)`: in the eager
    function the heads are grouped as kernels group them; the call site reorders the query
    heads to match (see `_reordered_heads`)."""
    call = _tiling_call(stmt)
    if call is None:
        return stmt
    tensor = code_of(call.func.value)
    [target] = assigned_names(stmt)
    return cst.parse_statement(f"{target} = torch.repeat_interleave({tensor}, {code_of(call.args[1].value)}, dim=1)\n")


def _reordered_heads(call_site: list[cst.BaseStatement], site: Site) -> list[cst.BaseStatement]:
    """Query heads tiled over the key heads ([groups, kv_heads]) are put in the kernels'
    order ([kv_heads, groups]) before the call, and the output (and weights) heads back after it."""
    n, query = site.tiled_groups, site.inputs["query"]
    output, weights = site.targets
    before = f"{query} = {query}.unflatten(1, ({n}, -1)).transpose(1, 2).flatten(1, 2)\n"
    after = f"{output} = {output}.unflatten(2, (-1, {n})).transpose(2, 3).flatten(2, 3)\n"
    if weights and weights != "_":
        after += f"if {weights} is not None:\n    {weights} = {weights}.unflatten(1, (-1, {n})).transpose(1, 2).flatten(1, 2)\n"
    return [*parse_stmts(before), *call_site, *parse_stmts(after)]


def _refuse_tiled_heads_with_groups(body, site: Site, init: cst.FunctionDef) -> None:
    """Tiled heads stay in forward and kernels must repeat nothing more, which a class that
    sets `num_key_value_groups` itself (and may read it) cannot promise."""
    tiled = [s for s in body if _tiles_heads(s) and assigned_names(s) & {site.inputs["key"], site.inputs["value"]}]
    sets_groups = any(isinstance(n, cst.Attribute) and is_self_attr(n) and n.attr.value == "num_key_value_groups"
                      for n in walk(init))
    if tiled and sets_groups:
        raise NotUnderstood(tiled[0], "key/value heads tiled with `.repeat` while the class sets num_key_value_groups, "
                            "which kernels would repeat again; expected no such attribute")


def _groups_code(repeat_stmts) -> str:
    for stmt in repeat_stmts:
        call = next((c for c in walk(stmt) if isinstance(c, cst.Call) and len(c.args) >= 2), None)
        if call is not None:
            return code_of(call.args[1].value)
    return None


def _view_args(node: cst.BaseExpression) -> str | None:
    """`(a,b,c,d)` for a 4-argument `.view(...)` / `.reshape(...)` call, spaces removed."""
    if isinstance(node, cst.Call) and last_part(call_name(node)) in ("view", "reshape") and len(node.args) == 4:
        return code_of(cst.Call(func=cst.Name("f"), args=node.args)).replace(" ", "")
    return None


def _views_as_query(stmt: cst.CSTNode, math: Math, forward: cst.FunctionDef) -> bool:
    """`out = out.view(b, heads, q_len, head_dim)` right after the math, with the very shape the
    query was given: a no-op on the `[batch, heads, seq, head_dim]` product, dropped with it."""
    assign = single_assign(stmt)
    if not assign or dotted(assign[0][0]) != math.output or not isinstance(assign[1], cst.Call):
        return False
    if dotted(getattr(assign[1].func, "value", None)) != math.output:
        return False
    shape = _view_args(assign[1])
    if shape is None:
        return False
    for node in walk(forward):
        if isinstance(node, cst.Assign) and dotted(node.targets[0].target) == math.query:
            if any(_view_args(call) == shape for call in walk(node.value)):
                return True
    return False


def _heads_in_view(forward: cst.FunctionDef, name: str) -> str | None:
    """The head count in `name = <x>.view(bsz, q_len, HEADS, head_dim)[.transpose(1, 2)]`, or in
    `name = <x>.transpose(1, 2).reshape(bsz, HEADS, q_len, head_dim)` (heads swapped first). A
    head count held in a local of forward assigned once from `self` alone is read as its value."""
    for node in walk(forward):
        if not (isinstance(node, cst.Assign) and dotted(node.targets[0].target) == name):
            continue
        for call in walk(node.value):
            if isinstance(call, cst.Call) and last_part(call_name(call)) in ("view", "reshape") and len(call.args) == 4:
                swapped = isinstance(call.func, cst.Attribute) and any(
                    last_part(call_name(c)) == "transpose" for c in walk(call.func.value) if isinstance(c, cst.Call)
                )
                return _local_from_self(forward, code_of(call.args[1 if swapped else 2].value))
    return None


def _local_from_self(forward: cst.FunctionDef, code: str) -> str:
    """`(self.a if self.b else self.c)` for a local `n` that forward assigns once so; else `code`."""
    assigns = [n for n in walk(forward) if isinstance(n, cst.Assign) and dotted(n.targets[0].target) == code]
    if len(assigns) == 1 and names_read(assigns[0].value) <= {"self"}:
        return f"({code_of(assigns[0].value)})"
    return code


def _broadcast_groups_code(forward: cst.FunctionDef, site: Site) -> str | None:
    """Fewer key heads than query heads and no repeat: the legacy math broadcasts a single
    key/value head (multi-query). Other kernels repeat heads from `num_key_value_groups`."""
    key = site.inputs["key"]
    for node in walk(forward):
        if isinstance(node, cst.Assign) and key in {dotted(e.value) for e in getattr(node.targets[0].target, "elements", [])} | {dotted(node.targets[0].target)}:
            if any(h in (call_name(c) or "") for c in walk(node.value) for h in ("repeat", "expand")):
                return None  # heads already repeated before the kernel
    q_heads, kv_heads = _heads_in_view(forward, site.inputs["query"]), _heads_in_view(forward, key)
    if not q_heads or not kv_heads or q_heads == kv_heads or "-1" in (q_heads, kv_heads):
        return None
    return f"{q_heads} // {kv_heads}"


def _helper_call(body, helpers: set[str]):
    """(index, call, chosen helper, other helpers) for `out, w = self.<helper>(...)`, also
    inside an `if flag: ... else: ...` choosing between two helpers (the plain-matmul one wins)."""
    for index, stmt in enumerate(body):
        calls = [c for c in walk(stmt) if isinstance(c, cst.Call) and is_self_attr(c.func) and c.func.attr.value in helpers]
        if not calls:
            continue
        if isinstance(stmt, cst.SimpleStatementLine) and len(calls) == 1:
            return index, calls[0], calls[0].func.attr.value, set()
        if isinstance(stmt, cst.If) and len(calls) == 2 and stmt.orelse is not None and isinstance(stmt.orelse, cst.Else):
            arms = [stmt.body.body, stmt.orelse.body.body]
            if all(len(a) == 1 for a in arms):
                # The arm for the default configuration is the `else` one (flags default off).
                chosen = calls[1]
                names = {c.func.attr.value for c in calls}
                return index, chosen, chosen.func.attr.value, names - {chosen.func.attr.value}
        return index, None, None, set()
    return None, None, None, set()


def _assign_targets_of(call: cst.Call, stmt: cst.CSTNode):
    for node in walk(stmt):
        if isinstance(node, cst.Assign) and node.value is call:
            return node.targets[0].target
    raise NotUnderstood(stmt, "the attention helper's result is not assigned")


def _bind_arguments(helper: cst.FunctionDef, call: cst.Call) -> dict[str, str]:
    """Helper parameter -> the expression forward passes for it (defaults included)."""
    params = [p for p in helper.params.params][1:]  # drop self
    bound = {}
    positional = [a for a in call.args if a.keyword is None]
    for param, arg in zip(params, positional, strict=False):
        bound[param.name.value] = code_of(arg.value)
    for arg in call.args:
        if arg.keyword is not None:
            bound[arg.keyword.value] = code_of(arg.value)
    for param in params:
        if param.name.value not in bound and param.default is not None:
            bound[param.name.value] = code_of(param.default)
    return bound


# The calls that swap the heads and sequence axes of a `[batch, heads, seq, head_dim]` output,
# as (method, arguments without spaces): the two axes in either order, counted from either end.
HEAD_SWAPS = {
    ("transpose", args) for args in ("(1,2)", "(2,1)", "(-3,-2)", "(-2,-3)")
} | {("permute", "(0,2,1,3)")}


def _restores_heads(stmt: cst.CSTNode, output: str) -> bool:
    """`out = out.transpose(1, 2)[.contiguous()]` (or `transpose(2, 1)`, or
    `permute(0, 2, 1, 3)`)."""
    assign = single_assign(stmt)
    if not assign or dotted(assign[0][0]) != output:
        return False
    text = code_of(assign[1]).replace(" ", "")
    forms = {f"{output}.{method}{args}" for method, args in HEAD_SWAPS}
    return text in forms or text in {f + ".contiguous()" for f in forms}


def _without_head_restore(stmt: cst.CSTNode, output: str) -> cst.CSTNode | None:
    """`out = out.transpose(1, 2)[.contiguous()].reshape(...)` (or `.flatten(2)`, any swap of
    HEAD_SWAPS) in one statement: the same statement without the transpose, since the
    interface already returns heads second."""
    assign = single_assign(stmt)
    if not assign or dotted(assign[0][0]) != output:
        return None
    for node in walk(assign[1]):
        if node is assign[1] or not isinstance(node, cst.Call) or not isinstance(node.func, cst.Attribute):
            continue
        args = code_of(cst.Call(func=cst.Name("f"), args=node.args)).replace(" ", "")
        is_restore = (node.func.attr.value, args.removeprefix("f")) in HEAD_SWAPS
        if is_restore and dotted(node.func.value) == output:
            return stmt.deep_replace(node, cst.Name(output))
    return None


def _merges_heads(stmt: cst.CSTNode, output: str, methods) -> bool:
    """`out = self._merge_heads(out, ...)` where the method permutes heads back and flattens."""
    assign = single_assign(stmt)
    if not assign or dotted(assign[0][0]) != output or not isinstance(assign[1], cst.Call):
        return False
    func = assign[1].func
    if not is_self_attr(func) or func.attr.value not in methods:
        return False
    text = code_of(methods[func.attr.value]).replace(" ", "")
    return "permute(0,2,1,3)" in text or "transpose(1,2)" in text


def _with_blank_line_before(stmts: list[cst.BaseStatement]) -> list[cst.BaseStatement]:
    return [stmts[0].with_changes(leading_lines=[cst.EmptyLine(indent=False)]), *stmts[1:]]


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


class _QueryScaling(SharingTransformer):
    """`self.scaling` -> `self.query_scaling`, except the interface call's `scaling=` keyword."""

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.Attribute:
        return updated.with_changes(attr=cst.Name("query_scaling")) if is_self_attr(original, "scaling") else updated

    def leave_Arg(self, original: cst.Arg, updated: cst.Arg) -> cst.Arg:
        return original if original.keyword is not None and original.keyword.value == "scaling" else updated


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


class _Renamer(SharingTransformer):
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
