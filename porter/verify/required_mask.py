"""Whether a model's forward cannot run without an attention mask.

Some heads read the mask themselves, unguarded: a reward head picks each sequence's last
token with `attention_mask.cumsum(dim=1).argmax(dim=1)`. The single-sequence runs pass no
mask, so such a model (legacy or ported alike) is given an all-ones mask there, which
means the same as none. A sibling of the child scripts (runner.py, sharded_runner.py):
standard library only, for transformers 4.x and 5.x environments alike.
"""

import ast
import inspect
import textwrap

MASK = "attention_mask"


def requires_attention_mask(model) -> bool:
    """True when forward dereferences `attention_mask` (`attention_mask.x`, `attention_mask[i]`)
    and never tests it (`is None`, `if attention_mask`) nor rebinds it."""
    try:
        source = textwrap.dedent(inspect.getsource(type(model).forward))
        function = ast.parse(source).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):
        return False
    if not isinstance(function, ast.FunctionDef) or MASK not in {a.arg for a in function.args.args}:
        return False
    dereferenced = tested = False
    for node in ast.walk(function):
        if isinstance(node, (ast.Attribute, ast.Subscript)) and _is_mask(node.value):
            dereferenced = True
        elif isinstance(node, ast.Compare) and any(_is_mask(n) for n in (node.left, *node.comparators)):
            tested = True
        elif isinstance(node, (ast.If, ast.IfExp, ast.While, ast.Assert)) and _is_mask(node.test):
            tested = True
        elif isinstance(node, ast.BoolOp) and any(_is_mask(v) for v in node.values):
            tested = True
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not) and _is_mask(node.operand):
            tested = True
        elif isinstance(node, ast.Name) and node.id == MASK and isinstance(node.ctx, ast.Store):
            tested = True
    return dereferenced and not tested


def _is_mask(node) -> bool:
    return isinstance(node, ast.Name) and node.id == MASK


def mask_for(model, inputs, prefix):
    """The run's attention mask: the stored one, all ones where forward needs one, else None."""
    stored = inputs.get(f"{prefix}.{MASK}")
    if stored is not None:
        return stored
    if requires_attention_mask(model):
        import torch

        return torch.ones_like(inputs[f"{prefix}.input_ids"])
    return None
