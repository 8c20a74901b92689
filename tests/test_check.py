"""`port-model check`: the engine contract on a legacy repo, its port, a modern repo, and
ported repos broken on purpose. Every dynamic check runs the real model in a child process
under the installed transformers (probe kernel, packed call, continuous batching)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import torch

import porter
from porter.contract_check import check_contract
from porter.report import FAIL, PASS
from tests.modern import modern_llama

CLI = [sys.executable, "-m", "porter.cli", "check"]


def run_check(*args):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=900)


def rows(checks, item, status=None):
    return [c for c in checks if c.item == item and (status is None or c.status == status)]


@pytest.fixture(scope="module")
def ported_llama(llama_436, tmp_path_factory):
    out = tmp_path_factory.mktemp("check") / "llama-ported"
    porter.port(llama_436, out, verify=False)
    return out


def _copy_with_attention_call(src, dst, rewrite):
    """A copy of a ported repo whose attention kernel call is changed by `rewrite`."""
    shutil.copytree(src, dst)
    modeling = next(dst.glob("modeling_*.py"))
    text = modeling.read_text()
    call = re.search(r"( +)attn_output, attn_weights = attention_interface\(\n(?:.*\n)*?\1\)\n", text)
    assert call, "the ported attention kernel call was not found"
    modeling.write_text(text.replace(call[0], rewrite(call[0], call[1])))
    return dst


def test_legacy_repo_fails_with_what_porting_fixes_and_why_engines_fail_it(sample_repo):
    result = run_check(sample_repo, "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["needs_porting"] and not report["passed"]
    static = {c["item"]: c for c in report["checks"] if c["status"] == FAIL and c["file"]}
    for item in ("B1", "B5", "C1", "C3"):  # per-backend classes, hand-built masks, no kwargs, rope by length
        assert static[item]["fixable"] is True, static[item]
        assert static[item]["file"] == "modeling_tiny_legacy_lm.py" and static[item]["line"] > 0
    assert "TinyLegacyLMSdpaAttention re-implements TinyLegacyLMAttention" in static["B1"]["detail"]
    assert "porting changes: attention-classes" in static["B1"]["detail"]
    assert "builds its mask without masking_utils" in static["B5"]["detail"]
    ran = {c["name"]: c for c in report["checks"] if not c["file"]}
    # The legacy code loads under transformers 5, but an engine's kernel breaks it.
    assert ran["loads under current transformers"]["status"] == PASS
    routed = ran["attention goes through the interface, once per layer"]
    assert routed["status"] == FAIL and "KeyError: 'port_model_probe'" in routed["detail"]
    packed = ran["packed sequences, engine-style call"]
    assert packed["status"] == FAIL and "unexpected keyword argument 'cu_seq_lens_q'" in packed["detail"]
    batching = ran["continuous batching equals generate"]
    assert batching["status"] == FAIL and "generation_config" in batching["detail"]  # no GenerationMixin


def test_ported_repo_passes_every_engine_check(ported_llama):
    result = check_contract(ported_llama, device="cpu")
    assert not [c for c in result.checks if c.status == FAIL], "\n" + result.table()
    assert {c.item for c in result.checks if c.status == PASS} >= {"D1", "D3"}  # the plans the port wrote
    assert not result.changes, result.changes  # nothing left to port
    names = {c.name for c in result.checks if c.status == PASS}
    assert {"packed sequences, engine-style call", "continuous batching (sdpa) equals generate",
            "continuous batching (paged|eager) equals generate",
            "generate with the KV cache equals a full recompute"} <= names
    packed = next(c for c in result.checks if c.name == "packed sequences, engine-style call")
    assert packed.figures["boundaries_from"] == ["cu_seq_lens_q"] and packed.figures["kernel_calls"] == 2


def test_modern_repo_passes(cache_dir):
    result = run_check(modern_llama(cache_dir), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["passed"]
    assert {c["item"] for c in report["checks"] if c["status"] == PASS} >= {"A1", "B1", "B5", "C1", "C3", "C5", "D1", "D3"}


def test_attention_that_drops_kwargs_fails_c1_and_the_packed_call(ported_llama, tmp_path):
    broken = _copy_with_attention_call(
        ported_llama, tmp_path / "no-kwargs", lambda call, indent: call.replace(f"{indent}    **kwargs,\n", "")
    )
    result = check_contract(broken, device="cpu")
    c1 = rows(result.checks, "C1", FAIL)
    assert {c.name for c in c1} == {"**kwargs flow from every head down to the kernel", "kwargs reach attention"}
    # The forward takes **kwargs already: the rewrite has nothing to thread, so porting does not fix it.
    assert "does not pass **kwargs to the attention kernel" in c1[0].detail and c1[0].fixable is False
    packed = next(c for c in result.checks if c.name == "packed sequences, engine-style call")
    assert packed.status == FAIL and "neither cu_seq_lens_q nor position_ids" in packed.detail
    assert rows(result.checks, "B1", PASS) and not rows(result.checks, "B1", FAIL)


def test_attention_called_twice_fails_b1(ported_llama, tmp_path):
    broken = _copy_with_attention_call(
        ported_llama, tmp_path / "twice", lambda call, indent: call + call
    )
    result = check_contract(broken, device="cpu")
    b1 = {c.name: c for c in rows(result.checks, "B1", FAIL)}
    assert "fetches the kernel 1 and calls it 2 times" in b1["attention fetched once from ALL_ATTENTION_FUNCTIONS and called once"].detail
    dynamic = b1["attention goes through the interface, once per layer"]
    assert dynamic.figures == {"calls": 4, "layers": 2}
    assert not rows(result.checks, "C1", FAIL)


def test_cannot_run_is_exit_2(tmp_path):
    assert run_check(tmp_path / "missing").returncode == 2


def test_bf16_variant_tolerances_follow_f2():
    """The GPU rows' verdicts, from figures as the child reports them (CONTRACT F2: bf16
    relative error <= 1e-2 and NMSE <= 1e-4)."""
    from porter.verify.engine import engine_checks

    def variant(relative_error, nmse):
        figures = {"max_abs_diff": 0.5, "relative_error": relative_error, "nmse": nmse, "kernel_calls": 2,
                   "boundaries_from": ["cu_seq_lens_q"]}
        return {"kernel": "flash_attention_2", "dtype": "bfloat16", "device": "cuda", "packed": figures}

    within, relative, nmse = engine_checks([variant(5e-3, 5e-5), variant(2e-2, 5e-5), variant(5e-3, 2e-4)])
    assert within.name == "packed sequences, engine-style call, bfloat16 flash_attention_2 on cuda"
    assert (within.status, relative.status, nmse.status) == (PASS, FAIL, FAIL)
    assert "attention crosses sequence boundaries" in relative.detail


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_gpu_runs_every_installed_kernel_in_bf16(ported_llama):
    result = check_contract(ported_llama, device="cuda")
    gpu = [c for c in result.checks if c.name.endswith("on cuda")]
    assert any("bfloat16 sdpa" in c.name for c in gpu) and any("flex_attention" in c.name for c in gpu)
    assert all(c.status == PASS for c in gpu), "\n" + result.table()


@pytest.fixture
def engine_run(monkeypatch):
    """The child's engine module, imported the way the child runs it: by path, beside its siblings."""
    from pathlib import Path

    import porter.verify

    monkeypatch.syspath_prepend(str(Path(porter.verify.__file__).parent))
    import engine_run

    return engine_run


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the CPU answer")
def test_gpu_kernel_list_on_a_machine_without_cuda(engine_run):
    """transformers' own availability checks decide: flash kernels need CUDA, flex ships with torch."""
    assert engine_run.gpu_kernels() == ["sdpa", "flex_attention"]


@pytest.mark.parametrize("installed, kernels", [
    ([], ["sdpa"]),
    (["flex_attention"], ["sdpa", "flex_attention"]),
    (["flex_attention", "flash_attention_2"], ["sdpa", "flash_attention_2", "flex_attention"]),
    (["flash_attention_3", "flash_attention_2", "flex_attention"],
     ["sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"]),
])
def test_gpu_variants_follow_the_installed_kernels(engine_run, installed, kernels):
    """Without CUDA, the choice the child makes on a GPU: sdpa and every installed kernel, and
    continuous batching on sdpa, paged|eager and the flash kernel of the run (it takes no flex)."""
    assert engine_run.gpu_kernels(installed) == kernels
    for kernel, batched in engine_run.gpu_variants(kernels):
        assert batched == ("sdpa", "paged|eager") + ((kernel,) if kernel.startswith("flash") else ())


def test_bf16_figures_of_real_bf16_attention_pass_f2_and_leaking_attention_fails(engine_run):
    """The child's comparison (`packed.compare`) on bfloat16 attention computed on the CPU, judged
    by the GPU rows' F2 bounds: bf16 rounding alone passes (though it would fail the float32
    bound), attention that reaches into the previous packed sequence fails."""
    import packed

    from porter.verify.engine import FLOAT32_TOLERANCE, packed_check

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 12, 16, generator=generator) for _ in range(3))
    attend = torch.nn.functional.scaled_dot_product_attention
    alone = attend(q[:, :, 5:], k[:, :, 5:], v[:, :, 5:], is_causal=True)  # the second sequence, float32
    in_bf16 = attend(*(t[:, :, 5:].bfloat16() for t in (q, k, v)), is_causal=True).float()
    leaking = attend(*(t.bfloat16() for t in (q, k, v)), is_causal=True)[:, :, 5:].float()

    def row(output):
        figures = {**packed.compare(alone, output), "kernel_calls": 2, "boundaries_from": ["cu_seq_lens_q"]}
        return packed_check({"kernel": "flash_attention_2", "dtype": "bfloat16", "device": "cuda", "packed": figures})

    passing, failing = row(in_bf16), row(leaking)
    assert passing.status == PASS and passing.figures["max_abs_diff"] > FLOAT32_TOLERANCE, passing
    assert passing.figures["relative_error_bound"] == 1e-2 and passing.figures["nmse_bound"] == 1e-4
    assert failing.status == FAIL and failing.figures["relative_error"] > 1e-2, failing
    assert "attention crosses sequence boundaries" in failing.detail


def test_kernel_the_model_declines_is_a_skip_not_a_failure(engine_run):
    """A model whose flags say it cannot take a kernel (ALiBi and flash, CONTRACT B4) is skipped
    on that kernel with transformers' own refusal as the reason."""
    import transformers

    class NoFlash(transformers.LlamaModel):
        _supports_flash_attn = False

    config = transformers.LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=32
    )
    with pytest.raises(ValueError) as refused:
        NoFlash._from_config(config, attn_implementation="flash_attention_2")
    reason = engine_run._declined(refused.value)
    assert reason and "does not support Flash Attention 2" in reason
    assert not engine_run._declined(RuntimeError("CUDA out of memory"))
    from porter.verify.engine import engine_checks

    [check] = engine_checks([{"kernel": "flash_attention_2", "dtype": "bfloat16", "device": "cuda", "declined": reason}])
    assert (check.item, check.status) == ("C3", "SKIP")
    assert check.name == "engine-style runs, bfloat16 flash_attention_2 on cuda" and reason in check.detail


# What `check` finds in unported legacy code of the corpus, read from the code alone: every
# failing item with a phrase of its reason. Porting fixes each of them.
LEGACY_REASONS = {
    "llama-4.30.2": {
        "A3": "LlamaForCausalLM does not inherit GenerationMixin",
        "B1": "lacks `ALL_ATTENTION_FUNCTIONS.get_interface(...)`",
        "B2": "LlamaAttention has no eager_attention_forward",
        "B3": "LlamaAttention does not set layer_idx, is_causal, scaling, num_key_value_groups",
        "B4": "does not set _supports_attention_backend = True",
        "B5": "LlamaModel builds its mask without masking_utils",
        "C1": "LlamaAttention.forward takes no **kwargs",
        "C3": "rotary tables are sized by the key length",
        "C4": "LlamaAttention.forward concatenates a tuple cache",
        "C5": "declares num_key_value_heads=2 but the code never reads it",
        "D1": "no base_model_tp_plan",
        "D3": "no base_model_pp_plan",
    },
    "gpt2-4.44.2": {
        "A2": "self.get_head_mask(...) -> _expand_head_mask(...)",
        "A3": "GPT2LMHeadModel does not inherit GenerationMixin",
        "B1": "GPT2FlashAttention2 re-implements GPT2Attention for one backend",
        "B2": "GPT2Attention has no eager_attention_forward",
        "B3": "GPT2Attention does not set scaling, num_key_value_groups",
        "B4": "does not set _supports_attention_backend = True",
        "B5": "GPT2Model builds its mask without masking_utils",
        "C1": "GPT2Attention.forward takes no **kwargs",
        "D1": "no base_model_tp_plan",
        "D3": "no base_model_pp_plan",
    },
}


@pytest.mark.parametrize("entry_id", LEGACY_REASONS)
def test_unported_corpus_repo_fails_with_its_reasons(entry_id, cache_dir):
    from tests.corpus import CORPUS

    entry = next(m for m in CORPUS if m.id == entry_id)
    result = check_contract(entry.build(cache_dir), run=False)
    failing = {c.item: c for c in result.checks if c.status == FAIL}
    assert set(failing) == set(LEGACY_REASONS[entry_id]), "\n" + result.table()
    for item, reason in LEGACY_REASONS[entry_id].items():
        assert reason in failing[item].detail and failing[item].fixable, failing[item]
        assert failing[item].file and (failing[item].line or failing[item].file.endswith(".json")), failing[item]
