"""Processor hooks engines call before running the model (CONTRACT E4).

Engines must know how many placeholder tokens each image becomes before they run the
model. A legacy processor (a `ProcessorMixin` subclass) that expands its image
placeholder itself, `" ".join([self.image_token] * n)` or `self.image_token * n`, gets:

- `image_token_id` (and, through `ProcessorMixin`, `image_token_ids`), set at the end of
  `__init__` from the tokenizer; `image_token` when the placeholder attribute has another
  name (`self.img_token`);
- `_get_num_multimodal_tokens(image_sizes=None, **kwargs)` returning `MultiModalData`.
  `num_image_tokens` is computed by the statements that computed `n` in `__call__` (the
  backward slice of `n`, from the statement that reads the image's height and width),
  run for each `(height, width)`: the prediction comes from the processor's own
  arithmetic, not from running it. `num_image_patches` is the number of `pixel_values`
  rows the processor makes for a blank image of that size;
- `return_mm_token_type_ids=True` support in `__call__`: `mm_token_type_ids` (0 text,
  1 image) from `ProcessorMixin.create_mm_token_type_ids` beside `input_ids`.

A processor that never expands a placeholder (the model expands it, as llava before 4.47
did) is left alone: its counts cannot be told from the processor (multimodal_placeholders.py
writes the expansion first where multimodal_merge.py moved it out of the model). An expansion whose
count reads more than the image size and the processor's own attributes is refused.
"""

from __future__ import annotations

import builtins

import libcst as cst
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
    names_read,
    param_names,
    parse_stmts,
    single_assign,
    star_kwargs_name,
    walk,
)

PROCESSOR_BASES = {"ProcessorMixin"}
HOOK = "_get_num_multimodal_tokens"
FLAG = "return_mm_token_type_ids"


class ProcessorHooks(Transform):
    name = "multimodal-processor"
    summary = "Give processors image_token_id, _get_num_multimodal_tokens and mm_token_type_ids."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        targets = {
            n for n, info in analysis.classes.items()
            if info.file == self.filename and PROCESSOR_BASES & set(info.bases) and HOOK not in info.methods
        }
        return self.rewrite_classes(tree, targets, self._rewrite) if targets else tree

    def _rewrite(self, cls: cst.ClassDef) -> cst.ClassDef:
        methods = function_defs(cls)
        init, call = methods.get("__init__"), methods.get("__call__")
        if init is None or call is None:
            return cls
        token_attr = _placeholder_attribute(init)
        expansion = _expansion(call, token_attr) if token_attr else None
        if expansion is None:
            return cls  # the processor does not expand placeholders: nothing to predict from
        block, index, count = expansion
        try:
            sizes, slice_stmts = _count_slice(block, index, count)
        except ValueError as exc:
            self.refuse(block.body[index], str(exc), cls.name.value)
            return cls
        returns = _feature_returns(call)
        if not returns:
            self.refuse(call, "__call__ does not return `BatchFeature(data=<dict>)`", cls.name.value)
            return cls

        new_init = _with_token_ids(init, token_attr)
        new_call = _with_type_ids(call, returns)
        hook = _hook_method(sizes, slice_stmts, count, token_attr)
        AddImportsVisitor.add_needed_import(self.context, "transformers.processing_utils", "MultiModalData")
        AddImportsVisitor.add_needed_import(self.context, "numpy", asname="np")
        AddImportsVisitor.add_needed_import(self.context, "torch")
        members = []
        for member in cls.body.body:
            if member is init:
                members.append(new_init)
            elif member is call:
                members += [new_call, hook.with_changes(leading_lines=[cst.EmptyLine(indent=False)])]
            else:
                members.append(member)
        self.record(call, f"{cls.name.value}: image_token_id, {HOOK} (counts from __call__'s own arithmetic), {FLAG}")
        return cls.with_changes(body=cls.body.with_changes(body=members))


def _placeholder_attribute(init: cst.FunctionDef) -> str | None:
    """`self.image_token = ...` (or `self.img_token`): the attribute holding the placeholder."""
    for node in walk(init):
        if isinstance(node, cst.AssignTarget) and is_self_attr(node.target):
            name = node.target.attr.value
            if name in ("image_token", "img_token") or (name.endswith("_token") and "image" in name):
                return name
    return None


def _is_placeholder(node: cst.BaseExpression, attr: str) -> bool:
    if isinstance(node, cst.List) and len(node.elements) == 1:
        node = node.elements[0].value
    return is_self_attr(node) and node.attr.value == attr


def _expansion(call: cst.FunctionDef, attr: str):
    """(block, statement index, count expression) of `[self.image_token] * n` in __call__."""
    for block in (n for n in walk(call) if isinstance(n, cst.IndentedBlock)):
        for index, stmt in enumerate(block.body):
            if not isinstance(stmt, cst.SimpleStatementLine):
                continue
            for node in walk(stmt):
                if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Multiply):
                    if _is_placeholder(node.left, attr):
                        return block, index, node.right
                    if _is_placeholder(node.right, attr):
                        return block, index, node.left
    return None


def _size_names(stmt) -> list[str] | None:
    """`height, width = image.shape[-2], image.shape[-1]` (or `image.shape[-2:]`, or
    transformers' `get_image_size(image)`) -> [height, width]."""
    assign = single_assign(stmt)
    if not assign or not isinstance(assign[0][0], cst.Tuple) or len(assign[0][0].elements) != 2:
        return None
    if not any(
        (isinstance(n, cst.Attribute) and n.attr.value in ("shape", "size"))
        or (isinstance(n, cst.Call) and dotted(n.func) == "get_image_size")
        for n in walk(assign[1])
    ):
        return None
    return [code_of(e.value) for e in assign[0][0].elements]


def _count_slice(block: cst.IndentedBlock, index: int, count: cst.BaseExpression):
    """The statements before `index` that compute `count` from the image's height and width."""
    needed = names_read(count) - {"self"}
    chosen: list[int] = []
    sizes = None
    for position in range(index - 1, -1, -1):
        stmt = block.body[position]
        bound = assigned_names(stmt)
        if not bound & needed:
            continue
        found = _size_names(stmt)
        if found:
            sizes = found
            needed -= bound
            continue
        chosen.append(position)
        needed = (needed - bound) | (names_read(stmt) - {"self"})
    if sizes is None:
        raise ValueError(f"the placeholder count `{code_of(count)}` is not computed from the image's height and width")
    stmts = [block.body[p] for p in sorted(chosen)]
    free, _ = free_names(stmts, {"self", *sizes})
    free |= names_read(count) - {"self", *sizes, *set().union(*(assigned_names(s) for s in stmts))}
    free -= set(dir(builtins)) | {"math", "np", "torch"}
    if free:
        raise ValueError(f"the placeholder count reads {sorted(free)}, which an image size does not give")
    return sizes, stmts


def _feature_returns(call: cst.FunctionDef) -> list[tuple[cst.Return, str]]:
    """`return BatchFeature(data=x)` / `BatchFeature(data={**x, ...})` -> the dict holding input_ids."""
    found = []
    for node in walk(call):
        if isinstance(node, cst.Return) and isinstance(node.value, cst.Call) and dotted(node.value.func) == "BatchFeature":
            data = next((a.value for a in node.value.args if a.keyword is None or a.keyword.value == "data"), None)
            if isinstance(data, cst.Name):
                found.append((node, data.value))
            elif isinstance(data, cst.Dict) and data.elements and isinstance(data.elements[0], cst.StarredDictElement):
                found.append((node, code_of(data.elements[0].value)))
    return found


def _with_token_ids(init: cst.FunctionDef, attr: str) -> cst.FunctionDef:
    lines = ""
    if attr != "image_token":
        lines += f"self.image_token = self.{attr}\n"
    lines += "self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)\n"
    return init.with_changes(body=init.body.with_changes(body=[*init.body.body, *parse_stmts(lines)]))


def _with_type_ids(call: cst.FunctionDef, returns) -> cst.FunctionDef:
    kwargs = star_kwargs_name(call)
    if FLAG in param_names(call):
        head = []
    elif kwargs:
        head = parse_stmts(f'{FLAG} = {kwargs}.pop("{FLAG}", False)\n')
    else:
        param = cst.Param(name=cst.Name(FLAG), default=cst.Name("False"), equal=cst.AssignEqual())
        call = call.with_changes(params=call.params.with_changes(params=[*call.params.params, param]))
        head = []

    class _BeforeReturns(SharingTransformer):
        def leave_SimpleStatementLine(self, original, updated):
            for ret, data in returns:
                if original.body and original.body[0] is ret:
                    add = parse_stmts(
                        f"if {FLAG}:\n"
                        f'    mm_token_type_ids = self.create_mm_token_type_ids({data}["input_ids"])\n'
                        f'    {data}["mm_token_type_ids"] = (\n'
                        f'        torch.tensor(mm_token_type_ids) if torch.is_tensor({data}["input_ids"]) else mm_token_type_ids\n'
                        f"    )\n"
                    )
                    return cst.FlattenSentinel([*add, updated])
            return updated

    call = call.visit(_BeforeReturns())
    body = list(call.body.body)
    at = 1 if body and isinstance(body[0], cst.SimpleStatementLine) and isinstance(body[0].body[0], cst.Expr) else 0
    return call.with_changes(body=call.body.with_changes(body=[*body[:at], *head, *body[at:]]))


def _hook_method(sizes: list[str], stmts, count, attr: str) -> cst.FunctionDef:
    height, width = sizes
    taken = set(sizes).union(*(assigned_names(s) for s in stmts))
    tokens, patches, blank = (_fresh(n, taken) for n in ("image_token_counts", "image_patch_counts", "blank_image"))
    slice_code = "".join("            " + line + "\n" for s in stmts for line in code_of(s.with_changes(leading_lines=[])).strip("\n").splitlines())
    code = (
        f"def {HOOK}(self, image_sizes=None, **kwargs):\n"
        '    """Placeholder tokens and pixel rows per image, from `(height, width)` sizes, before any image is processed."""\n'
        "    vision_data = {}\n"
        "    if image_sizes is not None:\n"
        f"        {tokens}, {patches} = [], []\n"
        f"        for {height}, {width} in image_sizes:\n"
        f"{slice_code}"
        f"            {tokens}.append(int({code_of(count)}))\n"
        f"            {blank} = np.zeros(({height}, {width}, 3), dtype=np.uint8)\n"
        f'            {patches}.append(len(self(text=self.{attr}, images=[{blank}])["pixel_values"]))\n'
        f"        vision_data.update(num_image_tokens={tokens}, num_image_patches={patches})\n"
        "    return MultiModalData(**vision_data)\n"
    )
    return parse_stmts(code)[0]


def _fresh(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    return name
