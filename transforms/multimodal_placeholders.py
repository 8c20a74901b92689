"""The processor expands each image placeholder into one token per image feature (CONTRACT E4).

When multimodal_merge.py has moved a model from "build longer sequences in forward" to
"scatter features into placeholders", the prompt must hold one placeholder per feature
row, and engines must be able to predict that number from the image size. The repo's
processor (a `ProcessorMixin` subclass that does not expand placeholders itself) gets:

- `__init__` parameters `patch_size`, `num_additional_image_tokens`, the model's
  feature-selection option (e.g. `vision_feature_select_strategy`) and `image_token_index`,
  kept as attributes; `self.image_token` is the tokenizer's token for that id. Their values
  go into `processor_config.json`, read from `config.json` when the port is written
  (`facts["processor_config"]`), as in transformers 5's own processors;
- `_image_feature_tokens(height, width)`: the image processor's own resize/crop arithmetic
  (it is run on a blank image of that size), then one token per `patch_size` patch of the
  processed image, plus the tokens the vision tower adds (a class token, read from its
  `num_positions = num_patches + K`), less the rows the feature selection drops (read from
  `get_image_features`: `if strategy == "default": x = x[:, 1:]`);
- in `__call__`, before the tokenizer runs, each placeholder in the text replaced by
  `self.image_token * n` for its image.

multimodal_processor.py then derives `_get_num_multimodal_tokens`, `image_token_id` and
`mm_token_type_ids` from that expansion, as for any processor that expands placeholders.
A processor whose `__call__` has no `text` and `images` parameters, or does not call its
tokenizer on `text`, is refused.
"""

from __future__ import annotations

import json

import libcst as cst
from libcst.codemod.visitors import AddImportsVisitor

from transforms.base import Transform
from transforms.cst_utils import code_of, function_defs, is_self_attr, param_names, parse_stmts, walk
from transforms.multimodal_processor import HOOK, PROCESSOR_BASES, _expansion, _placeholder_attribute

COUNT_METHOD = "_image_feature_tokens"


class ExpandPlaceholders(Transform):
    name = "multimodal-placeholders"
    summary = "Make the processor expand image placeholders to the model's feature count."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        if "placeholders" not in self.state.facts:
            return tree
        targets = {
            n for n, info in analysis.classes.items()
            if info.file == self.filename and PROCESSOR_BASES & set(info.bases) and HOOK not in info.methods
        }
        return self.rewrite_classes(tree, targets, self._rewrite) if targets else tree

    def _rewrite(self, cls: cst.ClassDef) -> cst.ClassDef:
        facts = self.state.facts["placeholders"]
        methods = function_defs(cls)
        init, call = methods.get("__init__"), methods.get("__call__")
        if init is None or call is None:
            return cls
        token_attr = _placeholder_attribute(init)
        if token_attr and _expansion(call, token_attr):
            return cls  # it expands placeholders already
        if not {"text", "images"} <= set(param_names(call)):
            self.refuse(call, "__call__ has no `text` and `images` parameters to expand placeholders in", cls.name.value)
            return cls
        tokenizer_call = _tokenizer_statement(call)
        if tokenizer_call is None:
            self.refuse(call, "__call__ does not call `self.tokenizer(text, ...)` at its top level", cls.name.value)
            return cls
        select = facts.get("select_key")
        settings = ["patch_size", "num_additional_image_tokens", *([select] if select else []), "image_token_index"]
        new_init = _with_settings(init, settings)
        new_call = _with_expansion(call, tokenizer_call)
        count = parse_stmts(_count_method(facts))[0]
        members = []
        for member in cls.body.body:
            if member is init:
                members.append(new_init)
            elif member is call:
                members += [new_call, count.with_changes(leading_lines=[cst.EmptyLine(indent=False)])]
            else:
                members.append(member)
        AddImportsVisitor.add_needed_import(self.context, "numpy", asname="np")
        AddImportsVisitor.add_needed_import(self.context, "transformers.image_utils", "get_image_size")
        AddImportsVisitor.add_needed_import(self.context, "transformers.image_utils", "to_numpy_array")
        self.state.facts["processor_config"] = {
            "patch_size": {"config": "vision_config.patch_size"},
            "num_additional_image_tokens": {"value": facts["extra_tokens"]},
            **({select: {"config": select}} if select else {}),
            "image_token_index": {"config": facts["image_token_key"]},
        }
        self.record(call, f"{cls.name.value}: each image placeholder expanded to the model's feature rows "
                          f"({COUNT_METHOD}); settings in processor_config.json")
        return cls.with_changes(body=cls.body.with_changes(body=members))


def _tokenizer_statement(call: cst.FunctionDef):
    for stmt in call.body.body:
        for node in walk(stmt):
            if (isinstance(node, cst.Call) and is_self_attr(node.func, "tokenizer") and node.args
                    and code_of(node.args[0].value) == "text"):
                return stmt
    return None


def _with_settings(init: cst.FunctionDef, settings: list[str]) -> cst.FunctionDef:
    params = init.params
    existing = set(param_names(init))
    added = [
        cst.Param(name=cst.Name(s), default=cst.Integer("0") if s == "num_additional_image_tokens" else cst.Name("None"),
                  equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")))
        for s in settings if s not in existing
    ]
    params = params.with_changes(params=[*params.params, *added])
    lines = "".join(f"self.{s} = {s}\n" for s in settings if s != "image_token_index")
    lines += "self.image_token = self.tokenizer.convert_ids_to_tokens(image_token_index)\n"
    return init.with_changes(params=params, body=init.body.with_changes(body=[*init.body.body, *parse_stmts(lines)]))


def _with_expansion(call: cst.FunctionDef, before: cst.BaseStatement) -> cst.FunctionDef:
    expansion = parse_stmts(
        "if text is not None and images is not None:\n"
        "    # one placeholder token per image feature row of the model, as engines schedule them\n"
        "    text = [text] if isinstance(text, str) else list(text)\n"
        "    image_list = [\n"
        "        image for item in (images if isinstance(images, (list, tuple)) else [images])\n"
        "        for image in (item if isinstance(item, (list, tuple)) else [item])\n"
        "    ]\n"
        "    expanded_text, image_index = [], 0\n"
        "    for sample in text:\n"
        "        pieces = sample.split(self.image_token)\n"
        "        for piece_index in range(1, len(pieces)):\n"
        "            height, width = get_image_size(to_numpy_array(image_list[image_index]))\n"
        f"            num_image_tokens = self.{COUNT_METHOD}(height, width)\n"
        "            pieces[piece_index] = self.image_token * num_image_tokens + pieces[piece_index]\n"
        "            image_index += 1\n"
        '        expanded_text.append("".join(pieces))\n'
        "    text = expanded_text\n"
    )
    body = []
    for stmt in call.body.body:
        if stmt is before:
            body += [expansion[0].with_changes(leading_lines=stmt.leading_lines), stmt.with_changes(leading_lines=[])]
        else:
            body.append(stmt)
    return call.with_changes(body=call.body.with_changes(body=body))


def _count_method(facts: dict) -> str:
    code = (
        f"def {COUNT_METHOD}(self, height, width):\n"
        '    """Image feature rows the model makes for an image of this size (before any image is processed)."""\n'
        "    # one per patch of the image as the image processor resizes and crops it, plus the\n"
        "    # tokens the vision tower adds, less the rows the feature selection drops\n"
        "    blank = np.zeros((height, width, 3), dtype=np.uint8)\n"
        '    pixels = self.image_processor(blank, input_data_format="channels_last", return_tensors="np")["pixel_values"]\n'
        "    num_image_tokens = (pixels.shape[-2] // self.patch_size) * (pixels.shape[-1] // self.patch_size)\n"
        "    num_image_tokens += self.num_additional_image_tokens\n"
    )
    dropped = facts.get("dropped") or 0
    if dropped and facts.get("select_key"):
        code += f"    if self.{facts['select_key']} == {json.dumps(facts['select_value'])}:\n        num_image_tokens -= {dropped}\n"
    elif dropped:
        code += f"    num_image_tokens -= {dropped}\n"
    return code + "    return num_image_tokens\n"
