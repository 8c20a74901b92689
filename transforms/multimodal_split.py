"""A base model that fuses modalities, and a generative class with the head (CONTRACT E1).

Engines build the base model of a vision-language repo (`AutoModel`), call it to get
hidden states, and apply the head themselves; they reach the text tower as
`model.language_model`. Legacy composite classes hold the text model *with* its head
(`self.language_model = TextForCausalLM(config.text_config)`) next to the vision tower and
call it for logits. Recognised by pattern: a pretrained class that holds a head class of
the repo (one holding a base model and an output `nn.Linear`) and whose forward calls it
once as `outputs = self.<lm>(...)`. It is split in two:

- `<Prefix>Model` (new): the same `__init__` with the text *base* model in place of the
  head (`TextModel._from_config(...)`), the forward up to the language-model call, which it
  returns, `get_image_features` and the other helpers;
- the class itself keeps its name (the `auto_map` entry) and becomes the head:
  `self.model = <Prefix>Model(config)` and the output projection copied from the text head
  (built from the nested config); its forward calls `self.model(...)` with every argument,
  computes the logits as the text head did, and runs the legacy code that followed.

Checkpoint names follow (`language_model.model.x` -> `model.language_model.x`,
`language_model.lm_head.x` -> `lm_head.x`, `vision_tower.x` -> `model.vision_tower.x`),
as rename weight ops, checked bit for bit by the conversion. `config.json` maps
`AutoModel` to the new class.

The text head's logits statements may branch (`if self.config.pretraining_tp > 1: <sliced
projection> else: logits = self.lm_head(h)`): in the head, `self.config` reads the nested
text config and `self.<x>` that the text head set from its config reads it there; the
module-level names they use are imported.

Left alone (the E1 check of the verification then reports it): code after the
language-model call that reads anything the fusion recomputed besides the outputs (llava
before 4.47 merged the attention mask and labels with the image features and reused them
for the loss, until multimodal_merge.py, which runs first, leaves them the caller's own),
a text head whose logits need more than its projection, or a base-model attribute name
other than `model`.
"""

from __future__ import annotations

import builtins
import re

import libcst as cst
import libcst.matchers as m
from libcst.codemod.visitors import AddImportsVisitor

from transforms.base import Transform
from transforms.cst_utils import (
    SharingTransformer,
    assigned_names,
    code_of,
    dotted,
    free_names,
    function_defs,
    is_self_attr,
    last_part,
    names_loaded,
    names_read,
    param_names,
    parse_stmts,
    single_assign,
    star_kwargs_name,
    walk,
)

FACTORIES = {"_from_config", "from_config"}
HEAD_SUFFIXES = ("ForConditionalGeneration", "ForCausalLM", "ForVision2Seq", "LMHeadModel")
DROPPED_FROM_BASE = {"get_output_embeddings", "set_output_embeddings", "tie_weights", "get_decoder", "set_decoder",
                     "prepare_inputs_for_generation", "_reorder_cache", "resize_token_embeddings"}


class SplitBaseAndHead(Transform):
    name = "multimodal-split"
    summary = "Split a composite class holding a text head into a fusing base model and a head class."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        candidates = {n for n in analysis.pretrained if analysis.classes[n].file == self.filename}
        plans = {}
        for stmt in tree.body:
            if isinstance(stmt, cst.ClassDef) and stmt.name.value in candidates:
                plan = _plan(analysis, analysis.classes[stmt.name.value], stmt)
                if plan is not None:
                    plans[stmt.name.value] = plan
        if not plans:
            return tree
        body = []
        for stmt in tree.body:
            if isinstance(stmt, cst.ClassDef) and stmt.name.value in plans:
                plan = plans[stmt.name.value]
                base, head = self._split(stmt, plan)
                body += [base, head]
            else:
                body.append(stmt)
        return _import_beside(tree.with_changes(body=body), {p["text_head"]: p["text_base"] for p in plans.values()})

    def _split(self, cls: cst.ClassDef, plan: dict):
        base_name = plan["base_name"]
        lm, text_base = plan["lm"], plan["text_base"]
        methods = function_defs(cls)
        init, forward = methods["__init__"], methods["forward"]

        # -- the base model ------------------------------------------------------------------
        base_init = init.deep_replace(plan["lm_call_func"], _replace_class(plan["lm_call_func"], text_base))
        base_forward_body = [*plan["pre"], _as_return(plan["call_stmt"])]
        base_forward = forward.with_changes(
            params=_without_param(forward.params, "labels"),
            body=forward.body.with_changes(body=base_forward_body),
        )
        members = []
        for member in cls.body.body:
            if member is init:
                members.append(base_init)
            elif member is forward:
                members.append(base_forward)
            elif isinstance(member, cst.FunctionDef) and member.name.value in DROPPED_FROM_BASE:
                continue
            else:
                members.append(member)
        members += parse_stmts(f"def get_decoder(self):\n    return self.{lm}\n")
        base = cls.with_changes(name=cst.Name(base_name), body=cls.body.with_changes(body=_spaced(members)))

        # -- the head ------------------------------------------------------------------------
        kwargs = star_kwargs_name(forward)
        passed = [p for p in param_names(forward)[1:] if p != "labels"]
        arguments = [*(f"{p}={p}" for p in passed), *([f"**{kwargs}"] if kwargs else [])]
        call = f"{plan['out']} = self.model(\n" + "".join(f"    {a},\n" for a in arguments) + ")\n"
        first = forward.body.body[0] if forward.body.body else None
        docstring = [first] if m.matches(first, m.SimpleStatementLine(body=[m.Expr(value=m.SimpleString())])) else []
        # kept on both: decorators such as `replace_return_docstrings` edit the docstring
        head_forward_body = [*docstring, *plan["defaults"], *parse_stmts(call), *plan["logits"], *plan["post"]]
        head_forward = forward.with_changes(body=forward.body.with_changes(body=head_forward_body))
        head_init = parse_stmts(
            "def __init__(self, config):\n"
            "    super().__init__(config)\n"
            f"    self.model = {base_name}(config)\n"
            f"    {plan['projection']}\n"
            "    self.post_init()\n"
        )[0]
        helpers = parse_stmts(
            "def get_input_embeddings(self):\n    return self.model.get_input_embeddings()\n\n"
            "def set_input_embeddings(self, value):\n    self.model.set_input_embeddings(value)\n\n"
            f"def get_output_embeddings(self):\n    return self.{plan['projection_attr']}\n\n"
            "def get_decoder(self):\n    return self.model.get_decoder()\n\n"
            "def get_image_features(self, pixel_values, **kwargs):\n"
            "    return self.model.get_image_features(pixel_values, **kwargs)\n"
        )
        if "get_image_features" not in function_defs(cls):
            helpers = helpers[:-1]
        kept = [m for m in cls.body.body if isinstance(m, cst.FunctionDef) and m.name.value in
                ("prepare_inputs_for_generation", "_reorder_cache")]
        head_members = [head_init, *helpers, *kept, head_forward]
        bases = list(cls.bases)
        if not any(code_of(b.value) == "GenerationMixin" for b in bases):
            # The head is the generative class now (CONTRACT A3); generation.py adds the same.
            bases.append(cst.Arg(value=cst.Name("GenerationMixin")))
            AddImportsVisitor.add_needed_import(self.context, "transformers.generation", "GenerationMixin")
        head = cls.with_changes(bases=bases, body=cls.body.with_changes(body=_spaced(head_members)), leading_lines=[
            cst.EmptyLine(indent=False), cst.EmptyLine(indent=False)])

        for module, obj, asname, relative in plan["logits_imports"]:
            AddImportsVisitor.add_needed_import(self.context, module, obj, asname, relative)
        self.state.weight_ops.extend(plan["weight_ops"])
        self.state.facts.setdefault("auto_map", {})["AutoModel"] = f"{self.filename.removesuffix('.py')}.{base_name}"
        self.record(cls, f"{base_name}: base model fusing the modalities, with `{lm}` the text base model {text_base}")
        self.record(cls, f"{cls.name.value}: head on {base_name} ({plan['projection_attr']}); checkpoint names moved")
        return base, head


def _plan(analysis, info, current: cst.ClassDef) -> dict | None:
    """Everything the split needs, or None when the class is not of this shape. Roles come
    from the analysis of the input; code from `current`, the class as earlier transforms left it."""
    methods = function_defs(current)
    init, forward = methods.get("__init__"), methods.get("forward")
    if init is None or forward is None:
        return None
    heads = {a: c for a, c in info.children.items() if c in analysis.heads}
    if len(heads) != 1:
        return None
    lm, text_head = next(iter(heads.items()))
    head_info = analysis.classes[text_head]
    base_attr = analysis.heads[text_head]
    text_base = head_info.children.get(base_attr)
    root = next((a for a in [info.name, *analysis.ancestors(info.name)] if a in analysis.pretrained_roots), None)
    if text_base is None or base_attr != "model" or _prefix(analysis, root) != "model":
        return None
    lm_call_func = _construction(init, lm)
    projection = _projection(head_info)
    logits = _logits_statements(head_info, base_attr, analysis.modules)
    split = _split_forward(forward, lm)
    if lm_call_func is None or projection is None or logits is None or split is None:
        return None
    projection_attr, projection_code = projection
    config_arg = _config_argument(init, lm)
    projection_code = _with_config(projection_code, config_arg)
    logits, logits_imports = logits
    if any(is_self_attr(n) for s in logits for n in walk(s) if not is_self_attr(n, projection_attr)):
        if not config_arg.startswith("config."):
            return None
        rewrite = _OnTextConfig(config_arg, _set_from_config(head_info.methods["__init__"]))
        logits = [s.visit(rewrite) for s in logits]
    pre, call_stmt, out, post, defaults = split
    ops = [
        {"kind": "rename", "source": rf"^{re.escape(lm)}\.{re.escape(base_attr)}\.(.*)$", "targets": [f"model.{lm}.\\1"]},
        {"kind": "rename", "source": rf"^{re.escape(lm)}\.{re.escape(projection_attr)}\.(.*)$", "targets": [f"{projection_attr}.\\1"]},
        # every other tensor (vision tower, projector) belongs to the base model now
        {"kind": "rename", "source": rf"^(?!{re.escape(lm)}\.)(.*)$", "targets": ["model.\\1"]},
    ]
    name = info.name
    suffix = next((s for s in HEAD_SUFFIXES if name.endswith(s)), None)
    base_name = (name[: -len(suffix)] if suffix else name) + "Model"
    if base_name in analysis.classes:
        return None
    logits = [s.visit(_Rename({"outputs": out})) for s in logits] if out != "outputs" else logits
    post = [s.visit(_LogitsOfOutputs(out)) for s in post]
    post = [s for s in post if not _self_assignment(s)]  # `logits = outputs.logits` became `logits = logits`
    return {
        "lm": lm, "text_base": text_base, "lm_call_func": lm_call_func, "pre": pre, "call_stmt": call_stmt,
        "out": out, "post": post, "defaults": defaults, "logits": logits, "projection": projection_code,
        "projection_attr": projection_attr, "base_name": base_name, "weight_ops": [_op(o) for o in ops],
        "text_head": text_head, "logits_imports": logits_imports,
    }


def _op(spec: dict):
    from porter.weights import WeightOp

    return WeightOp(spec["kind"], spec["source"], tuple(spec["targets"]))


def _prefix(analysis, root: str | None) -> str | None:
    if root is None:
        return None
    for stmt in analysis.classes[root].node.body.body:
        assign = single_assign(stmt)
        if assign and code_of(assign[0][0]) == "base_model_prefix" and isinstance(assign[1], cst.SimpleString):
            return assign[1].evaluated_value
    return None


def _construction(init: cst.FunctionDef, attr: str) -> cst.BaseExpression | None:
    """The class reference in `self.<attr> = Cls(...)` / `Cls._from_config(...)`."""
    for node in walk(init):
        if isinstance(node, cst.Assign) and is_self_attr(node.targets[0].target, attr) and isinstance(node.value, cst.Call):
            func = node.value.func
            if isinstance(func, cst.Attribute) and func.attr.value in FACTORIES:
                return func.value
            return func
    return None


def _config_argument(init: cst.FunctionDef, attr: str) -> str:
    for node in walk(init):
        if isinstance(node, cst.Assign) and is_self_attr(node.targets[0].target, attr) and isinstance(node.value, cst.Call):
            if node.value.args:
                return code_of(node.value.args[0].value)
    return "config"


def _replace_class(func: cst.BaseExpression, new: str) -> cst.BaseExpression:
    return cst.Name(new) if isinstance(func, cst.Name) else func.with_changes(value=cst.Name(new))


def _projection(head) -> tuple[str, str] | None:
    """(`lm_head`, `self.lm_head = nn.Linear(...)`): the head's one own `nn.Linear`."""
    found = []
    for node in walk(head.methods["__init__"]):
        if isinstance(node, cst.SimpleStatementLine):
            assign = single_assign(node)
            if assign and is_self_attr(assign[0][0]) and isinstance(assign[1], cst.Call) and last_part(dotted(assign[1].func)) == "Linear":
                found.append((assign[0][0].attr.value, code_of(node.with_changes(leading_lines=[])).strip()))
    return found[0] if len(found) == 1 else None


def _with_config(code: str, config_expression: str) -> str:
    return code_of(parse_stmts(code + "\n")[0].visit(_Rename({"config": config_expression}))).strip()


def _logits_statements(head, base_attr: str, modules: dict):
    """The text head's statements from its base-model output to the logits (`hidden = outputs[0];
    logits = self.lm_head(hidden); logits = logits.float()`)."""
    forward = head.methods.get("forward")
    if forward is None:
        return None
    module = modules.get(head.file)
    body = list(forward.body.body)
    call_index = next(
        (i for i, s in enumerate(body) if any(isinstance(n, cst.Call) and is_self_attr(n.func, base_attr) for n in walk(s))),
        None,
    )
    if call_index is None or assigned_names(body[call_index]) != {"outputs"}:
        return None
    taken = []
    module_names = _module_bindings(module)
    used_globals: set[str] = set()
    for stmt in body[call_index + 1 :]:
        bound = {"outputs", "self", *_names(taken)}
        if isinstance(stmt, cst.SimpleStatementLine):
            if not assigned_names(stmt) or names_loaded(stmt) - bound:
                break
        elif _assigning_branches(stmt):
            # `if self.config.pretraining_tp > 1: <sliced projection> else: logits = self.lm_head(h)`
            free, _ = free_names([stmt], bound)
            free -= set(dir(builtins)) | {n for c in walk(stmt) if isinstance(c, cst.CompFor) for n in names_read(c.target)}
            if free - set(module_names):
                break
            used_globals |= free
        else:
            break
        taken.append(stmt)
    last = max((i for i, s in enumerate(taken) if "logits" in _names([s])), default=None)
    if last is None:
        return None
    imports = [module_names[n] for n in sorted(used_globals) if module_names[n] is not None]
    if len(imports) != len(used_globals):
        return None  # a class or function of the head's own file: not importable from here by name
    return [s.with_changes(leading_lines=[]) for s in taken[: last + 1]], imports


def _assigning_branches(stmt) -> bool:
    """An `if`/`elif`/`else` whose arms only assign (no return, no loop)."""
    if not isinstance(stmt, cst.If):
        return False
    arms = [stmt.body]
    orelse = stmt.orelse
    while orelse is not None:
        arms.append(orelse.body)
        orelse = orelse.orelse if isinstance(orelse, cst.If) else None
    return all(
        isinstance(line, cst.SimpleStatementLine) and all(isinstance(small, (cst.Assign, cst.AugAssign)) for small in line.body)
        for arm in arms for line in arm.body
    )


def _module_bindings(module: cst.Module | None) -> dict[str, tuple | None]:
    """Module-level names -> how to import them (`(module, obj, asname, relative)`), None for
    names the file defines itself."""
    found: dict[str, tuple | None] = {}
    for stmt in module.body if module is not None else []:
        if isinstance(stmt, (cst.FunctionDef, cst.ClassDef)):
            found[stmt.name.value] = None
        elif isinstance(stmt, cst.SimpleStatementLine):
            for small in stmt.body:
                if isinstance(small, cst.Import):
                    for alias in small.names:
                        full = code_of(alias.name)
                        name = alias.asname.name.value if alias.asname else full.split(".")[0]
                        found[name] = (full, None, alias.asname.name.value if alias.asname else None, 0)
                elif isinstance(small, cst.ImportFrom) and not isinstance(small.names, cst.ImportStar):
                    source = code_of(small.module) if small.module is not None else ""
                    for alias in small.names:
                        name = alias.asname.name.value if alias.asname else code_of(alias.name)
                        asname = alias.asname.name.value if alias.asname else None
                        found[name] = (source, code_of(alias.name), asname, len(small.relative))
                else:
                    for name in assigned_names(stmt):
                        found[name] = None
    return found


def _names(stmts) -> set[str]:
    return set().union(*(_assigned_anywhere(s) | assigned_names(s) for s in stmts)) if stmts else set()


class _OnTextConfig(SharingTransformer):
    """In the text head's logits code, moved to the composite head: `self.config` is the
    nested text config, and `self.<x>` that the text head set from its config reads it there."""

    def __init__(self, text_config: str, from_config: dict[str, str]):
        self.text_config = text_config
        self.from_config = from_config

    def leave_Attribute(self, original, updated):
        if is_self_attr(original, "config"):
            return cst.parse_expression(f"self.{self.text_config}")
        if is_self_attr(original) and original.attr.value in self.from_config:
            return cst.parse_expression(f"self.{self.text_config}.{self.from_config[original.attr.value]}")
        return updated


def _set_from_config(init: cst.FunctionDef) -> dict[str, str]:
    """`self.vocab_size = config.vocab_size` in the text head's `__init__` -> {vocab_size: vocab_size}."""
    found = {}
    for node in walk(init):
        if isinstance(node, cst.SimpleStatementLine):
            assign = single_assign(node)
            if assign and is_self_attr(assign[0][0]) and (dotted(assign[1]) or "").startswith("config."):
                found[assign[0][0].attr.value] = dotted(assign[1]).removeprefix("config.")
    return found


def _split_forward(forward: cst.FunctionDef, lm: str):
    body = list(forward.body.body)
    index = next(
        (i for i, s in enumerate(body) if any(isinstance(n, cst.Call) and is_self_attr(n.func, lm) for n in walk(s))),
        None,
    )
    if index is None or not isinstance(body[index], cst.SimpleStatementLine):
        return None
    assign = single_assign(body[index])
    if not assign or not isinstance(assign[0][0], cst.Name) or not isinstance(assign[1], cst.Call):
        return None
    out = assign[0][0].value
    pre, post = body[:index], body[index + 1 :]
    defaults = [s for s in pre if _is_default(s)]
    recomputed = set().union(*(_assigned_anywhere(s) for s in pre if s not in defaults)) if pre else set()
    if set().union(*(names_loaded(s) for s in post)) & recomputed:
        return None  # the code after the call reads what the fusion recomputed (a merged mask)
    call = assign[1]
    args = [a for a in call.args if not (a.keyword and a.keyword.value == "labels")]
    call_stmt = body[index].deep_replace(call, call.with_changes(args=args))
    return pre, call_stmt, out, post, defaults


def _is_default(stmt) -> bool:
    names = assigned_names(stmt)
    return len(names) == 1 and names_read(stmt) <= {*names, "self", "None"}


def _assigned_anywhere(stmt) -> set[str]:
    return {n for node in walk(stmt) if isinstance(node, cst.SimpleStatementLine) for n in assigned_names(node)}


def _as_return(stmt: cst.SimpleStatementLine) -> cst.SimpleStatementLine:
    value = single_assign(stmt)[1]
    return stmt.with_changes(body=[cst.Return(value=value)])


def _without_param(params: cst.Parameters, name: str) -> cst.Parameters:
    return params.with_changes(params=[p for p in params.params if p.name.value != name])


def _self_assignment(stmt) -> bool:
    assign = single_assign(stmt)
    return bool(assign) and code_of(assign[0][0]) == code_of(assign[1])


def _import_beside(tree: cst.Module, wanted: dict[str, str]) -> cst.Module:
    """Import each text base model next to the import of its head (`from .m import Head, Base`)."""

    class _AddAlias(SharingTransformer):
        def leave_ImportFrom(self, original, updated):
            if isinstance(updated.names, cst.ImportStar):
                return updated
            present = {code_of(a.name) for a in updated.names}
            extra = [wanted[n] for n in present if n in wanted and wanted[n] not in present]
            if not extra:
                return updated
            names = [*updated.names[:-1], updated.names[-1].with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))]
            names += [cst.ImportAlias(name=cst.Name(n)) for n in extra]
            return updated.with_changes(names=names)

    defined = {s.name.value for s in tree.body if isinstance(s, cst.ClassDef)}
    if set(wanted.values()) <= defined:
        return tree
    return tree.visit(_AddAlias())


def _spaced(members):
    return [m.with_changes(leading_lines=[cst.EmptyLine(indent=False)]) if i and isinstance(m, cst.FunctionDef) else m
            for i, m in enumerate(members)]


class _Rename(SharingTransformer):
    def __init__(self, names: dict[str, str]):
        self.names = names

    def leave_Attribute(self, original, updated):
        return updated.with_changes(attr=original.attr)

    def leave_Arg(self, original, updated):
        return updated.with_changes(keyword=original.keyword)

    def leave_Name(self, original, updated):
        if updated.value in self.names:
            return cst.parse_expression(self.names[updated.value])
        return updated


class _LogitsOfOutputs(SharingTransformer):
    """`outputs.logits` / `outputs[0]` -> `logits`: the base model returns hidden states."""

    def __init__(self, out: str):
        self.out = out

    def leave_Attribute(self, original, updated):
        if dotted(updated) == f"{self.out}.logits":
            return cst.Name("logits")
        return updated

    def leave_Subscript(self, original, updated):
        if dotted(updated.value) == self.out and code_of(updated).replace(" ", "") == f"{self.out}[0]":
            return cst.Name("logits")
        return updated
