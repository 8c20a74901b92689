"""RoPE settings as transformers 5 presents them (LEGACY_PATTERNS D, config behaviour).

transformers 5 fills `config.rope_scaling` with `{"rope_type": "default", ...}` where
legacy configs had `None`, and names the kind `rope_type` where legacy code reads
`["type"]`. Legacy tests keep their meaning:

- `X.rope_scaling is None`      -> `X.rope_scaling is None or <kind of X.rope_scaling> == "default"`
- `X.rope_scaling is not None`  -> the negation of that
- `X.rope_scaling["type"]`      -> `X.rope_scaling.get("type", X.rope_scaling.get("rope_type"))`
- `ROPE_INIT_FUNCTIONS[kind]`   -> the same table with the "default" entry transformers 5 removed,
  computed as the legacy release did (inverse frequencies over `dim`, attention factor 1.0).
"""

from __future__ import annotations

import libcst as cst

from transforms.base import Transform
from transforms.cst_utils import SharingTransformer, code_of, module_code, parse_expr, parse_stmts, spaced, walk

DEFAULT_ROPE = "_legacy_default_rope_parameters"
DEFAULT_ROPE_CODE = f'''
def {DEFAULT_ROPE}(config=None, device=None, seq_len=None, **rope_kwargs):
    """The "default" RoPE initialisation that transformers 5 dropped from ROPE_INIT_FUNCTIONS."""
    if rope_kwargs:
        base, dim = rope_kwargs["base"], rope_kwargs["dim"]
    else:
        base = config.rope_theta
        partial_rotary_factor = getattr(config, "partial_rotary_factor", 1.0)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        dim = int(head_dim * partial_rotary_factor)
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float().to(device) / dim))
    return inv_freq, 1.0
'''


def _kind(owner: str) -> str:
    return f'{owner}.get("type", {owner}.get("rope_type"))'


class RopeConfigAccess(Transform):
    name = "rope-config"
    summary = "Keep legacy rope_scaling tests meaningful under transformers 5's filled-in rope settings."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        tree = tree.visit(_RopeAccess(self))
        return self._default_rope_entry(tree)

    def _default_rope_entry(self, tree: cst.Module) -> cst.Module:
        from transformers import modeling_rope_utils

        if "default" in getattr(modeling_rope_utils, "ROPE_INIT_FUNCTIONS", {}) or "ROPE_INIT_FUNCTIONS[" not in module_code(tree):
            return tree
        if any(isinstance(s, cst.FunctionDef) and s.name.value == DEFAULT_ROPE for s in tree.body):
            return tree
        rewriter = _WithDefaultRope(self)
        tree = tree.visit(rewriter)
        if not rewriter.rewritten:
            return tree
        body = list(tree.body)
        first_def = next((i for i, s in enumerate(body) if isinstance(s, (cst.FunctionDef, cst.ClassDef))), len(body))
        body.insert(first_def, spaced(parse_stmts(DEFAULT_ROPE_CODE)[0]))
        return tree.with_changes(body=body)


class _RopeAccess(SharingTransformer):
    def __init__(self, transform: Transform):
        self.transform = transform
        self.targets: set[int] = set()  # `x["type"] = ...` writes the key: left alone

    def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
        self.targets.add(id(node.target))

    def visit_BooleanOperation(self, node: cst.BooleanOperation) -> bool:
        # Already rewritten (`... is None or <kind> == "default"`): leave it alone.
        return '.get("rope_type")) == "default"' not in code_of(node)

    def leave_Comparison(self, original: cst.Comparison, updated: cst.Comparison) -> cst.BaseExpression:
        left = updated.left
        if not (isinstance(left, cst.Attribute) and left.attr.value == "rope_scaling" and len(updated.comparisons) == 1):
            return updated
        target = updated.comparisons[0]
        if code_of(target.comparator) != "None":
            return updated
        owner = code_of(left)
        absent = f'({owner} is None or {_kind(owner)} == "default")'
        if isinstance(target.operator, cst.Is):
            self.transform.record(original, f"`{owner} is None` also accepts the default rope settings")
            return parse_expr(absent)
        if isinstance(target.operator, cst.IsNot):
            self.transform.record(original, f"`{owner} is not None` ignores the default rope settings")
            return parse_expr(f"not {absent}")
        return updated

    def leave_Subscript(self, original: cst.Subscript, updated: cst.Subscript) -> cst.BaseExpression:
        value = updated.value
        if id(original) in self.targets:
            return updated
        if not (isinstance(value, cst.Attribute) and value.attr.value == "rope_scaling" and len(updated.slice) == 1):
            return updated
        index = updated.slice[0].slice
        if isinstance(index, cst.Index) and isinstance(index.value, cst.SimpleString):
            if index.value.evaluated_value == "type":
                owner = code_of(value)
                self.transform.record(original, f'{owner}["type"] -> also reads "rope_type"')
                return parse_expr(_kind(owner))
        return updated


class _WithDefaultRope(SharingTransformer):
    def __init__(self, transform: Transform):
        self.transform = transform
        self.rewritten = 0
        self.guarded: set[int] = set()  # lookups only reached when the kind is not "default"

    def visit_Module(self, node: cst.Module) -> None:
        for branch in walk(node):
            if isinstance(branch, (cst.If, cst.IfExp)):
                guarded = _branch_without_default(branch)
                if guarded is not None:
                    self.guarded |= {id(n) for n in walk(guarded) if isinstance(n, cst.Subscript)}

    def leave_Subscript(self, original: cst.Subscript, updated: cst.Subscript) -> cst.BaseExpression:
        if code_of(updated.value) != "ROPE_INIT_FUNCTIONS" or id(original) in self.guarded:
            return updated
        self.rewritten += 1
        key = code_of(updated.slice[0].slice.value)
        self.transform.record(original, 'ROPE_INIT_FUNCTIONS[...] gains the "default" entry transformers 5 removed')
        return parse_expr(f'{{**ROPE_INIT_FUNCTIONS, "default": {DEFAULT_ROPE}}}[{key}]')


def _branch_without_default(branch: cst.If | cst.IfExp) -> cst.CSTNode | None:
    """The branch of `if kind != "default": ...` / `a if kind == "default" else b` that runs
    only for other kinds: the test transformers 5 code puts before its table lookup."""
    test = branch.test
    if not (
        isinstance(test, cst.Comparison)
        and len(test.comparisons) == 1
        and code_of(test.comparisons[0].comparator) in ('"default"', "'default'")
    ):
        return None
    operator = test.comparisons[0].operator
    if isinstance(operator, cst.NotEqual):
        return branch.body
    if isinstance(operator, cst.Equal):
        return branch.orelse
    return None
