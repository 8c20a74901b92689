#!/usr/bin/env python
"""Complete the tiny legacy vision-language sample: text tower, tokenizer, weights.

Usage:
    python samples/make_vlm_sample.py samples/tiny_legacy_vlm

The sample's text tower is the TinyLegacyLM sample: its configuration and modeling files
are copied beside the vision-language code, the way composite repos ship their towers.
A word-level tokenizer with an `<image>` token is written with the `tokenizers` library,
and a random checkpoint is saved by transformers 4.36.2 itself, in the cached reference
environment port-model uses (built on first use), so the weights are what a legacy user
would have saved.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

TEXT_TOWER = Path(__file__).resolve().parent / "tiny_legacy_lm"
RELEASE = "4.36.2"


def write_tokenizer(folder: Path, vocab_size: int, image_token_index: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "<image>": image_token_index}
    vocab = {**specials, **{f"w{i}": i for i in range(len(specials), vocab_size)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.save(str(folder / "tokenizer.json"))
    processor = "processing_tiny_legacy_vlm.TinyLegacyVLMProcessor"
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
        "unk_token": "<unk>", "additional_special_tokens": ["<image>"], "model_max_length": 128,
        "processor_class": "TinyLegacyVLMProcessor", "auto_map": {"AutoProcessor": processor},
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    processor_config = {"processor_class": "TinyLegacyVLMProcessor", "auto_map": {"AutoProcessor": processor}}
    (folder / "processor_config.json").write_text(json.dumps(processor_config, indent=2) + "\n")


def write_weights(folder: Path, cache_dir: Path | None) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from porter.environments import ensure_reference_env

    env = ensure_reference_env(RELEASE, cache_dir)
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoConfig, AutoModelForVision2Seq
        config = AutoConfig.from_pretrained({str(folder)!r}, trust_remote_code=True)
        torch.manual_seed(0)
        model = AutoModelForVision2Seq.from_config(config, trust_remote_code=True).eval()
        model.save_pretrained({str(folder)!r}, safe_serialization=False)
        """
    )
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(folder / ".hf_modules")}
    subprocess.run([str(env.python), "-c", script], check=True, cwd=folder, env=environ)
    shutil.rmtree(folder / ".hf_modules", ignore_errors=True)
    # save_pretrained rewrites config.json: keep the sample's own.


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    folder = args.folder.resolve()
    config_text = (folder / "config.json").read_text()
    config = json.loads(config_text)
    for name in ("configuration_tiny_legacy_lm.py", "modeling_tiny_legacy_lm.py"):
        shutil.copy(TEXT_TOWER / name, folder / name)
    write_tokenizer(folder, config["text_config"]["vocab_size"], config["image_token_index"])
    write_weights(folder, args.cache_dir)
    (folder / "config.json").write_text(config_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
