"""Image features scattered into placeholders the processor expanded (CONTRACT E1, E2, E4).

Engines must know, before they run the model, how many tokens an image becomes: the
prompt they schedule has one placeholder token per image feature row. Legacy
vision-language models of the llava family write *one* placeholder per image and build
new, longer sequences inside forward: a helper method takes the image features, the text
embeddings and `input_ids`, allocates sequences of the merged length (`torch.zeros`,
`torch.full`...) where the placeholder token (`input_ids == self.config.<image>_token_...`)
was, and returns new embeddings with the mask, labels and positions that go with them.

Recognised by pattern: a forward statement `embeds, ... = self.<helper>(features, embeds,
input_ids, ...)` where `features` came from `self.get_image_features(...)` (see
multimodal_features.py, which runs first) and `<helper>` is a method of the class that
compares token ids with an image token and allocates a new tensor. It becomes what
transformers 5's in-library vision-language models do:

    special_image_mask = self.get_placeholder_mask(input_ids, inputs_embeds=..., image_features=...)
    inputs_embeds = inputs_embeds.masked_scatter(special_image_mask, image_features...)

with a new `get_placeholder_mask` (the placeholder positions; an error when their count
differs from the feature rows). The helper is removed; the mask, labels and positions it
returned are the caller's own, already as long as the expanded prompt. Positions the helper
numbered from the mask are numbered the same way when the caller gives none. A sibling
branch that lengthened the mask at decoding steps for the tokens the helper had added
(`elif past_key_values is not None ...: attention_mask = torch.cat(...)`) goes with it, and
so does a `prepare_inputs_for_generation` of the class that reads the image token (it
trimmed prompts the model had expanded): GenerationMixin's own slices by the cache, numbers
positions from the mask and passes `pixel_values` at prefill only.

The processor must now expand each placeholder (multimodal_placeholders.py): this
transform leaves what that needs in `facts["placeholders"]` (the image token's config key,
the features the selection drops, the tokens the vision tower adds to its patches).
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from transforms.base import Transform
from transforms.cst_utils import (
    SharingTransformer,
    assigned_names,
    code_of,
    dotted,
    function_defs,
    is_self_attr,
    names_read,
    param_names,
    parse_stmts,
    single_assign,
    walk,
)

FEATURES_METHOD = "get_image_features"
MASK_METHOD = "get_placeholder_mask"
ALLOCATORS = {"zeros", "full", "empty", "ones", "zeros_like", "full_like"}
MASK_NAME = "special_image_mask"


class ScatterIntoPlaceholders(Transform):
    name = "multimodal-merge"
    summary = "Replace a merge that builds longer sequences in forward with masked_scatter into expanded placeholders."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        targets = {
            n for n in analysis.pretrained
            if analysis.classes[n].file == self.filename and MASK_METHOD not in analysis.classes[n].methods
        }
        return self.rewrite_classes(tree, targets, self._rewrite) if targets else tree

    def _rewrite(self, cls: cst.ClassDef) -> cst.ClassDef:
        methods = function_defs(cls)
        forward, features_method = methods.get("forward"), methods.get(FEATURES_METHOD)
        if forward is None or features_method is None:
            return cls
        found = _merge_call(forward, methods)
        if found is None:
            return cls
        stmt, helper, targets, args = found
        features, embeds = args["features"], args["embeds"]
        token = _image_token(helper, "input_ids")
        if token is None:
            self.refuse(stmt, f"{helper.name.value} does not compare `{args['ids']}` with one image token", cls.name.value)
            return cls
        if embeds not in targets:
            self.refuse(stmt, f"{helper.name.value} does not return new `{embeds}`", cls.name.value)
            return cls
        replacement = parse_stmts(
            f"{MASK_NAME} = self.{MASK_METHOD}({args['ids']}, inputs_embeds={embeds}, image_features={features})\n"
            f"{embeds} = {embeds}.masked_scatter({MASK_NAME}, {features}.to({embeds}.device, {embeds}.dtype))\n"
        )
        if "position_ids" in targets and "attention_mask" in targets:
            # the helper numbered positions from the (merged) mask; an engine's own positions win
            replacement += parse_stmts(
                "if position_ids is None and attention_mask is not None:\n"
                "    position_ids = (attention_mask.cumsum(-1) - 1).masked_fill_(attention_mask == 0, 1)\n"
            )
        replacement[0] = replacement[0].with_changes(leading_lines=stmt.leading_lines)
        new_forward = _without_decoding_fixups(forward, stmt, set(targets) - {embeds}, replacement)
        mask_method = parse_stmts(_mask_method_code(code_of(token)))[0]
        generation = methods.get("prepare_inputs_for_generation")
        if generation is not None and not _reads(generation, code_of(token)):
            generation = None
        members = []
        for member in cls.body.body:
            if member is helper or member is generation:
                continue
            if member is forward:
                members += [mask_method.with_changes(leading_lines=forward.leading_lines),
                            new_forward.with_changes(leading_lines=[cst.EmptyLine(indent=False)])]
            else:
                members.append(member)
        self.state.facts["placeholders"] = {
            "image_token_key": token.attr.value,
            **_selection(features_method),
            "extra_tokens": _extra_tokens(self.state.analysis.modules),
        }
        self.record(stmt, f"{cls.name.value}: image features scattered into the placeholders the processor expands "
                          f"({helper.name.value} removed, {MASK_METHOD} added)")
        if generation is not None:
            self.record(generation, f"{cls.name.value}.prepare_inputs_for_generation removed: it trimmed prompts the model "
                                    "had expanded; GenerationMixin's passes the pixels at prefill only")
        return cls.with_changes(body=cls.body.with_changes(body=members))


def _merge_call(forward: cst.FunctionDef, methods: dict[str, cst.FunctionDef]):
    """(statement, helper, target names, arguments) of `a, b = self.<helper>(features, embeds, input_ids, ...)`."""
    features = {
        n for node in walk(forward) if isinstance(node, cst.SimpleStatementLine)
        for n in assigned_names(node) if _calls_method(node, FEATURES_METHOD)
    }
    if not features:
        return None
    for node in walk(forward):
        if not isinstance(node, cst.SimpleStatementLine):
            continue
        assign = single_assign(node)
        if not assign or not isinstance(assign[1], cst.Call) or not is_self_attr(assign[1].func):
            continue
        helper = methods.get(assign[1].func.attr.value)
        if helper is None or not _builds_sequences(helper):
            continue
        passed = _arguments(helper, assign[1])
        features_arg = next((p for p, v in passed.items() if v in features), None)
        if features_arg is None:
            continue
        ids = passed.get("input_ids")
        embeds = next((v for p, v in passed.items() if "embed" in p and p != features_arg), None)
        if ids is None or embeds is None:
            continue
        target = assign[0][0]
        names = [code_of(e.value) for e in target.elements] if isinstance(target, cst.Tuple) else [code_of(target)]
        return node, helper, names, {"features": passed[features_arg], "embeds": embeds, "ids": ids}
    return None


def _reads(fn: cst.FunctionDef, expression: str) -> bool:
    return any(isinstance(n, cst.Attribute) and code_of(n) == expression for n in walk(fn))


def _calls_method(stmt, name: str) -> bool:
    return any(isinstance(n, cst.Call) and is_self_attr(n.func, name) for n in walk(stmt))


def _arguments(fn: cst.FunctionDef, call: cst.Call) -> dict[str, str]:
    """Parameter name -> the name passed for it, for plain-name arguments."""
    params = param_names(fn)[1:]
    passed = {}
    for index, arg in enumerate(call.args):
        if not isinstance(arg.value, cst.Name) or arg.star:
            continue
        if arg.keyword is not None:
            passed[arg.keyword.value] = arg.value.value
        elif index < len(params):
            passed[params[index]] = arg.value.value
    return passed


def _builds_sequences(fn: cst.FunctionDef) -> bool:
    """Allocates a new tensor (the merged sequences) and compares token ids with a config token."""
    allocates = any(
        isinstance(n, cst.Call) and (dotted(n.func) or "").split(".")[0] == "torch" and dotted(n.func).split(".")[-1] in ALLOCATORS
        for n in walk(fn)
    )
    return allocates and _image_token(fn, "input_ids") is not None


def _image_token(fn: cst.FunctionDef, ids: str) -> cst.Attribute | None:
    """`self.config.image_token_index` in `input_ids == self.config.image_token_index` (one token only)."""
    found = set()
    nodes = {}
    for node in walk(fn):
        if isinstance(node, cst.Comparison) and len(node.comparisons) == 1:
            other = node.comparisons[0].comparator
            if code_of(node.left) == ids and isinstance(other, cst.Attribute) and _names_image_token(other):
                found.add(code_of(other))
                nodes[code_of(other)] = other
    return nodes[found.pop()] if len(found) == 1 else None


def _names_image_token(node: cst.Attribute) -> bool:
    return m.matches(node.value, m.Attribute(value=m.Name("self"), attr=m.Name("config"))) and (
        "image" in node.attr.value and "token" in node.attr.value
    )


def _without_decoding_fixups(forward, stmt, recomputed: set[str], replacement) -> cst.FunctionDef:
    """Put `replacement` in place of the merge call and drop the `elif` of its `if` that
    rebuilt what the merge made longer (the mask) at decoding steps, reading the cache."""

    class _Rewrite(SharingTransformer):
        def leave_If(self, original, updated):
            if not any(n is stmt for n in walk(original.body)):
                return updated
            orelse = updated.orelse
            while isinstance(orelse, cst.If) and _is_decoding_fixup(orelse, recomputed):
                orelse = orelse.orelse
            return updated.with_changes(orelse=orelse)

        def leave_SimpleStatementLine(self, original, updated):
            return cst.FlattenSentinel(replacement) if original is stmt else updated

    return forward.visit(_Rewrite())


def _is_decoding_fixup(branch: cst.If, recomputed: set[str]) -> bool:
    assigned = {n for node in walk(branch.body) if isinstance(node, cst.SimpleStatementLine) for n in assigned_names(node)}
    return "past_key_values" in names_read(branch.test) and bool(assigned & recomputed & {"attention_mask"})


def _selection(features_method: cst.FunctionDef) -> dict:
    """Feature rows `get_image_features` drops from the vision tower's sequence:
    `if <option> == "<value>": x = x[:, K:]` (the option's config key from its default)."""
    for node in walk(features_method):
        if not isinstance(node, cst.If):
            continue
        dropped = _dropped_rows(node.body)
        test = node.test
        if dropped is None or not (isinstance(test, cst.Comparison) and len(test.comparisons) == 1):
            continue
        option, value = test.left, test.comparisons[0].comparator
        if isinstance(option, cst.Name) and isinstance(value, cst.SimpleString) and isinstance(test.comparisons[0].operator, cst.Equal):
            return {"dropped": dropped, "select_key": _config_key(features_method, option.value) or option.value, "select_value": value.evaluated_value}
    return {"dropped": _dropped_rows(features_method.body) or 0}


def _dropped_rows(block) -> int | None:
    for stmt in block.body:
        assign = single_assign(stmt)
        value = assign[1] if assign else None
        if isinstance(value, cst.Subscript) and len(value.slice) == 2:
            first, second = (e.slice for e in value.slice)
            if (isinstance(first, cst.Slice) and first.lower is None and first.upper is None
                    and isinstance(second, cst.Slice) and isinstance(second.lower, cst.Integer) and second.upper is None):
                return int(second.lower.value)
    return None


def _config_key(fn: cst.FunctionDef, option: str) -> str | None:
    """`option = option if option is not None else self.config.<key>` -> key."""
    for node in walk(fn):
        if isinstance(node, cst.SimpleStatementLine) and assigned_names(node) == {option}:
            for sub in walk(node):
                if isinstance(sub, cst.Attribute) and m.matches(sub.value, m.Attribute(value=m.Name("self"), attr=m.Name("config"))):
                    return sub.attr.value
    return None


def _extra_tokens(trees: dict[str, cst.Module]) -> int:
    """Tokens a vision tower adds to one per patch: `num_positions = num_patches + K` (a class token)."""
    found = set()
    for tree in trees.values():
        for node in walk(tree):
            if isinstance(node, cst.Assign) and isinstance(node.value, cst.BinaryOperation) and isinstance(node.value.operator, cst.Add):
                left, right = node.value.left, node.value.right
                if (dotted(left) or "").split(".")[-1] == "num_patches" and isinstance(right, cst.Integer):
                    if "position" in code_of(node.targets[0].target):
                        found.add(int(right.value))
    return found.pop() if len(found) == 1 else 0


def _mask_method_code(token: str) -> str:
    return (
        f"def {MASK_METHOD}(self, input_ids, inputs_embeds, image_features):\n"
        '    """Positions of the image placeholder tokens, one per image feature row."""\n'
        "    if input_ids is None:\n"
        "        placeholder = self.get_input_embeddings()(\n"
        f"            torch.tensor({token}, dtype=torch.long, device=inputs_embeds.device)\n"
        "        )\n"
        f"        {MASK_NAME} = (inputs_embeds == placeholder).all(-1)\n"
        "    else:\n"
        f"        {MASK_NAME} = input_ids == {token}\n"
        f"    n_image_tokens = int({MASK_NAME}.sum())\n"
        "    n_image_features = image_features.shape[:-1].numel()\n"
        "    if n_image_tokens != n_image_features:\n"
        "        raise ValueError(\n"
        '            f"Image features and image tokens do not match: tokens: {n_image_tokens}, features: {n_image_features}"\n'
        "        )\n"
        f"    return {MASK_NAME}.unsqueeze(-1).expand_as(inputs_embeds).to(inputs_embeds.device)\n"
    )
