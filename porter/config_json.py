"""The ported repo's config.json: the input's, with what the rewritten code now declares.

Auto classes that transformers 5 removed are renamed to their replacements (a legacy
vision-language repo maps `AutoModelForVision2Seq`, which no longer exists), and auto
classes that transforms add (`state.facts["auto_map"]`) are merged in. Existing entries
are never overwritten. Keys the rewritten config class now computes itself, where the input's
value contradicted the code (`state.facts["config_json_drop"]`), are dropped.
"""

from __future__ import annotations

REPLACED_AUTO_CLASSES = {"AutoModelForVision2Seq": "AutoModelForImageTextToText"}


def updated_config(config: dict, facts: dict) -> dict:
    config = dict(config)
    auto_map = dict(config.get("auto_map") or {})
    for old, new in REPLACED_AUTO_CLASSES.items():
        if old in auto_map and new not in auto_map:
            auto_map[new] = auto_map.pop(old)
    for auto_class, reference in (facts.get("auto_map") or {}).items():
        auto_map.setdefault(auto_class, reference)
    if auto_map:
        config["auto_map"] = auto_map
    for key in facts.get("config_json_drop") or ():  # values the ported code contradicts (kv-heads-config)
        config.pop(key, None)
    return config


def processor_settings(config: dict, facts: dict) -> dict:
    """`processor_config.json` entries the rewritten processor takes (`facts["processor_config"]`):
    each a fixed `value`, or a dotted `config` path read from config.json (left out when the
    config has no such key, so the processor fails where it needs it rather than guessing)."""
    settings = {}
    for name, source in (facts.get("processor_config") or {}).items():
        if "value" in source:
            settings[name] = source["value"]
            continue
        value = config
        for part in source["config"].split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            settings[name] = value
    return settings
