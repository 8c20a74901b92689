"""Imports are added on the module's head alone, with the result of libcst's visitor run on the whole module."""

from __future__ import annotations

import libcst as cst
import pytest
from libcst.codemod import CodemodContext
from libcst.codemod.visitors import AddImportsVisitor

from porter.rewrite import add_imports

BODY = "\n\nclass A:\n    def f(self):\n        from typing import Any\n        import os\n        return os\n\n\nx = 1\n"
MODULES = [
    '"""Doc."""\nimport torch\nfrom torch import nn\n' + BODY,
    '"""Doc."""\n\n# a comment\nfrom __future__ import annotations\nimport math\n# before the class\n' + BODY,
    "__strict__ = True\nimport torch\n" + BODY,
    BODY.lstrip(),
    "# header comment\n\nfrom typing import Optional\n",
    '"""Only a docstring."""\n',
    "import torch\nx = 1\nimport os\n" + BODY,
    "from typing import Optional\nfrom transformers.utils import logging\n\nlogger = 1\n" + BODY,
    "",
]
WANTED = [
    ("transformers.masking_utils", "create_causal_mask"),
    ("typing", "Any"),
    ("typing", "Unpack"),
    ("transformers.utils", "TransformersKwargs"),
    ("__future__", "annotations"),
    ("torch", None),
]


@pytest.mark.parametrize("source", MODULES)
def test_head_only_equals_the_whole_module_visitor(source):
    tree = cst.parse_module(source)
    contexts = [CodemodContext(filename="modeling_x.py") for _ in range(2)]
    for context in contexts:
        for module, name in WANTED:
            AddImportsVisitor.add_needed_import(context, module, name)
    expected = AddImportsVisitor(contexts[0]).transform_module_impl(tree).code
    result = add_imports(contexts[1], tree).code
    assert result == expected
    cst.parse_module(result)
    assert result != source  # something was added: the test compares real work
