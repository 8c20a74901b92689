"""Where the legacy code runs to give the reference (CONTRACT F1).

`own` (the default): in an environment with the code's own transformers release, or the
nearest installable one. `current`: under the installed transformers, with the
compatibility shims of `legacy_shims.py`; a weaker reference, since the shims stand in
for what the code was written against. `own-or-current`: the own release, and the
installed transformers only when no environment for it can be had (the report keeps why).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from porter.environments import ensure_nearest_env, link_packages, remote_code_imports
from porter.errors import ReferenceUnavailable
from porter.verify.child import current_python

OWN, CURRENT, OWN_OR_CURRENT = "own", "current", "own-or-current"
REFERENCE_CHOICES = (OWN, CURRENT, OWN_OR_CURRENT)
OWN_KIND = "own environment"
SHIMMED_KIND = "installed transformers with compatibility shims (weaker reference)"
HINT = (
    "`--reference own-or-current` (or `current`) runs the legacy code under the installed transformers "
    "with compatibility shims instead, a weaker reference"
)


@dataclass
class Reference:
    """Where to run the legacy code, and what the report says about it."""

    python: Path | str
    shims: bool
    info: dict = field(default_factory=dict)  # becomes report.reference

    @property
    def weaker(self) -> bool:
        return self.shims

    def check_name(self) -> str:
        if self.weaker:
            return "reference run (weaker: installed transformers with compatibility shims)"
        return "reference run"

    def describe(self, ran_under: str) -> str:
        """The F1 detail of a reference run that worked."""
        if not self.weaker:
            text = f"legacy code ran under transformers {ran_under}"
            reason = self.info.get("nearest_release_reason")
            return f"{text} ({reason})" if reason else text
        shims = ", ".join(self.info.get("shims") or []) or "none needed"
        text = f"legacy code ran under the installed transformers {ran_under}, not its own release; shims: {shims}"
        why = self.info.get("own_release_error")
        return f"{text}; own release unavailable: {why}" if why else text


def prepare_reference(legacy_repo: Path, version: str | None, choice: str, cache_dir, progress) -> Reference:
    """The reference for `choice`; raises ReferenceUnavailable (with the hint) when there is none."""
    if choice not in REFERENCE_CHOICES:
        raise ValueError(f"reference must be one of {REFERENCE_CHOICES}, not {choice!r}")
    if choice == CURRENT:
        return _shimmed(version, None)
    try:
        if not version:
            raise ReferenceUnavailable("config.json names no transformers_version; pass --reference-transformers")
        progress(f"preparing the transformers {version} reference environment")
        env, release = ensure_nearest_env(version, cache_dir)
        link_packages(env, remote_code_imports(legacy_repo, env))
    except ReferenceUnavailable as exc:
        if choice == OWN_OR_CURRENT:
            return _shimmed(version, str(exc))
        raise ReferenceUnavailable(f"{exc}\n{HINT}") from None
    info = {
        "transformers_version": release.version,
        "requested_transformers_version": release.requested,
        "kind": OWN_KIND,
        "environment": str(env.root),
        "environment_reused": env.reused,
        "environment_build_seconds": round(env.build_seconds, 1),
    }
    if release.reason:
        info["nearest_release_reason"] = release.reason
        info["notes"] = [release.reason]
    return Reference(env.python, shims=False, info=info)


def _shimmed(version: str | None, own_release_error: str | None) -> Reference:
    import transformers

    info = {
        "transformers_version": transformers.__version__,
        "requested_transformers_version": version,
        "kind": SHIMMED_KIND,
        "weaker": True,
        "notes": [
            "the legacy code ran under the installed transformers with compatibility shims "
            "(docs/reference-shims.md), not in its own release: a weaker reference"
        ],
    }
    if own_release_error:
        info["own_release_error"] = own_release_error
        info["notes"].append(f"its own release could not be used: {own_release_error}")
    return Reference(current_python(), shims=True, info=info)
