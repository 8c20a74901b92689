"""port-model: port legacy Hugging Face remote code to transformers 5 and inference engines.

Library use (e.g. in a notebook)::

    import porter
    result = porter.port("./legacy_repo")        # writes ./legacy_repo-ported
    result.report.summary_table()                 # every check with its figures
    print(result.diff)                            # the code changes

The stages are also callable one by one: `porter.load`, `porter.analyse_repo`,
`porter.rewrite_code`, `porter.check`, `porter.convert_checkpoint`, and
`porter.verify.verify`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from pathlib import Path  # noqa: E402


def port(src: str | Path, out: str | Path | None = None, **options) -> PortResult:  # noqa: F821
    """Port the repo at `src` into `out` (default: a new sibling folder) and verify it.

    Options are the fields of `porter.pipeline.PortOptions`: verify, device,
    reference_transformers, reference, allow_partial, max_shard_size, cache_dir, timeout, overwrite,
    sharded_proof, replicate_fused_qkv.
    Raises `porter.errors.PortError` for input it cannot port.
    """
    from porter.pipeline import PortOptions, run_port

    progress = options.pop("progress", lambda message: None)
    return run_port(src, PortOptions(out=Path(out) if out else None, **options), progress)


_LAZY = {
    "PortResult": ("porter.pipeline", "PortResult"),
    "PortOptions": ("porter.pipeline", "PortOptions"),
    "load": ("porter.pipeline", "load"),
    "analyse_repo": ("porter.pipeline", "analyse_repo"),
    "rewrite_code": ("porter.pipeline", "rewrite_code"),
    "check": ("porter.pipeline", "check_only"),
    "check_contract": ("porter.contract_check", "check_contract"),
    "convert_checkpoint": ("porter.weights", "convert_checkpoint"),
}


def __getattr__(name: str):
    # The stages are imported on first use so that `import porter` stays cheap.
    if name == "verify":  # the subpackage: porter.verify.verify, VerifyOptions
        import importlib

        return importlib.import_module("porter.verify")
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'porter' has no attribute {name!r}")
