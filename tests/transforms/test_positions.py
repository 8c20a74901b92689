"""Lines of recorded nodes: placed statement by statement (a class member by member), they
match libcst's own positions."""

from __future__ import annotations

import textwrap

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from transforms.positions import FileLines, _TreeLines

SOURCE = textwrap.dedent(
    '''\
    # header comment

    """Docstring."""
    import torch


    class A(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            self.x = (
                1,
                2,
            )

        def forward(self, h):
            return h


    @decorated
    def helper(a,
               b):
        if a:
            return b  # trailing
        return a


    @dataclass
    class B(
        A,
    ):
        """Doc."""

        x: int = 1

        class Inner:
            y = 2

            # inner footer
        # class footer

    # footer comment
    '''
)


def _positions(tree: cst.Module) -> dict:
    return dict(MetadataWrapper(tree, unsafe_skip_copy=True).resolve(PositionProvider))


def test_lines_match_position_provider_for_every_node():
    tree = cst.parse_module(SOURCE)
    placed = _TreeLines(tree, {})
    expected = _positions(tree)
    assert len(expected) > 100
    for node, position in expected.items():
        if not isinstance(node, cst.Module):
            assert placed.line(node) == position.start.line, cst.Module([]).code_for_node(node)
    assert placed.code_lines() == SOURCE.splitlines()


def test_node_of_a_later_tree_maps_to_its_original_line():
    original = cst.parse_module(SOURCE)
    lines = FileLines(original, SOURCE)
    # A transform inserts two statements at the top of forward: the lines after it shift.
    cls = original.body[2]
    forward = cls.body.body[1]
    new_forward = forward.with_changes(
        body=forward.body.with_changes(body=[*cst.parse_module("a = 1\nb = 2\n").body, *forward.body.body])
    )
    later = original.with_changes(
        body=[*original.body[:2], cls.with_changes(body=cls.body.with_changes(body=[cls.body.body[0], new_forward])),
              *original.body[3:]]
    )
    helper = later.body[3]
    assert helper is original.body[3]  # shared: found in the tree as parsed
    assert lines.line_of(helper, later) == SOURCE.splitlines().index("def helper(a,") + 1  # libcst: the `def` line
    assert lines.line_of(new_forward, later) == SOURCE.splitlines().index("    def forward(self, h):") + 1
    added = new_forward.body.body[0]
    assert _positions(later)[added].start.line == SOURCE.splitlines().index("    def forward(self, h):") + 2
    # An added line is reported at the nearest original line after the one before it.
    assert lines.line_of(added, later) == SOURCE.splitlines().index("    def forward(self, h):") + 2
    assert lines.line_of(cst.Name("unplaced"), later) is None
