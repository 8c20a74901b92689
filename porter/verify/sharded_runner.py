"""Run a ported repo sharded with transformers' own tensor-parallel loading (CONTRACT D1-D3).

Executed by path under `torchrun` (one process per rank: gloo on the CPU, or, with the spec's
`device` `cuda`, nccl with one GPU per rank; transformers picks the backend from the visible
accelerator) with the current transformers, so it imports nothing from port-model. Usage:
`python -m torch.distributed.run --standalone --nproc_per_node 2 sharded_runner.py SPEC.json`.

Every rank loads the model twice, unsharded and with `tp_plan="auto"`, and runs the same
inputs through both; rank 0 writes `outputs.safetensors` and `result.json` to the spec's
`out_dir`. Rank 0 also builds the module tree from the config on the meta device (no
weights) and records what the plans name in it.
"""

import json
import os
import re
import sys
import traceback

from required_mask import mask_for  # a sibling module: this file runs as a script from its own folder


def _auto_class(spec, config):
    import transformers

    auto_map = getattr(config, "auto_map", None) or {}
    for name in ("AutoModelForCausalLM", "AutoModel"):
        if name in auto_map:
            return getattr(transformers, name)
    # An Auto class the repo does not map would load transformers' own model for its model_type.
    raise LookupError(f"config.json's auto_map maps {sorted(auto_map) or 'nothing'}: no AutoModelForCausalLM or AutoModel")


def _device(spec):
    """This rank's device: its own GPU (`LOCAL_RANK`) for an nccl run, else the CPU."""
    import torch

    if spec.get("device") == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _load(auto_cls, repo, sharded, device):
    import torch

    kwargs = {"trust_remote_code": True, "dtype": torch.float32, "attn_implementation": "eager"}
    if sharded:
        try:
            from transformers.distributed import DistributedConfig

            kwargs["distributed_config"] = DistributedConfig(tp_plan="auto")
        except ImportError:  # releases before DistributedConfig take the plan directly
            kwargs["tp_plan"] = "auto"
        return auto_cls.from_pretrained(repo, **kwargs).eval()  # transformers places each rank's shard
    return auto_cls.from_pretrained(repo, **kwargs).to(device).eval()


def _local(tensor):
    return (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).cpu()


def _local_shard(tensor):
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _run(model, inputs, spec, tag, tensors, device):
    import torch

    inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
    prefixes = ("single", "batch", "image") if "image.pixel_values" in inputs else ("single", "batch")
    for prefix in prefixes:  # "image": text with images, through every tower of a composite
        kwargs = {"input_ids": inputs[f"{prefix}.input_ids"], "use_cache": False, "return_dict": True}
        mask = mask_for(model, inputs, prefix)
        if mask is not None:
            kwargs["attention_mask"] = mask
        if f"{prefix}.pixel_values" in inputs:
            kwargs["pixel_values"] = inputs[f"{prefix}.pixel_values"]
        with torch.no_grad():
            out = model(**kwargs)
        value = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
        tensors[f"{tag}.{prefix}.output"] = _local(value).detach().float().contiguous()
    if spec.get("generate") and hasattr(model, "generate"):
        ids = inputs["single.input_ids"]
        mask = mask_for(model, inputs, "single")
        with torch.no_grad():
            generated = model.generate(
                input_ids=ids,
                **({"attention_mask": mask} if mask is not None else {}),
                max_new_tokens=spec["max_new_tokens"],
                do_sample=False,
                pad_token_id=spec.get("pad_token_id", 0),
            )
        tensors[f"{tag}.single.generated"] = _local(generated)[:, ids.shape[1] :].contiguous()


def _pattern(key):
    return re.compile(re.escape(key).replace(r"\*", r"\d+"))


def _module_tree(auto_cls, config):
    """What the plans name, on the module tree built from the config on the meta device."""
    import torch

    with torch.device("meta"):
        model = auto_cls.from_config(config, trust_remote_code=True)
    # The plan transformers applies: the config's, keyed from the base model, combined with
    # every sub-model's (a composite's towers), keyed from the whole model.
    # A key may name a parameter (packed experts' weights are sharded by their own entry).
    names = [name for name, _ in model.named_modules() if name] + [name for name, _ in model.named_parameters()]
    tp_plan = dict(getattr(model, "_tp_plan", None) or {})
    pipeline = _pipeline_plans(model)
    projections = sorted(
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"
    )
    covered = [_pattern(key) for key in tp_plan]
    return {
        "tp_plan": tp_plan,
        "pipeline": pipeline,
        "unmatched_keys": [key for key in tp_plan if not any(_pattern(key).fullmatch(n) for n in names)],
        "uncovered_projections": [p for p in projections if not any(c.fullmatch(p) for c in covered)],
        "projections": len(projections),
    }


def _pipeline_plans(model):
    """Each base model's `base_model_pp_plan` (a composite's towers have their own), with
    the direct children it must name."""
    import torch

    found = []
    for path, module in model.named_modules():
        config = getattr(module, "config", None)
        plan = getattr(type(config), "base_model_pp_plan", None) if config is not None else None
        if not plan or getattr(module, "base_model", None) is not module:
            continue
        children = [(n, type(c).__name__, isinstance(c, torch.nn.ModuleList)) for n, c in module.named_children()]
        found.append({"module": path, "pp_plan": {k: [list(v[0]), list(v[1])] for k, v in plan.items()},
                      "children": children})
    return found


def main(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    rank = int(os.environ.get("RANK", "0"))
    result = {"ok": False}
    tensors = {}
    try:
        import torch
        import transformers
        from safetensors.torch import load_file, save_file

        torch.manual_seed(0)
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 on a GPU as on the CPU: 1e-5 is the bound
        device = _device(spec)
        result["transformers_version"] = transformers.__version__
        inputs = load_file(spec["inputs"])
        config = transformers.AutoConfig.from_pretrained(spec["repo"], trust_remote_code=True)
        auto_cls = _auto_class(spec, config)
        if rank == 0:
            result["tree"] = _module_tree(auto_cls, config)
        full = _load(auto_cls, spec["repo"], False, device)
        _run(full, inputs, spec, "full", tensors, device)
        full_shapes = {name: tuple(p.shape) for name, p in full.named_parameters()}
        del full
        sharded = _load(auto_cls, spec["repo"], True, device)
        result["tp_size"] = getattr(sharded, "tp_size", None)
        result["backend"] = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
        result["device"] = str(next(sharded.parameters()).device.type)
        result["applied_plan"] = dict(getattr(sharded, "tp_plan", None) or {})
        # A plan whose keys match no module shards nothing and still loads: count what was split.
        result["sharded_parameters"] = sorted(
            name for name, p in sharded.named_parameters()
            if name in full_shapes and tuple(_local_shard(p).shape) != full_shapes[name]
        )
        _run(sharded, inputs, spec, "sharded", tensors, device)
        if rank == 0:
            save_file(tensors, os.path.join(spec["out_dir"], "outputs.safetensors"))
        result["ok"] = True
    except BaseException as exc:  # reported to the parent
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-6000:]
    if rank == 0 or not result["ok"]:
        with open(os.path.join(spec["out_dir"], f"result-{rank}.json"), "w") as f:
            json.dump(result, f, indent=1)
    try:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:
        pass
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
