"""Remote code built from transformers' own layer classes, which port-model refuses.

Some repos import layers of an in-library model (`from transformers.models.gemma2.modeling_gemma2
import Gemma2DecoderLayer`) and build or subclass them, calling them as the release they were
written for did. Under the installed transformers those names resolve to the current classes,
whose constructors and forwards changed (a rotary embedding built from the config, decoder
layers taking `position_embeddings` and returning a tensor): the code would load unchanged and
compute something else, or fail at run time. Vendoring the release's classes is not done, so
each class built or subclassed this way is refused where the code uses it.

Norms and MLPs (one tensor in, one out, the same weights on every release) are left alone, and
so are functions (`rotate_half`, `repeat_kv`) and names used only in `isinstance` checks.
"""

from __future__ import annotations

import re

import libcst as cst

from transforms.base import Transform
from transforms.cst_utils import dotted, walk

IN_LIBRARY_MODELING = re.compile(r"^transformers\.models\.\w+\.modeling_\w+$")
# One tensor in, one tensor out, on every release.
STABLE_SUFFIXES = ("Norm", "MLP")


def in_library_classes(tree: cst.Module) -> dict[str, str]:
    """Classes imported from an in-library modeling module: the name the code uses -> module."""
    found = {}
    for node in walk(tree):
        if not isinstance(node, cst.ImportFrom) or node.relative or node.module is None:
            continue
        module = dotted(node.module)
        if not module or not IN_LIBRARY_MODELING.match(module) or isinstance(node.names, cst.ImportStar):
            continue
        for alias in node.names:
            name = dotted(alias.name)
            bound = dotted(alias.asname.name) if alias.asname else name
            if name and bound and name[0].isupper() and not name.isupper() and not name.endswith(STABLE_SUFFIXES):
                found[bound] = module
    return found


class RefuseInLibraryLayers(Transform):
    name = "in-library-layers"
    summary = "Refuse code that builds or subclasses layers of an in-library model, whose API changed."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        imported = in_library_classes(tree)
        if not imported:
            return tree
        for stmt in tree.body:
            if not isinstance(stmt, cst.ClassDef):
                continue
            for base in stmt.bases:
                if dotted(base.value) in imported:
                    self._refuse(base, stmt.name.value, dotted(base.value), imported, "subclasses")
            for node in walk(stmt):
                if isinstance(node, cst.Call) and dotted(node.func) in imported:
                    self._refuse(node, stmt.name.value, dotted(node.func), imported, "builds")
        return tree

    def _refuse(self, node: cst.CSTNode, owner: str, used: str, imported: dict[str, str], how: str) -> None:
        self.refuse(
            node,
            f"{owner} {how} `{used}` from {imported[used]}, transformers' own class: under the installed "
            "transformers it is the current class, whose constructor and forward differ from the release the "
            "code was written for; port-model does not vendor in-library classes",
            owner,
        )
