"""Real remote code, as packages on the registry vendor it, made into remote-code repos.

Hub repos with `trust_remote_code` cannot be fetched here, but several packages ship a copy
of such a repo's code (its `configuration_*.py`, `modeling_*.py` and any helper files beside
them). Each entry copies those files out of the package unchanged, writes a tiny
`config.json` with the `auto_map` the Hub repo has and the transformers release the code was
written for, and saves tiny random weights in the code's own parameter layout: the model is
built by that release in its own environment (so the layout is whatever the code makes),
every parameter is then drawn from a seeded generator (remote code often leaves weights
uninitialised or zero) and the state dict is saved with `torch.save`.

`REMOTE_CODE` is appended to the wide corpus, so `benchmarks/sweep_architectures.py remote`
ports and verifies every entry.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from porter.environments import ensure_reference_env, link_packages, remote_code_imports
from tests.corpus import _guard_optional_imports


def fetch_package(package: str, version: str, cache_dir: Path) -> Path:
    """`pip download --no-deps package==version` (a wheel, or the sdist where there is none), once."""
    target = cache_dir / "wheels"
    target.mkdir(parents=True, exist_ok=True)
    stems = {package.replace("-", "_"), package}

    def found() -> list[Path]:
        return sorted(p for s in stems for p in [*target.glob(f"{s}-{version}-*.whl"), *target.glob(f"{s}-{version}.tar.gz")])

    if not found():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{package}=={version}", "-d", str(target)],
            check=True,
        )
    return found()[0]


def read_member(archive_path: Path, member: str) -> bytes:
    """One file of a wheel (zip) or an sdist (tar.gz, whose members sit under `name-version/`)."""
    if archive_path.suffix == ".whl":
        with zipfile.ZipFile(archive_path) as archive:
            return archive.read(member)
    with tarfile.open(archive_path) as archive:
        top = archive.getnames()[0].split("/")[0]
        extracted = archive.extractfile(f"{top}/{member}")
        if extracted is None:
            raise FileNotFoundError(member)
        return extracted.read()


def guard_imports(text: str, modules: tuple[str, ...]) -> str:
    """Wrap module-level imports of the vendoring package (which a Hub repo would not have) in
    try/except ImportError, as remote code guards its optional imports."""
    if not modules:
        return text
    names = "|".join(re.escape(m) for m in modules)
    pattern = re.compile(rf"^((?:from|import) (?:{names})\b.*)$", re.MULTILINE)
    return pattern.sub(lambda m: f"try:\n    {m[1]}\nexcept ImportError:\n    pass", text)


@dataclass
class RemoteCodeRepo:
    """One remote-code repo vendored in a registry package."""

    name: str
    package: str
    package_version: str
    folder: str  # the code's folder inside the package
    files: tuple[str, ...]
    version: str  # the transformers release the code was written for
    auto_map: dict
    config: dict
    architectures: list[str]
    head_auto: str = "AutoModelForCausalLM"
    # Imports of the vendoring package itself, guarded so the files stand alone as on the Hub.
    vendor_imports: tuple[str, ...] = ()
    # In-package copies import kernels under availability checks; Hub repos used try/except.
    guard_kernels: bool = False
    # Files of the Hub repo that the package leaves out, as stand-ins (name -> text).
    stand_ins: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"remote-{self.name}"

    def build(self, cache_dir: Path) -> Path:
        out_dir = cache_dir / "repos" / f"remote_{self.name.replace('-', '_')}_{self.package_version.replace('.', '_')}"
        if (out_dir / ".complete").exists():
            return out_dir
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        archive = fetch_package(self.package, self.package_version, cache_dir)
        for name in self.files:
            text = read_member(archive, f"{self.folder}/{name}").decode()
            text = guard_imports(text, self.vendor_imports)
            (out_dir / name).write_text(_guard_optional_imports(text) if self.guard_kernels else text)
        for name, text in self.stand_ins.items():
            (out_dir / name).write_text(text)
        config = {
            **self.config,
            "architectures": self.architectures,
            "auto_map": self.auto_map,
            "torch_dtype": "float32",
            "transformers_version": self.version,
        }
        (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        _save_random_weights(out_dir, self.version, self.head_auto, cache_dir)
        for cache in out_dir.glob("__pycache__"):
            shutil.rmtree(cache)
        (out_dir / ".complete").write_text("ok\n")
        return out_dir


def _save_random_weights(out_dir: Path, version: str, head_auto: str, cache_dir: Path) -> None:
    """Build the model with `version` in its own environment and save seeded random weights
    in its own layout: norms near one, everything else small noise; buffers as the code made them."""
    env = ensure_reference_env(version, cache_dir)
    # Releases from 4.36 pick sdpa by default, which some remote code declares but lacks.
    eager = ', attn_implementation="eager"' if tuple(int(p) for p in version.split(".")[:2]) >= (4, 36) else ""
    link_packages(env, remote_code_imports(out_dir, env))
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoConfig, {head_auto}
        config = AutoConfig.from_pretrained({str(out_dir)!r}, trust_remote_code=True)
        model = {head_auto}.from_config(config, trust_remote_code=True{eager}).eval()
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.copy_(1.0 + 0.1 * noise if parameter.dim() == 1 and "norm" in name.lower() else 0.2 * noise)
        torch.save(model.state_dict(), {str(out_dir / "pytorch_model.bin")!r})
        """
    )
    subprocess.run([str(env.python), "-c", script], check=True, cwd=out_dir, env={**os.environ, "HF_HUB_OFFLINE": "1"})


TOKENS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}

XTUNER = ("xtuner", "0.2.0")
COLOSSALAI = ("colossalai", "0.5.0")
LLAVA = ("llava-torch", "1.1.1")

CHATGLM2_FILES = ("configuration_chatglm.py", "modeling_chatglm.py")
# The Hub repo's quantization.py (int4/int8 kernels from cpm_kernels) is not vendored; the
# modeling file imports it only inside `quantize`, but transformers copies every relative import.
CHATGLM2_QUANTIZATION = '''"""Stand-in for the quantization kernels, which this copy of the code does not ship."""


def quantize(model, weight_bit_width, empty_init=False, device=None):
    raise NotImplementedError("quantization_bit > 0 needs the quantization kernels")
'''
CHATGLM2_MAP = {
    "AutoConfig": "configuration_chatglm.ChatGLMConfig",
    "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
}
TINY_CHATGLM2 = dict(
    num_layers=2, padded_vocab_size=128, hidden_size=64, ffn_hidden_size=128, kv_channels=16,
    num_attention_heads=4, seq_length=128, layernorm_epsilon=1e-5, rmsnorm=True, add_bias_linear=False,
    add_qkv_bias=True, multi_query_attention=True, multi_query_group_num=2, apply_query_key_layer_scaling=True,
    attention_softmax_in_fp32=True, post_layer_norm=True, model_type="chatglm", **TOKENS,
)

MPT_FILES = (
    "adapt_tokenizer.py", "attention.py", "blocks.py", "configuration_mpt.py", "custom_embedding.py",
    "flash_attn_triton.py", "hf_prefixlm_converter.py", "meta_init_context.py", "modeling_mpt.py", "norm.py",
    "param_init_fns.py",
)
MPT_MAP = {"AutoConfig": "configuration_mpt.MPTConfig", "AutoModelForCausalLM": "modeling_mpt.MPTForCausalLM"}
TINY_MPT = dict(
    d_model=64, n_heads=4, n_layers=2, expansion_ratio=2, max_seq_len=128, vocab_size=128, no_bias=True,
    norm_type="low_precision_layernorm", model_type="mpt", use_cache=True, **TOKENS,
)
MPT_ALIBI = {"attn_impl": "torch", "alibi": True, "alibi_bias_max": 8, "attn_pdrop": 0.0, "qk_ln": False,
             "clip_qkv": None, "softmax_scale": None, "prefix_lm": False, "attn_uses_sequence_id": False,
             "attn_type": "multihead_attention"}

INTERNLM2_REWARD_MAP = {
    "AutoConfig": "configuration_internlm2.InternLM2Config",
    "AutoModel": "modeling_internlm2.InternLM2ForRewardModel",
}
TINY_INTERNLM2 = dict(
    vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=10000, bias=False,
    attn_implementation="eager", tie_word_embeddings=False, pretraining_tp=1, model_type="internlm2", **TOKENS,
)

TINY_MIXTRAL = dict(
    vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128, num_local_experts=4, num_experts_per_tok=2,
    sliding_window=None, rms_norm_eps=1e-6, tie_word_embeddings=False, model_type="mixtral", **TOKENS,
)

TINY_DEEPSEEK_V2 = dict(
    vocab_size=128, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1, n_routed_experts=4, num_experts_per_tok=2,
    first_k_dense_replace=1, moe_layer_freq=1, routed_scaling_factor=1.0, topk_method="greedy", n_group=1,
    topk_group=1, norm_topk_prob=False, scoring_func="softmax", aux_loss_alpha=0.0, seq_aux=True,
    q_lora_rank=None, kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
    max_position_embeddings=128, rope_theta=10000, rope_scaling=None, attention_bias=False,
    tie_word_embeddings=False, model_type="deepseek_v2", **TOKENS,
)

REMOTE_CODE: list[RemoteCodeRepo] = [
    RemoteCodeRepo(
        "chatglm2-colossalai", *COLOSSALAI, "colossalai/shardformer/modeling/chatglm2_6b", CHATGLM2_FILES,
        "4.30.2", CHATGLM2_MAP, TINY_CHATGLM2, ["ChatGLMModel"],
        stand_ins={"quantization.py": CHATGLM2_QUANTIZATION},
    ),
    RemoteCodeRepo(
        "mpt-alibi-llava", *LLAVA, "llava/model/language_model/mpt", MPT_FILES, "4.30.2", MPT_MAP,
        {**TINY_MPT, "learned_pos_emb": False, "attn_config": MPT_ALIBI}, ["MPTForCausalLM"],
    ),
    RemoteCodeRepo(
        "mpt-qkln-llava", *LLAVA, "llava/model/language_model/mpt", MPT_FILES, "4.30.2", MPT_MAP,
        {**TINY_MPT, "learned_pos_emb": True, "attn_config": {**MPT_ALIBI, "alibi": False, "qk_ln": True,
                                                               "clip_qkv": 6.0}},
        ["MPTForCausalLM"],
    ),
    RemoteCodeRepo(
        "internlm2-reward-xtuner", *XTUNER, "xtuner/tools/model_converters/modeling_internlm2_reward",
        ("configuration_internlm2.py", "modeling_internlm2.py"), "4.44.2", INTERNLM2_REWARD_MAP,
        TINY_INTERNLM2, ["InternLM2ForRewardModel"], head_auto="AutoModel",
    ),
    RemoteCodeRepo(
        "mixtral-xtuner", *XTUNER, "xtuner/model/transformers_models/mixtral",
        ("configuration_mixtral.py", "modeling_mixtral.py"), "4.44.2",
        {"AutoConfig": "configuration_mixtral.MixtralConfig", "AutoModel": "modeling_mixtral.MixtralModel",
         "AutoModelForCausalLM": "modeling_mixtral.MixtralForCausalLM"},
        TINY_MIXTRAL, ["MixtralForCausalLM"], vendor_imports=("xtuner",), guard_kernels=True,
    ),
    RemoteCodeRepo(
        "deepseek-v2-xtuner", *XTUNER, "xtuner/model/transformers_models/deepseek_v2",
        ("configuration_deepseek.py", "modeling_deepseek.py"), "4.44.2",
        {"AutoConfig": "configuration_deepseek.DeepseekV2Config", "AutoModel": "modeling_deepseek.DeepseekV2Model",
         "AutoModelForCausalLM": "modeling_deepseek.DeepseekV2ForCausalLM"},
        TINY_DEEPSEEK_V2, ["DeepseekV2ForCausalLM"], vendor_imports=("xtuner",), guard_kernels=True,
    ),
]

# Hub remote code that more packages vendor unchanged.
IPEX_LLM = ("ipex-llm", "2.1.0")
FLAGAI = ("flagai", "1.8.2")
FLAG_EMBEDDING_LAYERWISE = ("FlagEmbedding", "1.2.11")
FLAG_EMBEDDING_GEMMA = ("FlagEmbedding", "1.3.4")
IPEX_LLM_MODELS = "ipex_llm/transformers/gguf/models/model_implement"

TINY_LLAMA_LIKE = dict(
    vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=False, **TOKENS,
)
# Yuan 2.0: switches as the Hub repo's config.json has them, position/mask resets on
# end-of-document tokens off (they re-derive positions from the token ids).
TINY_YUAN2 = dict(
    {**TINY_LLAMA_LIKE, "tie_word_embeddings": True}, model_type="yuan", causal_mask=True,
    use_flash_attention=False, reset_attention_mask=False, reset_position_ids=False, use_loss_mask=False,
    eod_token=2, sep_token=3, dropout=0.0,
)
TINY_MINICPM = dict(
    {**TINY_LLAMA_LIKE, "tie_word_embeddings": True}, num_key_value_heads=2, model_type="minicpm",
    rope_theta=10000.0, scale_emb=12, dim_model_base=32, scale_depth=1.4, start_layer=1, head_multi=True,
    head_type="simple",
)
TINY_COST_WISE_GEMMA = dict(
    vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=128, sliding_window=64,
    query_pre_attn_scalar=16, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
    model_type="cost_wise_gemma", start_layer=1, layer_sep=1, layer_wise=False, **TOKENS,
)

REMOTE_CODE += [
    RemoteCodeRepo(
        "baichuan-ipex-llm", *IPEX_LLM, f"{IPEX_LLM_MODELS}/baichuan",
        ("configuration_baichuan.py", "modeling_baichuan.py"), "4.30.2",
        {"AutoConfig": "configuration_baichuan.BaiChuanConfig",
         "AutoModelForCausalLM": "modeling_baichuan.BaiChuanForCausalLM"},
        {**TINY_LLAMA_LIKE, "model_type": "baichuan"}, ["BaiChuanForCausalLM"],
    ),
    RemoteCodeRepo(
        "yuan2-ipex-llm", *IPEX_LLM, f"{IPEX_LLM_MODELS}/yuan2", ("configuration_yuan.py", "yuan_hf_model.py"),
        "4.30.2",
        {"AutoConfig": "configuration_yuan.YuanConfig", "AutoModelForCausalLM": "yuan_hf_model.YuanForCausalLM"},
        TINY_YUAN2, ["YuanForCausalLM"],
    ),
    RemoteCodeRepo(
        "aquila2-flagai", *FLAGAI, "flagai/model/aquila2", ("configuration_aquila.py", "modeling_aquila.py", "utils.py"),
        "4.30.2",
        {"AutoConfig": "configuration_aquila.AquilaConfig", "AutoModelForCausalLM": "modeling_aquila.AquilaForCausalLM"},
        {**TINY_LLAMA_LIKE, "num_key_value_heads": 2, "model_type": "aquila"}, ["AquilaForCausalLM"],
        vendor_imports=("flagai",),
    ),
    RemoteCodeRepo(
        "minicpm-layerwise-flagembedding", *FLAG_EMBEDDING_LAYERWISE,
        "FlagEmbedding/llm_reranker/finetune_for_layerwise",
        ("configuration_minicpm_reranker.py", "modeling_minicpm_reranker.py"), "4.36.2",
        {"AutoConfig": "configuration_minicpm_reranker.LayerWiseMiniCPMConfig",
         "AutoModel": "modeling_minicpm_reranker.LayerWiseMiniCPMModel",
         "AutoModelForCausalLM": "modeling_minicpm_reranker.LayerWiseMiniCPMForCausalLM"},
        TINY_MINICPM, ["LayerWiseMiniCPMForCausalLM"],
    ),
    # The same code with only its base model mapped: the MiniCPM decoder without the per-layer heads.
    RemoteCodeRepo(
        "minicpm-layerwise-base-flagembedding", *FLAG_EMBEDDING_LAYERWISE,
        "FlagEmbedding/llm_reranker/finetune_for_layerwise",
        ("configuration_minicpm_reranker.py", "modeling_minicpm_reranker.py"), "4.36.2",
        {"AutoConfig": "configuration_minicpm_reranker.LayerWiseMiniCPMConfig",
         "AutoModel": "modeling_minicpm_reranker.LayerWiseMiniCPMModel"},
        TINY_MINICPM, ["LayerWiseMiniCPMModel"], head_auto="AutoModel",
    ),
    RemoteCodeRepo(
        "gemma2-costwise-flagembedding", *FLAG_EMBEDDING_GEMMA, "FlagEmbedding/inference/reranker/decoder_only/models",
        ("gemma_config.py", "gemma_model.py"), "4.44.2",
        {"AutoConfig": "gemma_config.CostWiseGemmaConfig", "AutoModel": "gemma_model.CostWiseGemmaModel",
         "AutoModelForCausalLM": "gemma_model.CostWiseGemmaForCausalLM"},
        TINY_COST_WISE_GEMMA, ["CostWiseGemmaModel"], head_auto="AutoModel", guard_kernels=True,
    ),
]
