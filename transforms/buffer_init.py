"""Non-persistent buffers survive transformers 5's meta-device loading.

transformers 5 builds a model on the meta device, loads the checkpoint, and leaves every
buffer that is not in the checkpoint (`register_buffer(..., persistent=False)`: rotary
frequencies, cos/sin caches, causal-mask buffers) as uninitialised memory, expecting
`_init_weights` to fill it. Legacy `_init_weights` only knows Linear and Embedding. So
each class that registers such buffers records the arguments it was built with, and
`_init_weights` rebuilds the module on the CPU from them and copies the buffers over:
exactly the values the legacy `__init__` computed.
"""

from __future__ import annotations

import libcst as cst

from transforms.base import Transform
from transforms.cst_utils import (
    call_name,
    code_of,
    function_defs,
    is_docstring,
    is_self_attr,
    last_part,
    parse_stmts,
    spaced,
    walk,
)

ARGS_ATTRIBUTE = "_legacy_init_args"
HELPER = "_rebuild_non_persistent_buffers"
HELPER_CODE = f'''
def {HELPER}(module: torch.nn.Module, only_if_meta: bool = False) -> None:
    """Recompute the tensors `module`'s __init__ computed: non-persistent buffers and plain
    tensor attributes, which transformers 5 leaves uninitialised after building on meta."""
    init_args = getattr(module, "{ARGS_ATTRIBUTE}", None)
    if init_args is None:
        return
    if only_if_meta and not any(isinstance(v, torch.Tensor) and v.is_meta for v in vars(module).values()):
        return
    args, kwargs = init_args
    with torch.device("cpu"):
        fresh = type(module)(*args, **kwargs)
    for name in getattr(module, "_non_persistent_buffers_set", ()):
        current = module._buffers.get(name)
        if current is not None and fresh._buffers.get(name) is not None:
            module._buffers[name] = fresh._buffers[name].to(device=current.device, dtype=current.dtype)
    placed = [b.device for b in module.buffers() if b.device.type != "meta"]
    for name, value in vars(fresh).items():
        if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter):
            setattr(module, name, value.to(placed[0] if placed else "cpu"))
'''


STATE_WRAPPERS = {"Parameter", "Buffer"}
TENSOR_MAKERS = {"arange", "tensor", "ones", "zeros", "tril", "triu", "exp", "outer", "einsum", "cos", "sin", "full"}


def _registers_volatile_buffer(cls: cst.ClassDef, initialised: set[str], runs: bool) -> bool:
    """A non-persistent buffer that no `_init_weights` fills, or, in a class that runs (has a
    `forward`: a module, not a cache layer or other helper object the model never puts on
    meta), a plain tensor attribute (`self.cos_cached = emb.cos()`)."""
    for node in walk(cls):
        if isinstance(node, cst.Call) and last_part(call_name(node)) == "register_buffer":
            for arg in node.args:
                if arg.keyword and arg.keyword.value == "persistent" and code_of(arg.value) == "False":
                    name = node.args[0].value if node.args else None
                    if not (isinstance(name, cst.SimpleString) and name.evaluated_value in initialised):
                        return True
    return runs and _has_tensor_attributes(cls)


def _initialised_in_init_weights(analysis) -> set[str]:
    """Attributes the model's own `_init_weights` writes (`init.copy_(module.mup_vector, ...)`):
    transformers 5 calls it for buffers the checkpoint lacks, so those buffers need no rebuild."""
    names = set()
    for root in analysis.pretrained:
        method = function_defs(analysis.classes[root].node).get("_init_weights")
        for node in walk(method) if method is not None else ():
            if isinstance(node, cst.Call) and node.args and isinstance(node.args[0].value, cst.Attribute):
                names.add(node.args[0].value.attr.value)
    return names


def _runs(analysis, name: str) -> bool:
    """The class or one of its repo bases defines `forward`."""
    return any("forward" in function_defs(analysis.classes[c].node) for c in (name, *analysis.ancestors(name)))


def _has_tensor_attributes(cls: cst.ClassDef) -> bool:
    """`self.x = <tensor computed here>`: an attribute no state dict or loader knows about.
    Only construction counts (`__init__` and the methods it calls): state a forward keeps
    between calls (recurrent states, conv caches) is rebuilt by the forward itself."""
    for node in (n for method in _construction(cls) for n in walk(method)):
        if isinstance(node, cst.Assign) and all(is_self_attr(t.target) for t in node.targets):
            calls = {last_part(call_name(c)).lstrip(".") for c in _calls_outside_state(node.value)}
            if calls & TENSOR_MAKERS:
                return True
    return False


def _construction(cls: cst.ClassDef) -> list[cst.FunctionDef]:
    methods = function_defs(cls)
    init = methods.get("__init__")
    if init is None:
        return []
    called = {c.func.attr.value for c in walk(init) if isinstance(c, cst.Call) and is_self_attr(c.func)}
    return [init, *(methods[name] for name in sorted(called) if name in methods and name != "__init__")]


def _calls_outside_state(node: cst.CSTNode) -> list[cst.Call]:
    """Calls in `node`, except inside `nn.Parameter(...)` or `nn.Buffer(...)`: a parameter,
    or a buffer declared the transformers 5 way, is in the state dict's and loader's care."""
    found, stack = [], [node]
    while stack:
        current = stack.pop()
        if isinstance(current, cst.Call):
            if last_part(call_name(current)) in STATE_WRAPPERS:
                continue
            found.append(current)
        stack.extend(current.children)
    return found


def _prepend(fn: cst.FunctionDef, stmts: list[cst.BaseStatement]) -> cst.FunctionDef:
    """`stmts` first in `fn`'s body, after its docstring if it has one."""
    body = list(fn.body.body)
    start = 1 if body and is_docstring(body[0]) else 0
    return fn.with_changes(body=fn.body.with_changes(body=[*body[:start], *stmts, *body[start:]]))


class RebuildBuffers(Transform):
    name = "buffer-init"
    summary = "Record constructor arguments of modules with non-persistent buffers; rebuild them in _init_weights."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        analysis = self.state.analysis
        initialised = _initialised_in_init_weights(analysis)
        volatile = {
            n for n, i in analysis.classes.items() if _registers_volatile_buffer(i.node, initialised, _runs(analysis, n))
        }
        volatile |= {n for n in analysis.classes if any(a in volatile for a in analysis.ancestors(n))}
        if not volatile:
            return tree
        roots = {n for n in analysis.pretrained_roots if analysis.classes[n].file == self.filename}
        has_helper = any(isinstance(s, cst.FunctionDef) and s.name.value == HELPER for s in tree.body)
        new_body: list[cst.CSTNode] = []
        for stmt in tree.body:
            if isinstance(stmt, cst.ClassDef) and stmt.name.value in volatile:
                stmt = self._capture_args(stmt)
                if _has_tensor_attributes(stmt):
                    stmt = self._rebuild_on_first_use(stmt)
            if isinstance(stmt, cst.ClassDef) and stmt.name.value in roots and not has_helper:
                new_body.append(spaced(parse_stmts(HELPER_CODE)[0]))
                stmt = self._rebuild_in_init_weights(stmt)
            new_body.append(stmt)
        return tree.with_changes(body=new_body)

    def _capture_args(self, cls: cst.ClassDef) -> cst.ClassDef:
        init = function_defs(cls).get("__init__")
        if init is None or ARGS_ATTRIBUTE in code_of(init):
            return cls
        params = init.params
        positional = [p.name.value for p in (*params.posonly_params, *params.params)][1:]  # drop self
        if isinstance(params.star_arg, cst.Param):
            positional.append(f"*{params.star_arg.name.value}")
        keywords = [f'"{p.name.value}": {p.name.value}' for p in params.kwonly_params]
        kwargs = "{" + ", ".join(keywords) + "}"
        if isinstance(params.star_kwarg, cst.Param):
            kwargs = "{" + ", ".join([*keywords, f"**{params.star_kwarg.name.value}"]) + "}"
        args = "(" + ", ".join(positional) + ("," if len(positional) == 1 else "") + ")"
        # First in __init__, before the body rebinds any parameter; the most derived class
        # runs first, so `setdefault` keeps its arguments over those its bases receive.
        line = parse_stmts(f'self.__dict__.setdefault("{ARGS_ATTRIBUTE}", ({args}, {kwargs}))\n')
        new_init = _prepend(init, line)
        self.record(init, f"{cls.name.value}.__init__ records its arguments to rebuild non-persistent buffers")
        return cls.deep_replace(init, new_init)

    def _rebuild_on_first_use(self, cls: cst.ClassDef) -> cst.ClassDef:
        """Plain tensor attributes are not buffers, so loading never revisits them: the
        module checks them when it first runs."""
        forward = function_defs(cls).get("forward")
        if forward is None or HELPER in code_of(forward):
            return cls
        new_forward = _prepend(forward, parse_stmts(f"{HELPER}(self, only_if_meta=True)\n"))
        self.record(forward, f"{cls.name.value}.forward rebuilds tensor attributes left on the meta device")
        return cls.deep_replace(forward, new_forward)

    def _rebuild_in_init_weights(self, cls: cst.ClassDef) -> cst.ClassDef:
        existing = function_defs(cls).get("_init_weights")
        call = parse_stmts(f"{HELPER}(module)\n")
        if existing is not None:
            module_param = existing.params.params[1].name.value if len(existing.params.params) > 1 else "module"
            # transformers 5 calls _init_weights on every module whose buffers were not loaded;
            # legacy init code writes in place and would overwrite the loaded parameters.
            call = parse_stmts(
                f"{HELPER}({module_param})\n"
                f'if all(getattr(p, "_is_hf_initialized", False) for p in {module_param}.parameters()):\n'
                "    return\n"
            )
            new = existing.with_changes(body=existing.body.with_changes(body=[*call, *existing.body.body]))
            self.record(existing, f"{cls.name.value}._init_weights rebuilds non-persistent buffers")
            return cls.deep_replace(existing, new)
        method = parse_stmts(
            f"def _init_weights(self, module):\n    super()._init_weights(module)\n    {HELPER}(module)\n"
        )
        self.record(cls, f"{cls.name.value}._init_weights added to rebuild non-persistent buffers")
        return cls.with_changes(body=cls.body.with_changes(body=[*cls.body.body, *method]))
