"""Every model class finishes `__init__` with `post_init()` (CONTRACT A3).

transformers 5 relies on `post_init()` to collect tied-weight declarations and the
per-module settings its loading and parallelism read. Code older than 4.x called
`self.init_weights()` there, and some remote code calls nothing; both end with
`self.post_init()` after the port.
"""

from __future__ import annotations

import libcst as cst

from transforms.base import Transform
from transforms.cst_utils import code_of, function_defs, parse_stmts


class CallPostInit(Transform):
    name = "post-init"
    summary = "End the __init__ of base models and heads with self.post_init()."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        models = (analysis.base_models | set(analysis.heads)) & {
            n for n, i in analysis.classes.items() if i.file == self.filename
        }
        if not models:
            return tree
        return self.rewrite_classes(tree, models, self._finish_init)

    def _finish_init(self, cls: cst.ClassDef) -> cst.ClassDef:
        init = function_defs(cls).get("__init__")
        if init is None or ".post_init()" in code_of(init):
            return cls
        body = list(init.body.body)
        last = body[-1] if body else None
        if last is not None and code_of(last).strip() == "self.init_weights()":
            body[-1] = parse_stmts("self.post_init()\n")[0].with_changes(leading_lines=last.leading_lines)
            self.record(init, f"{cls.name.value}.__init__: init_weights() -> post_init()")
        else:
            body.append(parse_stmts("self.post_init()\n")[0])
            self.record(init, f"{cls.name.value}.__init__ ends with post_init()")
        return cls.deep_replace(init, init.with_changes(body=init.body.with_changes(body=body)))
