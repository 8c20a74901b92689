"""The engine contract read from the code (CONTRACT parts A to E), for any repo.

Each check finds its places by pattern, with the class roles of `porter.analysis` plus the
shapes current transformers code has (a class that fetches its kernel from
`ALL_ATTENTION_FUNCTIONS` is an attention module even with no softmax left in it). A check
that fails names the file and line that decide it and says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from porter.analysis import RepoAnalysis, analyse
from porter.report import FAIL, PASS, SKIP, Check
from transforms.cst_utils import (
    call_name,
    code_of,
    dotted,
    is_self_attr,
    last_part,
    names_read,
    param_names,
    single_assign,
    star_kwargs_name,
    walk,
)

INTERFACE_TEXT = "ALL_ATTENTION_FUNCTIONS.get_interface("  # what transformers' source heuristic looks for
MODULE_ATTRIBUTES = ("layer_idx", "is_causal", "scaling", "num_key_value_groups", "head_dim", "config")
MASK_FUNCTIONS = {
    "create_causal_mask",
    "create_sliding_window_causal_mask",
    "create_bidirectional_mask",
    "create_chunked_causal_mask",
    "create_masks_for_generate",
}
# Styles engines accept; every transformers 5 release registers them (importing its registry
# would pull in torch.distributed, seconds for a check that only reads code).
ENGINE_STYLES = {"colwise", "rowwise", "colwise_rep", "rowwise_rep", "replicate"}
# transformers' styles for experts, judged by D4; engines that do not apply them keep those experts whole.
EXPERT_STYLES = {"local_params", "packed_colwise", "packed_rowwise", "moe_tp_experts", "moe_identity_expert",
                 "grouped_gemm", "ep_dispatch_experts"}
SOFTMAX = {"softmax", ".softmax", "log_softmax"}
Place = tuple[str | None, int | None, str]  # file, line, reason


@dataclass
class Code:
    """A repo's config and parsed code files, with the roles found in them."""

    config: dict
    modules: dict[str, cst.Module]
    analysis: RepoAnalysis
    _positions: dict = field(default_factory=dict)
    _memo: dict = field(default_factory=dict)  # the checks ask the same questions many times

    @classmethod
    def read(cls, config: dict, modules: dict[str, cst.Module]) -> Code:
        entry_points = {str(v).rsplit(".", 1)[-1] for v in _auto_map(config).values()}
        return cls(config, modules, analyse(modules, entry_points))

    def line(self, file: str, node: cst.CSTNode) -> int | None:
        if file not in self._positions:
            wrapper = MetadataWrapper(self.modules[file], unsafe_skip_copy=True)
            self._positions[file] = wrapper.resolve(PositionProvider)
        position = self._positions[file].get(node)
        return position.start.line if position else None

    def place(self, cls_name: str, node: cst.CSTNode | None, reason: str) -> Place:
        info = self.analysis.classes[cls_name]
        return info.file, self.line(info.file, node if node is not None else info.node), reason

    def lineage(self, cls_name: str) -> list[str]:
        """The class and the repo classes it inherits from, nearest first."""
        return [cls_name, *self.analysis.ancestors(cls_name)]

    def method(self, cls_name: str, name: str) -> tuple[str, cst.FunctionDef] | tuple[None, None]:
        for owner in self.lineage(cls_name):
            fn = self.analysis.classes[owner].methods.get(name)
            if fn is not None:
                return owner, fn
        return None, None

    def class_attributes(self, cls_name: str) -> dict[str, cst.BaseExpression]:
        """`name = value` in the class bodies and `self.name = value` in `__init__`s of the lineage."""
        key = ("attributes", cls_name)
        if key in self._memo:
            return self._memo[key]
        found: dict[str, cst.BaseExpression] = self._memo.setdefault(key, {})
        for owner in reversed(self.lineage(cls_name)):
            info = self.analysis.classes[owner]
            for stmt in info.node.body.body:
                assign = single_assign(stmt)
                if assign and isinstance(assign[0][0], cst.Name):
                    found[assign[0][0].value] = assign[1]
            init = info.methods.get("__init__")
            for node in walk(init) if init is not None else ():
                assign = single_assign(node) if isinstance(node, cst.SimpleStatementLine) else None
                for target in assign[0] if assign else ():
                    if is_self_attr(target):
                        found[target.attr.value] = assign[1]
        return found

    def attention(self) -> list[str]:
        """Attention modules: the math-bearing ones analysis finds and those that fetch a kernel."""
        if "attention" in self._memo:
            return self._memo["attention"]
        names = set(self.analysis.attention)
        for name, info in self.analysis.classes.items():
            if any(dotted(n) == "ALL_ATTENTION_FUNCTIONS" for n in walk(info.node)):
                names.add(name)
        self._memo["attention"] = sorted(names - set(self.analysis.attention_variants))
        return self._memo["attention"]

    def path_to_attention(self) -> set[str]:
        """Classes that hold, directly or through children, an attention module of `attention()`."""
        reach, changed = set(self.attention()), True
        while changed:
            changed = False
            for name, info in self.analysis.classes.items():
                held = set(info.children.values()) | set(info.layer_lists.values())
                if name not in reach and held & reach:
                    reach.add(name)
                    changed = True
        return reach


def _auto_map(config: dict) -> dict[str, str]:
    value = config.get("auto_map") or {}
    return {k: v[0] if isinstance(v, list) else v for k, v in value.items() if v}


def _class_of(reference: str) -> str:
    return reference.rsplit(".", 1)[-1]


def _result(item: str, name: str, failures: list[Place], passed: str = "") -> Check:
    """PASS with `passed` as detail, or FAIL at the first place with every reason."""
    if not failures:
        return Check(item, name, PASS, passed)
    file, line, _ = failures[0]
    detail = "; ".join(f"{f}:{ln}: {r}" if ln else (f"{f}: {r}" if f else r) for f, ln, r in failures)
    return Check(item, name, FAIL, detail, file=file, line=line)


# -- A: loads and runs ---------------------------------------------------------------------
def config_entries(code: Code) -> Check:
    config, auto_map = code.config, _auto_map(code.config)
    failures = []
    for key in ("model_type", "architectures"):
        if not config.get(key):
            failures.append(("config.json", None, f"has no `{key}`"))
    for key in ("AutoConfig", "AutoModel"):
        if key not in auto_map:
            failures.append(("config.json", None, f"auto_map has no `{key}` entry"))
    named = {_class_of(v) for v in auto_map.values()}
    for name in config.get("architectures") or []:
        if name not in named:
            failures.append(("config.json", None, f"architecture {name} is not named in auto_map"))
    # Engines load `architectures`; other heads without an entry are reported, not failed.
    unmapped = sorted(set(code.analysis.heads) - named - set(config.get("architectures") or []))
    note = f"heads without an auto_map entry: {', '.join(unmapped)}" if unmapped else ""
    return _result("A1", "config.json names the model's classes", failures, note)


def generation_and_init(code: Code) -> Check:
    failures = []
    auto_map = _auto_map(code.config)
    generative = {_class_of(v) for k, v in auto_map.items() if k == "AutoModelForCausalLM"}
    for name in sorted(generative & set(code.analysis.classes)):
        bases = {b for owner in code.lineage(name) for b in code.analysis.classes[owner].bases}
        if "GenerationMixin" not in bases:
            failures.append(code.place(name, None, f"{name} does not inherit GenerationMixin"))
    for name in sorted(set(code.analysis.heads) | code.analysis.base_models):
        init = code.analysis.classes[name].methods.get("__init__")
        if init is not None and not any(call_name(n) == "self.post_init" for n in walk(init)):
            failures.append(code.place(name, init, f"{name}.__init__ does not call self.post_init()"))
    for name in sorted(code.analysis.pretrained):
        for stmt in code.analysis.classes[name].node.body.body:
            assign = single_assign(stmt)
            if assign and dotted(assign[0][0]) == "_tied_weights_keys" and isinstance(assign[1], (cst.List, cst.Tuple)):
                failures.append(code.place(name, stmt, "_tied_weights_keys is a list; transformers 5 wants {target: source}"))
    return _result("A3", "GenerationMixin, post_init, tied-weights form", failures)


# -- B: attention through the interface ----------------------------------------------------
def _interface_calls(fn: cst.FunctionDef) -> tuple[list[cst.Call], list[cst.Call]]:
    """The `get_interface` calls of a forward and the calls of what they returned."""
    fetches, kernels = [], set()
    for node in walk(fn):
        assign = single_assign(node) if isinstance(node, cst.SimpleStatementLine) else None
        if assign and isinstance(assign[1], cst.Call) and (dotted(assign[1].func) or "").endswith(".get_interface"):
            kernels |= {t.value for t in assign[0] if isinstance(t, cst.Name)}
        if isinstance(node, cst.Call) and (dotted(node.func) or "").endswith(".get_interface"):
            fetches.append(node)
    calls = [n for n in walk(fn) if isinstance(n, cst.Call) and isinstance(n.func, cst.Name) and n.func.value in kernels]
    return fetches, calls


def interface_routing(code: Code) -> Check:
    failures = []
    for variant, primary in sorted(code.analysis.attention_variants.items()):
        failures.append(code.place(variant, None, f"{variant} re-implements {primary} for one backend"))
    for table in sorted(code.analysis.attention_dicts):
        failures.append((None, None, f"backend dictionary {table} picks attention classes"))
    attention = code.attention()
    if not attention:
        failures.append((None, None, "no attention module found"))
    for name in attention:
        info = code.analysis.classes[name]
        owner, forward = code.method(name, "forward")
        if forward is None:
            failures.append(code.place(name, None, f"{name} has no forward"))
            continue
        fetches, calls = _interface_calls(forward)
        if INTERFACE_TEXT not in code.modules[info.file].code:
            failures.append(code.place(name, None, f"{info.file} lacks `{INTERFACE_TEXT}...)`"))
        elif len(fetches) != 1 or len(calls) != 1:
            failures.append(
                code.place(owner, forward, f"{owner}.forward fetches the kernel {len(fetches)} and calls it {len(calls)} times")
            )
        else:
            call = calls[0]
            first = call.args[0].value if call.args else None
            keywords = {a.keyword.value for a in call.args if a.keyword}
            if not (isinstance(first, cst.Name) and first.value == "self"):
                failures.append(code.place(owner, call, "the kernel is not given the module (`self`) first"))
            if "scaling" not in keywords:
                failures.append(code.place(owner, call, "the kernel call passes no `scaling=`"))
        for fn in info.methods.values():
            for node in walk(fn):
                if call_name(node) in SOFTMAX or last_part(call_name(node)) in ("softmax", "scaled_dot_product_attention"):
                    failures.append(code.place(name, node, f"attention math in {name}.{fn.name.value}, outside the kernel"))
                    break
    return _result("B1", "attention fetched once from ALL_ATTENTION_FUNCTIONS and called once", failures)


def eager_function(code: Code) -> Check:
    failures = []
    for name in code.attention():
        info = code.analysis.classes[name]
        _, forward = code.method(name, "forward")
        fetches, _ = _interface_calls(forward) if forward is not None else ([], [])
        default = dotted(fetches[0].args[1].value) if fetches and len(fetches[0].args) > 1 else None
        defined = {s.name.value for s in code.modules[info.file].body if isinstance(s, cst.FunctionDef)}
        imported = {
            (a.asname.name.value if a.asname else last_part(dotted(a.name)))
            for n in walk(code.modules[info.file])
            if isinstance(n, cst.ImportFrom) and not isinstance(n.names, cst.ImportStar)
            for a in n.names
        }
        if default is None or default not in defined | imported:
            failures.append(code.place(name, None, f"{name} has no eager_attention_forward to fall back on"))
    return _result("B2", "an eager_attention_forward holds the eager math", failures)


def module_attributes(code: Code) -> Check:
    failures = []
    for name in code.attention():
        missing = [a for a in MODULE_ATTRIBUTES if a not in code.class_attributes(name)]
        if missing:
            failures.append(code.place(name, None, f"{name} does not set {', '.join(missing)}"))
    return _result("B3", "attention modules carry layer_idx, is_causal, scaling, ...", failures)


def backend_flags(code: Code) -> Check:
    failures, flags = [], {}
    for root in sorted(code.analysis.pretrained_roots):
        attributes = code.class_attributes(root)
        flags = {k: code_of(v) for k, v in attributes.items() if k.startswith("_supports_")}
        if flags.get("_supports_attention_backend") != "True":
            failures.append(code.place(root, None, f"{root} does not set _supports_attention_backend = True"))
    if not code.analysis.pretrained_roots:
        failures.append((None, None, "no PreTrainedModel subclass found"))
    return _result("B4", "backend flags declared", failures, ", ".join(f"{k}={v}" for k, v in sorted(flags.items())))


def _passes_mask_on(code: Code, name: str) -> bool:
    """`forward` gives its own `attention_mask`, untouched, to a module it holds
    (`self.language_model(..., attention_mask=attention_mask)`): the mask is built there."""
    _, forward = code.method(name, "forward")
    if forward is None:
        return False
    nodes = list(walk(forward))
    if any(isinstance(n, cst.AssignTarget | cst.AugAssign) and dotted(n.target) == "attention_mask" for n in nodes):
        return False  # it makes a mask of its own first
    children = set(code.class_attributes(name))
    for node in nodes:
        if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) and dotted(node.func.value) == "self":
            if node.func.attr.value in children and any(
                a.keyword is not None and a.keyword.value == "attention_mask" and dotted(a.value) == "attention_mask"
                for a in node.args
            ):
                return True
    return False


def mask_building(code: Code) -> Check:
    failures = []
    for base in sorted(code.analysis.base_models):
        if _passes_mask_on(code, base):
            continue  # a composite hands the mask to the model it holds, which builds it
        called = {
            last_part(call_name(n))
            for owner in code.lineage(base)
            for fn in code.analysis.classes[owner].methods.values()
            for n in walk(fn)
            if call_name(n)
        }
        if not called & MASK_FUNCTIONS:
            _, forward = code.method(base, "forward")
            hand_made = sorted(c for c in called if "mask" in c.lower())
            reason = f"{base} builds its mask without masking_utils" + (f" ({', '.join(hand_made)})" if hand_made else "")
            failures.append(code.place(base, forward, reason))
    return _result("B5", "masks built by masking_utils", failures)


# -- C: kwargs and the engine-style call ---------------------------------------------------
def kwargs_flow(code: Code) -> Check:
    failures = []
    attention = set(code.attention())
    path = code.path_to_attention() | set(code.analysis.heads)
    for name in sorted(path):
        owner, forward = code.method(name, "forward")
        if forward is None or owner != name:
            continue
        star = star_kwargs_name(forward)
        if star is None:
            failures.append(code.place(name, forward, f"{name}.forward takes no **kwargs"))
            continue
        passes_on = any(
            isinstance(n, cst.Call) and any(a.star == "**" and dotted(a.value) == star for a in n.args) for n in walk(forward)
        )
        if not passes_on:
            where = "the attention kernel" if name in attention else "the modules it calls"
            failures.append(code.place(name, forward, f"{name}.forward does not pass **{star} to {where}"))
    return _result("C1", "**kwargs flow from every head down to the kernel", failures)


def base_model_entry(code: Code) -> Check:
    target = _auto_map(code.config).get("AutoModel")
    if target is None:
        return _result("C2", "AutoModel builds the base model", [("config.json", None, "auto_map has no AutoModel")])
    name = _class_of(target)
    if name in code.analysis.classes and name not in code.analysis.base_models and not _fuses_modalities(code, name):
        return _result("C2", "AutoModel builds the base model", [code.place(name, None, f"{name} is not the base model")])
    return _result("C2", "AutoModel builds the base model", [])


def positions_from_ids(code: Code) -> Check:
    failures = []
    for base in sorted(code.analysis.base_models):
        owner, forward = code.method(base, "forward")
        if forward is not None and "position_ids" not in param_names(forward):
            failures.append(code.place(owner, forward, f"{owner}.forward takes no position_ids"))
    for name in code.attention():
        for fn in code.analysis.classes[name].methods.values():
            for node in walk(fn):
                if (
                    isinstance(node, cst.Call)
                    and is_self_attr(node.func)
                    and any(
                        a.keyword and a.keyword.value == "seq_len" and "position_ids" not in names_read(a.value)
                        for a in node.args
                    )
                ):
                    failures.append(
                        code.place(name, node, "rotary tables are sized by the key length (`seq_len=`), "
                                   "so positions past it fail: size them from position_ids")
                    )
    return _result("C3", "positions come from position_ids", failures)


def cache_api(code: Code) -> Check:
    failures = []
    for name in sorted(code.path_to_attention()):
        info = code.analysis.classes[name]
        for fn in info.methods.values():
            for node in walk(fn):
                if (
                    isinstance(node, cst.Call)
                    and last_part(call_name(node)) == "cat"
                    and any(
                        isinstance(s, cst.Subscript) and "past" in (dotted(s.value) or "")
                        for a in node.args
                        for s in walk(a)
                    )
                ):
                    failures.append(code.place(name, node, f"{name}.{fn.name.value} concatenates a tuple cache"))
                    break
    return _result("C4", "the KV cache is the Cache API", failures)


def cache_geometry(code: Code) -> Check:
    """Engines and continuous batching size the KV cache from the config, not from the code."""
    failures = []
    read = {n.attr.value for m in code.modules.values() for n in walk(m) if isinstance(n, cst.Attribute)}
    read |= {n.evaluated_value for m in code.modules.values() for n in walk(m) if isinstance(n, cst.SimpleString)}
    if "num_key_value_heads" in code.config and "num_key_value_heads" not in read:
        failures.append((
            "config.json", None,
            f"declares num_key_value_heads={code.config['num_key_value_heads']} but the code never reads it: "
            "engines size the KV cache from it, but the attention does not use it",
        ))
    return _result("C5", "the config describes the KV cache the code builds", failures)


# -- D: parallel plans ---------------------------------------------------------------------
def _config_class(code: Code) -> str | None:
    name = _class_of(_auto_map(code.config).get("AutoConfig", ""))
    return name if name in code.analysis.classes else None


def _dict_entries(node: cst.BaseExpression | None) -> dict[str, cst.BaseExpression] | None:
    if not isinstance(node, cst.Dict):
        return None
    return {e.key.evaluated_value: e.value for e in node.elements if isinstance(e, cst.DictElement) and isinstance(e.key, cst.SimpleString)}


def _all_self_attributes(code: Code) -> set[str]:
    return {name for cls in code.analysis.classes for name in code.class_attributes(cls)}


def _plan_configs(code: Code, attr: str) -> list[str]:
    """Every config class that declares a non-empty plan, the one `auto_map` names first: a
    composite's towers each carry their own (transformers reads each base model's plan from its
    own config and prefixes it), so each is judged. Empty when none declares one."""
    top = _config_class(code)
    declaring = [n for n in code.analysis.classes if _dict_entries(code.class_attributes(n).get(attr))]
    return sorted(declaring, key=lambda n: (n != top, n))


def _configured_by(code: Code, config: str) -> list[str]:
    """Base models whose `config_class` is `config` (all of them when none says)."""
    from porter.parallel import _declared_config  # the analysis imports transforms, which import porter.parallel

    own = [b for b in sorted(code.analysis.base_models) if _declared_config(code.analysis, b) == config]
    return own or sorted(code.analysis.base_models)


def _no_plan_place(code: Code) -> tuple[str, int | None]:
    top = _config_class(code)
    return code.place(top, None, "")[:2] if top else ("config.json", None)


def tensor_parallel_plan(code: Code) -> Check:
    names = _plan_configs(code, "base_model_tp_plan")
    plans = {n: _dict_entries(code.class_attributes(n)["base_model_tp_plan"]) for n in names}
    if not plans and code.config.get("base_model_tp_plan"):
        plans = {None: code.config["base_model_tp_plan"]}
    if not plans:
        return _result("D1", "base_model_tp_plan", [(*_no_plan_place(code), "no base_model_tp_plan: engines cannot shard the model")])
    failures, attributes = [], _all_self_attributes(code)
    for name, plan in plans.items():
        for key, value in plan.items():
            style = value.evaluated_value if isinstance(value, cst.SimpleString) else value
            where = code.place(name, value, "")[:2] if name else ("config.json", None)
            if style not in ENGINE_STYLES and style not in EXPERT_STYLES:  # experts' styles: judged by D4
                failures.append((*where, f"{key}: style {style!r} is not one engines accept"))
            unknown = [part for part in key.split(".") if part != "*" and not part.isdigit() and part not in attributes]
            if unknown:
                failures.append((*where, f"{key}: no module attribute {', '.join(unknown)}"))
    experts = sum(1 for plan in plans.values() for v in plan.values()
                  if (v.evaluated_value if isinstance(v, cst.SimpleString) else v) in EXPERT_STYLES)
    note = f"; {experts} entries in transformers' expert styles (D4), left whole by engines that do not apply them" if experts else ""
    return _result("D1", "base_model_tp_plan", failures, f"declared in {', '.join(n or 'config.json' for n in plans)}{note}")


def pipeline_plan(code: Code) -> Check:
    names = _plan_configs(code, "base_model_pp_plan")
    if not names:
        return _result("D3", "base_model_pp_plan", [(*_no_plan_place(code), "no base_model_pp_plan")])
    failures = []
    for name in names:
        plan = _dict_entries(code.class_attributes(name)["base_model_pp_plan"])
        for base in _configured_by(code, name):
            children = code.class_attributes(base)
            layer_lists = {a for owner in code.lineage(base) for a in code.analysis.classes[owner].layer_lists}
            unknown = [k for k in plan if k not in children]
            if unknown:
                failures.append(code.place(base, None, f"{base} has no child {', '.join(unknown)} named in the plan of {name}"))
            if len(set(plan) & layer_lists) != 1:
                failures.append(code.place(base, None, f"the plan of {name} must name exactly one ModuleList of layers of {base}"))
    return _result("D3", "base_model_pp_plan", failures, f"declared in {', '.join(names)}")


def experts_plan(code: Code) -> Check:
    from porter.parallel import _packed_experts_weight, infer_plans
    from porter.verify.sharded import experts_check, packed_experts_check

    holders = sorted(n for n in code.analysis.classes if "experts" in code.class_attributes(n))
    packed = sorted(n for n in code.analysis.classes if _packed_experts_weight(code.analysis, n))
    if not holders and not packed:
        return Check("D4", "mixture-of-experts plan", SKIP, "does not apply: no experts module")
    file, line, _ = code.place((holders or packed)[0], None, "")
    # The experts and router come from the data flow; the plan judged is the one declared.
    inferred = infer_plans(code.analysis)
    name = _config_class(code)
    declared = _dict_entries(code.class_attributes(name).get("base_model_tp_plan")) if name else None
    styles = {k: v.evaluated_value for k, v in (declared or {}).items() if isinstance(v, cst.SimpleString)}
    found = inferred.experts or inferred.packed_experts
    if not found or not styles:
        why = "no base_model_tp_plan" if found else "the experts' router and projections were not recognised"
        return Check("D4", "mixture-of-experts plan", SKIP, f"{(holders or packed)[0]} holds experts; {why}",
                     file=file, line=line)
    judge = experts_check if inferred.experts else packed_experts_check
    check = judge({**inferred.as_dict(), "tp_plan": styles})
    return Check("D4", check.name, check.status, check.detail, check.figures, file=file, line=line)


# -- E: multimodal -------------------------------------------------------------------------
def multimodal(code: Code) -> list[Check]:
    config = code.config
    if not (config.get("vision_config") or "image_token_id" in config or "image_token_index" in config):
        return [Check("E1-E4", "multimodal contract", SKIP, "does not apply: not a multimodal model")]
    checks = []
    aliases = _attribute_map(code, _class_of(_auto_map(config).get("AutoConfig", "")))
    missing = [k for k in ("text_config", "vision_config", "image_token_id") if k not in config and k not in aliases]
    checks.append(_result("E3", "config nests text_config, vision_config, image_token_id",
                          [("config.json", None, f"no {k}") for k in missing]))
    failures, features = [], []
    for base in _multimodal_bases(code):
        if "language_model" not in code.class_attributes(base):
            failures.append(code.place(base, None, f"{base} has no language_model"))
        if code.method(base, "get_image_features")[1] is None:
            features.append(code.place(base, None, f"{base} has no get_image_features"))
    checks.append(_result("E1", "base model fuses modalities and holds language_model", failures))
    checks.append(_result("E2", "get_image_features on the base model", features))
    processors = [f for f, m in code.modules.items() if f.startswith("processing_")]
    has_counter = any("_get_num_multimodal_tokens" in code.modules[f].code for f in processors)
    checks.append(_result("E4", "processor reports multimodal token counts",
                          [] if has_counter else [(None, None, "no processor defines _get_num_multimodal_tokens")]))
    return checks


def _multimodal_bases(code: Code) -> list[str]:
    """The class engines build with AutoModel (the base model that fuses the modalities),
    else the text-only base models the analysis found."""
    target = _class_of(_auto_map(code.config).get("AutoModel", ""))
    return [target] if target in code.analysis.classes else sorted(code.analysis.base_models)


def _fuses_modalities(code: Code, name: str) -> bool:
    """A composite base model: it holds a base model as `language_model` (CONTRACT E1)."""
    held = code.analysis.classes[name].children.get("language_model")
    return held in code.analysis.base_models


def _attribute_map(code: Code, config_class: str) -> set[str]:
    """Names a config class answers through `attribute_map` (`image_token_id` -> `image_token_index`)."""
    if config_class not in code.analysis.classes:
        return set()
    mapping = code.class_attributes(config_class).get("attribute_map")
    if not isinstance(mapping, cst.Dict):
        return set()
    return {e.key.evaluated_value for e in mapping.elements
            if isinstance(e, cst.DictElement) and isinstance(e.key, cst.SimpleString)}


def static_checks(code: Code) -> list[Check]:
    """Every static check, in contract order."""
    checks = [
        config_entries(code),
        generation_and_init(code),
        interface_routing(code),
        eager_function(code),
        module_attributes(code),
        backend_flags(code),
        mask_building(code),
        kwargs_flow(code),
        base_model_entry(code),
        positions_from_ids(code),
        cache_api(code),
        cache_geometry(code),
        tensor_parallel_plan(code),
        Check("D2", "sharded run equals the unsharded one", SKIP, "proven by a two-process tensor-parallel run, not by check"),
        pipeline_plan(code),
        experts_plan(code),
    ]
    return checks + multimodal(code)
