"""What the transforms write into ported code exists in every supported transformers 5.x.

Every `from transformers... import NAME` a transform can add (each
`AddImportsVisitor.add_needed_import(context, MODULE, NAME)` in transforms/, with NAME a
string or a variable bound to strings in the same function) must import under the
installed transformers and under the oldest supported one, 5.17 (an environment built once
and cached beside the reference environments).
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
from pathlib import Path

import pytest

from porter.environments import ensure_reference_env
from porter.errors import ReferenceUnavailable

TRANSFORMS = Path(__file__).resolve().parent.parent / "transforms"
OLDEST_SUPPORTED = "5.17.0"


def _strings_bound_to(function: ast.AST, name: str) -> set[str]:
    """String constants assigned to (or iterated into) `name` anywhere in `function`."""
    found = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            value = node.value
        elif isinstance(node, ast.For) and isinstance(node.target, ast.Name) and node.target.id == name:
            value = node.iter
        else:
            continue
        found |= {c.value for c in ast.walk(value) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return found


def _copied_from_input(function: ast.AST, name: str) -> bool:
    """`for module, obj, ... in plan["..._imports"]:` unpacks imports read from the input code."""
    return any(
        isinstance(node, ast.For) and isinstance(node.target, ast.Tuple)
        and any(isinstance(e, ast.Name) and e.id == name for e in node.target.elts)
        and not any(isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value.startswith("transformers")
                    for c in ast.walk(node.iter))
        for node in ast.walk(function)
    )


def emitted_imports() -> set[tuple[str, str]]:
    pairs = set()
    for path in sorted(TRANSFORMS.glob("*.py")):
        tree = ast.parse(path.read_text())
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for function in functions:
            for call in ast.walk(function):
                if not (isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "add_needed_import"):
                    continue
                module = call.args[1]
                if isinstance(module, ast.Name) and _copied_from_input(function, module.id):
                    continue  # an import the legacy code itself had, carried over with the code it serves
                assert isinstance(module, ast.Constant), f"{path.name}:{call.lineno}: module is not a literal"
                if len(call.args) < 3 or not module.value.startswith("transformers"):
                    continue  # `import torch` and the like
                name = call.args[2]
                if isinstance(name, ast.Constant):
                    names = {name.value}
                else:
                    names = _strings_bound_to(function, name.id)
                    assert names, f"{path.name}:{call.lineno}: cannot tell which names `{name.id}` holds"
                pairs |= {(module.value, n) for n in names}
    return pairs


def test_the_scan_finds_what_the_transforms_emit():
    pairs = emitted_imports()
    assert ("transformers.modeling_utils", "ALL_ATTENTION_FUNCTIONS") in pairs
    assert {("transformers.masking_utils", "create_causal_mask"),
            ("transformers.masking_utils", "create_sliding_window_causal_mask")} <= pairs


def test_emitted_imports_exist_in_the_installed_transformers():
    missing = [f"{m}.{n}" for m, n in sorted(emitted_imports()) if not hasattr(importlib.import_module(m), n)]
    assert not missing


def test_emitted_imports_exist_in_the_oldest_supported_transformers(cache_dir):
    try:
        env = ensure_reference_env(OLDEST_SUPPORTED, cache_dir)
    except ReferenceUnavailable as exc:
        pytest.skip(f"no transformers {OLDEST_SUPPORTED} environment: {exc}")
    script = (
        "import importlib, json, sys\n"
        "missing = []\n"
        "for module, name in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        getattr(importlib.import_module(module), name)\n"
        "    except (ImportError, AttributeError) as exc:\n"
        "        missing.append(f'{module}.{name}: {exc}')\n"
        "print(json.dumps(missing))\n"
    )
    pairs = json.dumps(sorted(emitted_imports()))
    completed = subprocess.run([str(env.python), "-c", script, pairs], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == []
