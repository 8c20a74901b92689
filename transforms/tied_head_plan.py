"""A head tied to the input embeddings gets its own tensor-parallel plan (CONTRACT D1, D2).

transformers 5 shards the base model's `embed_tokens` on the vocabulary
(`embedding_rowwise`) whenever the base model has a tensor-parallel plan. A head whose output
projection is tied to that embedding then holds a sharded weight in a projection that no plan
names, and the sharded forward fails (a `DTensor` weight times a plain tensor). The in-library
models of transformers declare the head's projection column-parallel with its output
gathered (`_tp_plan = {"lm_head": "colwise_gather_output"}`): the same split of the same
tensor, so the tie holds. This transform writes that plan on each head class of the repo
whose `_tied_weights_keys` ties a projection to `<base>.embed_tokens.weight`, when the base
model's plan is written, config.json does not turn the tie off (`tie_word_embeddings: false`),
and the head declares no `_tp_plan` of its own.
"""

from __future__ import annotations

import libcst as cst

from porter.parallel import COLWISE_GATHER
from transforms.base import Transform
from transforms.cst_utils import dotted, parse_stmts, single_assign
from transforms.parallel_plans import plans_for, registered_styles

SHARDED_EMBEDDING = "embed_tokens"  # the attribute transformers shards by itself
GATHERED_OUTPUT = "colwise_gather_output"


def _tied_to_sharded_embedding(cls: cst.ClassDef, base_attr: str) -> list[str]:
    """Projections `_tied_weights_keys` ties to the base model's `embed_tokens.weight`."""
    for stmt in cls.body.body:
        assign = single_assign(stmt)
        if not assign or dotted(assign[0][0]) != "_tied_weights_keys" or not isinstance(assign[1], cst.Dict):
            continue
        tied = []
        for element in assign[1].elements:
            if not isinstance(element, cst.DictElement):
                continue
            target, source = (e.evaluated_value if isinstance(e, cst.SimpleString) else None for e in (element.key, element.value))
            if target and target.endswith(".weight") and _is_sharded_embedding(source, base_attr):
                tied.append(target.removesuffix(".weight"))
        return tied
    return []


def _is_sharded_embedding(source: str | None, base_attr: str) -> bool:
    """`<base_attr>.embed_tokens.weight`, or an `embed_tokens` deeper in the base model
    (OPT's `model.decoder.embed_tokens.weight`): transformers shards either."""
    suffix = f".{SHARDED_EMBEDDING}.weight"
    return bool(source) and source.startswith(f"{base_attr}.") and source.endswith(suffix)


class TiedHeadPlan(Transform):
    name = "tied-head-plan"
    summary = "Declare a head's output projection tied to the sharded input embedding column-parallel, gathered."
    leaves_interface_code = True

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        config_json = self.state.facts.get("config_json") or {}
        if not plans_for(self.state).tp_plan or config_json.get("tie_word_embeddings") is False:
            return tree  # transformers ties nothing when config.json says so: the head keeps its own weight
        heads = self.state.analysis.heads
        here = {
            s.name.value for s in tree.body
            if isinstance(s, cst.ClassDef) and s.name.value in heads and _tied_to_sharded_embedding(s, heads[s.name.value])
        }
        return self.rewrite_classes(tree, here, self._declare) if here else tree

    def _declare(self, cls: cst.ClassDef) -> cst.ClassDef:
        members = list(cls.body.body)
        if any((a := single_assign(m)) and dotted(a[0][0]) == "_tp_plan" for m in members):
            return cls
        styles = registered_styles()
        style = GATHERED_OUTPUT if styles is None or GATHERED_OUTPUT in styles else COLWISE_GATHER
        projections = _tied_to_sharded_embedding(cls, self.state.analysis.heads[cls.name.value])
        entries = ", ".join(f'"{p}": "{style}"' for p in projections)
        index = next(i for i, m in enumerate(members) if (a := single_assign(m)) and dotted(a[0][0]) == "_tied_weights_keys")
        plan = parse_stmts(f"_tp_plan = {{{entries}}}\n")[0]
        self.record(
            members[index],
            f"{cls.name.value}._tp_plan: {', '.join(projections)} {style}, split like the input embedding it is tied to,"
            " which transformers shards on the vocabulary",
        )
        return cls.with_changes(body=cls.body.with_changes(body=[*members[: index + 1], plan, *members[index + 1 :]]))
