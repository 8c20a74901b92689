"""`base_model_tp_plan` and `base_model_pp_plan` written into the config class (CONTRACT D1, D3).

The plans come from `porter.parallel.infer_plans`: projection pairs found by data flow,
never by name. Styles are the ones the installed transformers registers; a plan the config
class already declares is left as it is.
"""

from __future__ import annotations

import libcst as cst

from porter.parallel import (
    BIAS_CLASSES,
    COLWISE,
    COLWISE_GATHER,
    REPLICATE,
    ROWWISE,
    ROWWISE_SPLIT,
    ParallelPlans,
    infer_plans,
)
from transforms.base import PortState, Transform
from transforms.cst_utils import dotted, is_docstring, parse_stmts, single_assign

TP_ATTR, PP_ATTR = "base_model_tp_plan", "base_model_pp_plan"


def registered_styles() -> set[str] | None:
    """Style names the installed transformers accepts (their module moved within 5.x)."""
    # The module that defines the styles registers them on import.
    for module in ("transformers.distributed.tensor_parallel", "transformers.integrations.tensor_parallel"):
        try:
            styles = __import__(module, fromlist=["ALL_PARALLEL_STYLES"]).ALL_PARALLEL_STYLES
        except (ImportError, AttributeError):
            continue
        names = set(styles.valid_keys() if hasattr(styles, "valid_keys") else styles.keys())
        if names:
            return names
    return None


def plans_for(state: PortState) -> ParallelPlans:
    """Inferred once per port and shared by the transforms that need it."""
    plans = state.facts.get("_parallel_plans")
    if plans is None:
        plans = infer_plans(state.analysis, registered_styles(), bias_classes=state.facts.get(BIAS_CLASSES, set()))
        state.facts["_parallel_plans"] = plans
        state.facts["parallel"] = plans.as_dict()
    return plans


def render_plans(plans: ParallelPlans, tp: bool, pp: bool) -> str:
    """The class attributes as source, one entry a line."""
    lines = []
    if tp and plans.tp_plan:
        lines.append(f"{TP_ATTR} = {{")
        lines += [f'    "{key}": "{style}",' for key, style in plans.tp_plan.items()]
        lines.append("}")
    if pp and plans.pp_plan:
        lines.append(f"{PP_ATTR} = {{")
        for key, (inputs, outputs) in plans.pp_plan.items():
            lines.append(f'    "{key}": ({_names(inputs)}, {_names(outputs)}),')
        lines.append("}")
    return "\n".join(lines) + "\n" if lines else ""


def _names(names: list[str]) -> str:
    return "[" + ", ".join(f'"{n}"' for n in names) + "]"


class WriteParallelPlans(Transform):
    name = "parallel-plans"
    summary = "Declare base_model_tp_plan and base_model_pp_plan, inferred from the data flow, in the config class."
    leaves_interface_code = True

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        # A composite's towers each get their plan in their own config class (see Tower).
        written = plans_for(self.state).written_plans()
        analysis = self.state.analysis
        here = {c for c in written if c is not None and c in analysis.classes and analysis.classes[c].file == self.filename}
        if not here:
            return tree
        return self.rewrite_classes(tree, here, lambda cls: self._declare(cls, *written[cls.name.value]))

    def _declare(self, cls: cst.ClassDef, tp_plan: dict, pp_plan: dict) -> cst.ClassDef:
        members = list(cls.body.body)
        declared = {dotted(a[0][0]) for m in members if (a := single_assign(m))}
        plans = ParallelPlans(base_model=None, config_class=cls.name.value, tp_plan=tp_plan, pp_plan=pp_plan)
        text = render_plans(plans, TP_ATTR not in declared, PP_ATTR not in declared)
        if not text:
            return cls
        anchor = next(
            (i + 1 for i, m in enumerate(members) if (a := single_assign(m)) and dotted(a[0][0]) == "model_type"),
            1 if members and is_docstring(members[0]) else 0,
        )
        new = parse_stmts(text)
        note = cst.EmptyLine(comment=cst.Comment("# Inferred by port-model from the forward code's data flow; see PORTING.md."))
        new[0] = new[0].with_changes(leading_lines=[note])
        self.record(members[anchor - 1] if anchor else cls, _summary(plans, TP_ATTR not in declared))
        return cls.with_changes(body=cls.body.with_changes(body=[*members[:anchor], *new, *members[anchor:]]))


def _summary(plans: ParallelPlans, tp: bool) -> str:
    parts = []
    if tp:
        counts = {s: sum(1 for v in plans.tp_plan.values() if v == s) for s in
                  (COLWISE, ROWWISE, COLWISE_GATHER, ROWWISE_SPLIT, REPLICATE)}
        parts.append(f"{TP_ATTR}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    if plans.pp_plan:
        parts.append(f"{PP_ATTR}: {', '.join(plans.pp_plan)}")
    return "; ".join(parts)
