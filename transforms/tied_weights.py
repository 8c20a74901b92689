"""`_tied_weights_keys` in the dict form transformers 5 expects (CONTRACT A3).

The legacy list `["lm_head.weight"]` names only the tied parameter; transformers 5 wants
`{"lm_head.weight": "model.embed_tokens.weight"}`. The source is found by following
`get_input_embeddings` from the head class into the base model.
"""

from __future__ import annotations

import libcst as cst

from transforms.base import Transform
from transforms.cst_utils import call_name, code_of, dotted, function_defs, parse_stmts, single_assign, walk


class TiedWeightsDict(Transform):
    name = "tied-weights"
    summary = "Turn the _tied_weights_keys list into the {target: source} dict."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        return self.rewrite_classes(tree, set(analysis.heads), self._rewrite)

    def _rewrite(self, cls: cst.ClassDef) -> cst.ClassDef:
        members = list(cls.body.body)
        for index, member in enumerate(members):
            assign = single_assign(member)
            if not assign or dotted(assign[0][0]) != "_tied_weights_keys" or not isinstance(assign[1], cst.List):
                continue
            source = self._embedding_path(cls.name.value)
            if source is None:
                self.refuse(member, "cannot tell which embedding the tied weights follow", cls.name.value)
                return cls
            keys = [e.value.evaluated_value for e in assign[1].elements if isinstance(e.value, cst.SimpleString)]
            entries = ", ".join(f'"{k}": "{source}.weight"' for k in keys)
            members[index] = parse_stmts(f"_tied_weights_keys = {{{entries}}}\n")[0]
            self.record(member, f"{cls.name.value}._tied_weights_keys -> {{{entries}}}")
            self.state.facts.setdefault("tied", {}).update({k: f"{source}.weight" for k in keys})
            return cls.with_changes(body=cls.body.with_changes(body=members))
        return self._declare_implicit_tie(cls, members)

    def _declare_implicit_tie(self, cls: cst.ClassDef, members: list) -> cst.ClassDef:
        """transformers 4 tied `get_output_embeddings()` to the input embeddings whenever
        `tie_word_embeddings` was on, declared or not; transformers 5 ties only what
        `_tied_weights_keys` names. A head with an output embedding and no declaration
        gets one (it still ties only when the config asks)."""
        if any((a := single_assign(m)) and dotted(a[0][0]) == "_tied_weights_keys" for m in members):
            return cls  # declared already
        getter = function_defs(cls).get("get_output_embeddings")
        returned = next((n.value for n in walk(getter) if isinstance(n, cst.Return) and n.value), None) if getter else None
        if returned is None or not code_of(returned).startswith("self.") or call_name(returned):
            return cls
        source = self._embedding_path(cls.name.value)
        if source is None:
            return cls
        target = code_of(returned)[len("self.") :] + ".weight"
        if target == f"{source}.weight":
            return cls  # the output layer is the input embedding module itself: one weight, no tie
        entry = f'"{target}": "{source}.weight"'
        declaration = parse_stmts(f"_tied_weights_keys = {{{entry}}}\n")
        self.record(cls, f"{cls.name.value} declares the tie transformers 4 made implicitly: {{{entry}}}")
        self.state.facts.setdefault("tied", {})[target] = f"{source}.weight"
        return cls.with_changes(body=cls.body.with_changes(body=[*declaration, *members]))

    def _embedding_path(self, head: str) -> str | None:
        analysis = self.state.analysis
        base_attr = analysis.heads[head]
        base = analysis.classes[analysis.classes[head].children[base_attr]]
        for cls in (analysis.classes[head], base, *[analysis.classes[a] for a in analysis.ancestors(base.name)]):
            getter = function_defs(cls.node).get("get_input_embeddings")
            if getter is None:
                continue
            returned = next((n.value for n in walk(getter) if isinstance(n, cst.Return) and n.value), None)
            if returned is None or call_name(returned):
                continue
            path = code_of(returned)
            if not path.startswith("self."):
                continue
            path = path[len("self.") :]
            return path if cls is not base and cls.name == head else f"{base_attr}.{path}"
        return None
