"""SharingTransformer keeps unchanged subtrees and gives the code a plain transformer gives."""

from __future__ import annotations

import textwrap

import libcst as cst

from transforms.cst_utils import SharingTransformer, names_loaded, names_read

SOURCE = textwrap.dedent(
    """\
    import torch


    class A(torch.nn.Module):
        def forward(self, cache):
            n = cache.get_usable_length(3)
            return n


    def helper(x):
        return x + 1
    """
)


def _renamer(base: type) -> cst.CSTTransformer:
    class Rename(base):
        def leave_Attribute(self, original, updated):
            if updated.attr.value == "get_usable_length":
                return updated.with_changes(attr=cst.Name("get_seq_length"))
            return updated

    return Rename()


def test_changed_code_is_the_plain_transformers_and_untouched_statements_are_shared():
    tree = cst.parse_module(SOURCE)
    shared = tree.visit(_renamer(SharingTransformer))
    plain = tree.visit(_renamer(cst.CSTTransformer))
    assert shared.code == plain.code
    assert "cache.get_seq_length(3)" in shared.code
    assert shared is not tree
    assert shared.body[0] is tree.body[0]  # the import
    assert shared.body[2] is tree.body[2]  # the helper
    assert shared.body[1] is not tree.body[1]  # the class that changed
    forward = shared.body[1].body.body[0]
    assert forward.body.body[1] is tree.body[1].body.body[0].body.body[1]  # `return n`
    assert plain.body[0] is not tree.body[0]  # what libcst does on its own


def test_nothing_changed_gives_the_same_tree():
    tree = cst.parse_module(SOURCE.replace("get_usable_length", "size"))
    assert tree.visit(_renamer(SharingTransformer)) is tree


def test_names_read_and_loaded():
    stmt = cst.parse_statement("x[i] = f(a.b, key=c) + y.z\n")
    assert names_read(stmt) == {"x", "i", "f", "a", "c", "y"}
    assert names_loaded(stmt) == {"x", "i", "f", "a", "c", "y"}
    assign = cst.parse_statement("out: int = g(h)\n")
    assert names_read(assign) == {"out", "int", "g", "h"}
    assert names_loaded(assign) == {"g", "h"}
    loop = cst.parse_statement("for k in items:\n    total = k + base\nelse:\n    other()\n")
    assert names_loaded(loop) == {"items", "k", "base"}
    assert names_read(loop) == {"k", "items", "total", "base", "other"}
