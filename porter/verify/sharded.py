"""Prove the parallel plans on the ported repo (CONTRACT D1-D4).

The plans were inferred from the code (porter.parallel) and written into the config class.
Here the ported model is run by transformers' own tensor-parallel loading over two
processes (`torchrun`: gloo on the CPU, or nccl with one GPU per process where the port runs on
CUDA and two GPUs are visible) and compared with the unsharded model: a wrong plan does not
crash, it computes something else, and only this comparison shows it. The child also builds
the module tree from the config on the meta device, so the plan's keys are checked against
what the model really holds.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from porter.report import FAIL, PASS, SKIP, Check, Report
from porter.verify import _max_diff, make_inputs
from porter.verify import _pad_id as pad_id
from porter.verify.child import child_environment, current_python
from porter.verify.images import image_size, is_vision_language
from porter.verify.processor_checks import placeholders_per_image, run_processor_check

RUNNER = Path(__file__).with_name("sharded_runner.py")
TP_SIZE = 2
TOLERANCE = 1e-5
SHARDING_STYLES = {"colwise", "rowwise", "colwise_rep", "rowwise_rep", "colwise_gather_output", "rowwise_split_input",
                   "packed_colwise", "packed_rowwise", "moe_tp_experts"}


@dataclass(frozen=True)
class Launch:
    """How the sharded run is started: the process group's backend and where each rank runs."""

    backend: str  # "gloo" or "nccl"
    device: str  # "cpu" or "cuda" (one GPU per rank)

    @property
    def check_name(self) -> str:
        where = "GPUs" if self.device == "cuda" else "CPU processes"
        return f"sharded logits vs unsharded, {TP_SIZE} {where}"


def choose_launch(device: str, cuda_devices: int) -> Launch:
    """nccl with one GPU per rank when the port runs on CUDA (`device` as resolved: `cuda`) and
    enough GPUs are visible; else gloo on the CPU, which every machine has."""
    if device == "cuda" and cuda_devices >= TP_SIZE:
        return Launch("nccl", "cuda")
    return Launch("gloo", "cpu")


def launch_environment(launch: Launch, env: dict[str, str]) -> dict[str, str]:
    """The child's environment for `launch`. transformers picks the backend from the machine's
    accelerator (nccl wherever CUDA is visible), so the CPU run hides the GPUs: on a machine with
    one GPU, both ranks would otherwise try to bind it."""
    env = {**env, "OMP_NUM_THREADS": "1"}
    if launch.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def head_counts(config: dict) -> dict[str, int]:
    """Every head count the config declares (attention and key/value heads), a composite's
    towers included (`vision_config.num_attention_heads`): each tower is sharded by its plan."""
    found = {}
    for where, section in [("", config), *((f"{k}.", v) for k, v in config.items() if k.endswith("_config"))]:
        if not isinstance(section, dict):
            continue
        found.update({
            f"{where}{key}": value
            for key, value in section.items()
            if isinstance(value, int) and not isinstance(value, bool) and "head" in key
            and not any(word in key for word in ("dim", "size", "layer"))
        })
    return found


def static_checks(plans: dict | None, report: Report) -> None:
    """What inference found, before anything runs: D1 coverage, D3 shape, D4 experts."""
    if not plans:
        report.add(Check("D1", "tensor-parallel plan inferred from the data flow", SKIP, "no plan was inferred"))
        return
    tp = plans.get("tp_plan") or {}
    counts = {style: sum(1 for s in tp.values() if s == style) for style in sorted(set(tp.values()))}
    problems = [p for p in plans.get("problems") or [] if "pipeline" not in p]
    no_pipeline = [p for p in plans.get("problems") or [] if "pipeline" in p]  # a tower without one, say
    status = FAIL if problems else PASS
    detail = "; ".join(problems or [*no_pipeline, *(plans.get("notes") or [])])
    figures = {**counts, "pairs": len(plans.get("pairs") or []), "tp_plan": tp, "pp_plan": plans.get("pp_plan") or {},
               "replicated": plans.get("replicated") or {}, "fused": plans.get("fused") or {}}
    report.add(Check("D1", "tensor-parallel plan inferred from the data flow", status, detail, figures))
    if plans.get("experts"):
        report.add(experts_check(plans))
    if plans.get("packed_experts"):
        report.add(packed_experts_check(plans))


# Why a list of expert modules gets no expert-parallel plan: transformers' expert styles act on
# one module that holds every expert.
NO_EXPERT_PARALLEL = (
    "no expert-parallel plan: transformers' expert styles need the experts packed into one module "
    "(grouped_gemm shards a 3-D [num_experts, ...] parameter along the expert dimension; "
    "moe_tp_experts and ep_dispatch_experts hook a module called as experts(hidden_states, top_k_index, "
    "top_k_weights)), while a ModuleList of expert modules is run one by one by the block's own loop"
)


def experts_check(plans: dict) -> Check:
    """D4: each expert of a ModuleList sharded like an MLP (column- then row-parallel), the
    router replicated, so every rank routes the same tokens; D2 proves the numbers."""
    tp = plans.get("tp_plan") or {}
    experts, routers = plans["experts"], plans.get("routers") or []
    name = "mixture-of-experts plan (tensor-parallel experts)"
    figures = {"experts": experts, "routers": routers}
    inside = {k: v for k, v in tp.items() if any(k.startswith(f"{e}.*.") for e in experts)}
    split_routers = {r: tp[r] for r in routers if tp.get(r) in SHARDING_STYLES}
    paired = [c for _, c in plans.get("pairs") or [] if c in inside]
    if not routers:
        return Check("D4", name, FAIL, f"experts {experts} recognised but no router found", figures)
    if split_routers:
        return Check("D4", name, FAIL, f"router split {split_routers}: ranks would route differently", figures)
    unsplit = sorted(k for k, v in inside.items() if v not in SHARDING_STYLES)
    if not paired or unsplit:
        return Check("D4", name, SKIP, f"the experts' projections are not split ({unsplit or 'none paired'}); "
                     + NO_EXPERT_PARALLEL, figures)
    figures["expert_plan"] = inside
    return Check("D4", name, PASS, f"each expert column- then row-parallel ({len(paired)} pair(s) per expert), "
                 f"router {', '.join(routers)} replicated; proven with the whole plan by D2; " + NO_EXPERT_PARALLEL,
                 figures)


def packed_experts_check(plans: dict) -> Check:
    """D4 for packed experts (one 3-D weight `[experts, out, in]` per module): each pair split
    within every expert in transformers' MoE styles, the router replicated; D2 proves the numbers."""
    tp, packed = plans.get("tp_plan") or {}, plans["packed_experts"]
    routers = plans.get("routers") or []
    name = "mixture-of-experts plan (packed experts)"
    split = {p: tp[f"{p}.{w}"] for p, w in packed.items() if tp.get(f"{p}.{w}") in SHARDING_STYLES}
    figures = {"packed_experts": sorted(packed), "routers": routers,
               "expert_plan": {k: v for k, v in tp.items() if any(k == p or k.startswith(f"{p}.") for p in packed)}}
    split_routers = {r: tp[r] for r in routers if tp.get(r) in SHARDING_STYLES}
    kept = [f"{p} ({(plans.get('replicated') or {}).get(p, 'not paired')})" for p in packed if p not in split]
    if split_routers:
        return Check("D4", name, FAIL, f"router split {split_routers}: ranks would route differently", figures)
    if not split:
        return Check("D4", name, SKIP, "no pair of packed experts is split: " + "; ".join(kept), figures)
    if not routers:
        return Check("D4", name, FAIL, f"packed experts {sorted(split)} split but no router found", figures)
    detail = (f"weights split within each expert ({', '.join(f'{p}: {v}' for p, v in split.items())}), "
              f"router {', '.join(routers)} replicated; proven with the whole plan by D2")
    return Check("D4", name, PASS, detail + (f"; replicated: {'; '.join(kept)}" if kept else ""), figures)


def prove_sharded(
    ported_repo: Path,
    config: dict,
    plans: dict | None,
    report: Report,
    timeout: float = 900.0,
    max_new_tokens: int = 8,
    progress=lambda message: None,
    device: str = "cpu",
) -> None:
    """Add the D1-D4 checks, with figures, for the ported repo at `ported_repo`; `plans` is
    what inference found (`porter.parallel.ParallelPlans.as_dict()`); `device` is the port's
    resolved device (`cpu` or `cuda`), which with two visible GPUs makes the run nccl's."""
    static_checks(plans, report)
    launch = choose_launch(device, torch.cuda.device_count() if device == "cuda" else 0)
    declared = (plans or {}).get("tp_plan") or {}
    if declared and not set(declared.values()) & SHARDING_STYLES:
        report.add(Check("D2", launch.check_name, SKIP, "the plan splits no projection (every one replicated, see D1)"))
        return
    uneven = {k: v for k, v in head_counts(config).items() if v % TP_SIZE}
    if uneven:
        report.add(Check("D2", launch.check_name, SKIP,
                         f"head counts {uneven} do not divide by the tensor-parallel size {TP_SIZE}: the plan holds "
                         "only for sizes that divide every head count"))
        return
    work = Path(tempfile.mkdtemp(prefix="port-model-sharded-"))
    try:
        progress(f"running the ported model sharded over {TP_SIZE} processes (torchrun, {launch.backend})")
        _prove_in(work, ported_repo, config, plans, report, timeout, max_new_tokens, launch)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _prove_in(work, ported_repo, config, plans, report, timeout, max_new_tokens, launch=Launch("gloo", "cpu")) -> None:
    # A vision-language model also runs on images, so every tower's sharding is exercised; its
    # processor says how many placeholders one image takes, as for the verification's runs.
    placeholders = 1
    if is_vision_language(config):
        processor = run_processor_check(Path(ported_repo), work, timeout, image_size(config))
        placeholders = placeholders_per_image(processor)
    inputs = make_inputs(config, placeholders)
    save_file(inputs, str(work / "inputs.safetensors"))
    staging = work / "stage"
    staging.mkdir()
    (staging / "model_repo").symlink_to(Path(ported_repo).resolve(), target_is_directory=True)
    spec = {
        "repo": str(staging / "model_repo"),
        "inputs": str(work / "inputs.safetensors"),
        "out_dir": str(work),
        "generate": "AutoModelForCausalLM" in (config.get("auto_map") or {}),
        "max_new_tokens": max_new_tokens,
        "pad_token_id": pad_id(config),
        "device": launch.device,
    }
    (work / "spec.json").write_text(json.dumps(spec))
    env = launch_environment(launch, child_environment(work / "hf_home"))
    command = [current_python(), "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={TP_SIZE}",
               str(RUNNER), str(work / "spec.json")]
    name = launch.check_name
    try:
        with open(work / "child.log", "w") as log:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=work,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        report.add(Check("D2", name, FAIL, f"the sharded run exceeded its time limit of {timeout:.0f}s"))
        return
    results = {p.name: json.loads(p.read_text()) for p in sorted(work.glob("result-*.json"))}
    failed = next((r for r in results.values() if not r.get("ok")), None)
    if failed or "result-0.json" not in results:
        error = (failed or {}).get("error") or (work / "child.log").read_text(errors="replace")[-1500:]
        report.add(Check("D2", name, FAIL, f"the sharded run failed: {error}"))
        return
    result = results["result-0.json"]
    _tree_checks(report, result["tree"], set((plans or {}).get("conditional") or ()), set((plans or {}).get("tp_plan") or ()))
    outputs = load_file(str(work / "outputs.safetensors"))
    _compare(report, outputs, inputs, result, name)


def _tree_checks(report: Report, tree: dict, conditional: set[str], base_keys: set[str]) -> None:
    """D1 on the real module tree: every key names a module (or one that only some configs
    build, e.g. cross-attention), and every projection of the layers is in the plan. A
    projection outside the layers (a pooler) stays replicated, as transformers' own plans do.

    transformers gives the config's base plan (`base_keys`) to every pretrained class built
    with that config. Where the base model sits inside another one (OPT: `OPTModel.decoder`
    is the `OPTDecoder` holding the layers), the outer class's copy names no module, while the
    inner one's covers them: that copy is noted, not failed."""
    # The combined plan is keyed from the whole model; inference keys from the base model.
    optional = {k for k in tree["unmatched_keys"] if k in conditional or any(k.endswith(f".{c}") for c in conditional)}
    matched = set(tree["tp_plan"]) - set(tree["unmatched_keys"])
    copies = {k for k in tree["unmatched_keys"] if any(
        k.endswith(f".{b}") and any(m.endswith(f".{b}") and len(m) > len(k) for m in matched) for b in base_keys)}
    unmatched = [k for k in tree["unmatched_keys"] if k not in optional and k not in copies]
    in_layers = [p for p in tree["uncovered_projections"] if re.search(r"\.\d+\.", p)]
    outside = [p for p in tree["uncovered_projections"] if p not in in_layers]
    problems = []
    if unmatched:
        problems.append(f"keys matching no module: {unmatched}")
    if in_layers:
        problems.append(f"layer projections neither split nor declared replicated: {in_layers}")
    notes = [f"replicated outside the layers: {outside}"] if outside else []
    skipped = sorted(optional)
    if skipped:
        notes.append(f"keys for modules this config does not build: {skipped}")
    if copies:
        notes.append(f"the base plan's copy on an outer model, matched deeper in the model: {sorted(copies)}")
    figures = {"keys": len(tree["tp_plan"]), "projections": tree["projections"], "unmatched": len(unmatched)}
    status = FAIL if problems or not tree["tp_plan"] else PASS
    report.add(Check("D1", "plan keys against the module tree built on the meta device", status,
                     "; ".join(problems + notes), figures))
    if not tree["pipeline"]:
        report.add(Check("D3", "pipeline plan", SKIP, "no base_model_pp_plan (see the notes of D1)"))
        return
    for entry in tree["pipeline"]:  # one per base model: a composite's towers each have one
        if _outer_copy(entry, tree["pipeline"]):
            continue  # the config's plan on a model holding the base model (see _tree_checks)
        report.add(_pipeline_check(entry, conditional))


def _outer_copy(entry: dict, entries: list[dict]) -> bool:
    """The same plan is also held by a model below this one."""
    inside = f"{entry['module']}." if entry["module"] else ""
    return any(other is not entry and (other["module"] or "").startswith(inside) and other["pp_plan"] == entry["pp_plan"]
               for other in entries)


def _pipeline_check(entry: dict, conditional: set[str]) -> Check:
    pp, where = entry["pp_plan"], entry["module"] or "the base model"
    children = [c[0] for c in entry["children"]]
    lists = [c[0] for c in entry["children"] if c[2]]
    bad = [k for k in pp if k not in children and k not in conditional]  # a module only some configs build
    planned_lists = [k for k in pp if k in lists]
    ok = not bad and len(planned_lists) == 1 and len(lists) == 1
    detail = "" if ok else f"{where}: not direct children: {bad}; layer lists in the plan: {planned_lists} of {lists}"
    return Check("D3", "pipeline plan", PASS if ok else FAIL, detail, {"module": where, "entries": len(pp)})


def _compare(report: Report, outputs: dict, inputs: dict, result: dict, name: str) -> None:
    mask = inputs["batch.attention_mask"]
    figures = {
        "single_max_abs_diff": _max_diff(outputs["full.single.output"], outputs["sharded.single.output"]),
        "padded_batch_max_abs_diff": _max_diff(outputs["full.batch.output"], outputs["sharded.batch.output"], mask),
        "tolerance": TOLERANCE,
        "tp_size": result.get("tp_size"),
        "backend": result.get("backend"),
        "device": result.get("device"),
    }
    if "full.image.output" in outputs:
        figures["image_max_abs_diff"] = _max_diff(outputs["full.image.output"], outputs["sharded.image.output"])
    worst = max(v for k, v in figures.items() if k.endswith("_max_abs_diff"))
    sharded = sum(1 for style in (result.get("applied_plan") or {}).values() if style in SHARDING_STYLES)
    if not sharded or result.get("tp_size") != TP_SIZE:
        report.add(Check("D2", name, FAIL, f"transformers applied no sharding (tp_size={result.get('tp_size')})",
                         figures))
        return
    split = result.get("sharded_parameters")
    figures["sharded_parameters"] = len(split) if split is not None else None
    if split is not None and not split:
        # Equal outputs prove nothing when every rank ran the whole model.
        report.add(Check("D2", name, FAIL, "no parameter was sharded: the plan's keys match no module of the loaded "
                         "model (see D1), so every rank ran the whole model", figures))
        return
    ran = f"ran with {figures['backend']} on {figures['device']}" if figures["backend"] else ""
    report.add(Check("D2", name, PASS if worst <= TOLERANCE else FAIL, ran, figures))
    if "full.single.generated" in outputs:
        same = torch.equal(outputs["full.single.generated"], outputs["sharded.single.generated"])
        report.add(Check("D2", "sharded greedy tokens vs unsharded", PASS if same else FAIL, "",
                         {"tokens": outputs["sharded.single.generated"].tolist()}))
