"""port-model: port legacy Hugging Face remote code to transformers 5 and inference engines.

Library use (e.g. in a notebook)::

    import porter
    result = porter.port("./legacy_repo")        # writes ./legacy_repo-ported
    result.report.summary_table()                 # every check with its figures
    print(result.diff)                            # the code changes

The stages are also callable one by one: `porter.load`, `porter.analyse_repo`,
`porter.rewrite_code`, `porter.convert_checkpoint`, `porter.verify`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from pathlib import Path  # noqa: E402


def port(src: str | Path, out: str | Path | None = None, **options) -> "PortResult":  # noqa: F821
    """Port the repo at `src` into `out` (default: a new sibling folder) and verify it.

    Options are the fields of `porter.pipeline.PortOptions`: verify, device,
    reference_transformers, allow_partial, max_shard_size, cache_dir, timeout, overwrite.
    Raises `porter.errors.PortError` for input it cannot port.
    """
    from porter.pipeline import PortOptions, run_port

    progress = options.pop("progress", lambda message: None)
    return run_port(src, PortOptions(out=Path(out) if out else None, **options), progress)


def __getattr__(name: str):
    # The stages are imported lazily so that `import porter` stays cheap.
    from porter import pipeline, verify, weights

    table = {
        "PortResult": pipeline.PortResult,
        "PortOptions": pipeline.PortOptions,
        "load": pipeline.load,
        "analyse_repo": pipeline.analyse_repo,
        "rewrite_code": pipeline.rewrite_code,
        "check": pipeline.check_only,
        "convert_checkpoint": weights.convert_checkpoint,
        "verify": verify.verify,
    }
    if name in table:
        return table[name]
    raise AttributeError(name)
