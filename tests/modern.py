"""A repo that already follows the contract: the installed transformers' own llama code,
published as remote code, with a tiny random checkpoint saved by that release."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import transformers

from tests.corpus import TINY_LLAMA, _absolute_imports


def modern_llama(cache_dir: Path) -> Path:
    out_dir = cache_dir / "repos" / f"llama_modern_{transformers.__version__.replace('.', '_')}"
    if (out_dir / ".complete").exists():
        return out_dir
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    source = Path(transformers.__file__).parent / "models" / "llama"
    for kind in ("configuration", "modeling"):
        text = _absolute_imports((source / f"{kind}_llama.py").read_text(), "llama")
        if kind == "configuration":
            text = re.sub(r'model_type = "[^"]+"', 'model_type = "llama_modern"', text, count=1)
        (out_dir / f"{kind}_llama.py").write_text(text)
    auto_map = {
        "AutoConfig": "configuration_llama.LlamaConfig",
        "AutoModel": "modeling_llama.LlamaModel",
        "AutoModelForCausalLM": "modeling_llama.LlamaForCausalLM",
    }
    config = {"model_type": "llama_modern", "architectures": ["LlamaForCausalLM"], "auto_map": auto_map, **TINY_LLAMA}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM
        config = AutoConfig.from_pretrained({str(out_dir)!r}, trust_remote_code=True)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config, trust_remote_code=True).save_pretrained({str(out_dir)!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=out_dir)
    for cache in out_dir.glob("__pycache__"):
        shutil.rmtree(cache)
    (out_dir / ".complete").write_text("ok\n")
    return out_dir
