#!/usr/bin/env python3
"""loom's PEFT adapters and merged safetensors folders, loaded by transformers + PEFT; and PEFT's
own adapters, read by loom. On the tiny Hugging Face models transformers made for the goldens
(tests/golden/hf_llama; hf_llama_tied with tied embeddings and q/k/v/o biases; hf_qwen2 with q/k/v
biases and f16 weights; hf_mistral with bf16 weights and head_dim != hidden / heads).

loom -> Hugging Face (tests/tools/hf_export_tool.cpp sets a deterministic non-zero adapter):
  - adapter_config.json has exactly the keys PEFT's own save_pretrained writes, and
    PeftModel.from_pretrained(base, dir) loads it without a warning;
  - PEFT's logits equal loom's (the adapter model, unmerged);
  - AutoModelForCausalLM.from_pretrained(merged f32 folder) logits equal loom's, and the merged
    weights equal PEFT's merge_and_unload() of the same adapter;
  - the bf16 folder holds loom's f32 merged weights rounded to bf16 exactly as torch rounds them.
Hugging Face -> loom: PEFT makes adapters itself (LoRA with rank / alpha patterns, layers and a
gaussian init; DoRA with rsLoRA on "all-linear"), sets non-zero weights, saves them; loom reads
each and computes PEFT's logits.

Tolerance: f32 on both sides, the same weights; only the order of f32 accumulations differs:
logits agree to 1e-5 of their largest magnitude (the run prints the measured figures), merged
weights to 1e-6 of each tensor's largest value. The PiSSA cases are looser (logits 1e-4,
weights 5e-5), in both directions: PEFT recomputes the residual base W - U_r S_r V_r^T with a
float32 SVD, ~2e-6 of max |W| away from the exact residual loom computes (its SVD runs in
double); measured 1e-5 and 3e-6 on the logits.

Exit 0: all agree; 1: a difference; 77: skipped (torch / transformers / peft missing), said loudly.
"""
import json
import os
import subprocess
import tempfile
import warnings

from interop_common import PEFT_INSTALL_HINT, BUILD_DIR, GOLDEN_DIR as GOLDEN, skip, fail


try:
    import numpy as np
    import torch
    import transformers
    from safetensors.torch import load_file
except Exception as e:  # ImportError, or transformers refusing its dependency versions
    skip(f"torch / transformers / safetensors not importable ({e}); run scripts/setup_python.sh")
try:
    import peft
except Exception as e:
    skip(f"peft not importable ({e}); {PEFT_INSTALL_HINT}")

TOOL = os.path.join(BUILD_DIR, "tests", "loom_test_hf_export_tool")
LOGIT_TOL = 1e-5
WEIGHT_TOL = 1e-6
IDS = [1, 7, 200, 31, 62, 3, 99, 150, 4, 250, 10, 42, 2, 64, 128, 255, 17, 0, 90, 33]
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# loom-made adapters: (name, base model, adapter_config.json-style spec for loom[, (logit
# tolerance, weight tolerance)])
LOOM_CASES = [
    ("llama_lora_patterns", "hf_llama",
     {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ALL,
      "rank_pattern": {"down_proj": 2}, "alpha_pattern": {"v_proj": 16}}),
    ("llama_dora_rslora_layer1", "hf_llama",
     {"peft_type": "LORA", "r": 4, "lora_alpha": 6, "use_dora": True, "use_rslora": True,
      "target_modules": ["q_proj", "k_proj", "v_proj"], "layers_to_transform": [1]}),
    ("llama_regex", "hf_llama",
     {"peft_type": "LORA", "r": 2, "lora_alpha": 4,
      "target_modules": r"model\.layers\.0\.self_attn\.k_proj|model\.layers\.1\.mlp\.up_proj"}),
    ("llama_pissa", "hf_llama",
     {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "init_lora_weights": "pissa",
      "target_modules": ["q_proj", "o_proj", "up_proj"]}, (1e-4, 5e-5)),
    ("llama_tied_with_biases", "hf_llama_tied",
     {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ALL}),
    ("qwen2_lora", "hf_qwen2",
     {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ALL}),
    ("mistral_lora", "hf_mistral",
     {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}),
    ("llama_lm_head", "hf_llama",
     {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["down_proj", "lm_head"],
      "rank_pattern": {"lm_head": 2}}),
    ("llama_tied_lm_head", "hf_llama_tied",
     {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "lm_head"],
      "alpha_pattern": {"lm_head": 3}}),
]

# PEFT-made adapters: (name, base model, LoraConfig kwargs[, logit tolerance])
PEFT_CASES = [
    ("peft_lora_patterns", "hf_llama",
     dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
          rank_pattern={"down_proj": 2}, alpha_pattern={"q_proj": 12}, layers_to_transform=[1],
          lora_dropout=0.1, init_lora_weights="gaussian")),
    ("peft_dora_rslora_all_linear", "hf_llama",
     dict(r=3, lora_alpha=5, target_modules="all-linear", use_dora=True, use_rslora=True)),
    ("peft_qwen2_lora", "hf_qwen2", dict(r=4, lora_alpha=16, target_modules=["k_proj", "o_proj"])),
    ("peft_pissa", "hf_llama",
     dict(r=4, lora_alpha=4, target_modules=["v_proj", "gate_proj"], init_lora_weights="pissa"),
     1e-4),
    # lm_head on a tied model: save_pretrained also writes the LM head's base weight.
    ("peft_tied_lm_head", "hf_llama_tied", dict(r=2, lora_alpha=4, target_modules=["v_proj", "lm_head"])),
]


def load_base(name):
    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.join(GOLDEN, name), torch_dtype=torch.float32).eval()


def torch_logits(model, ids=IDS):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def rel_err(theirs, ours):
    theirs, ours = np.asarray(theirs, np.float64), np.asarray(ours, np.float64)
    return float(np.abs(theirs - ours).max()) / max(float(np.abs(ours).max()), 1e-30)


def run_tool(*args):
    run = subprocess.run([TOOL, *args], capture_output=True, text=True)
    if run.returncode != 0:
        fail(f"{TOOL} {' '.join(args)} exited {run.returncode}:\n{run.stderr}")


def loom_logits(path, vocab):
    return np.fromfile(path, dtype=np.float32).reshape(len(IDS), vocab)


def peft_saved_keys(tmp):
    """The keys PEFT's own save_pretrained writes into adapter_config.json."""
    model = peft.get_peft_model(load_base("hf_llama"),
                                peft.LoraConfig(r=2, target_modules=["q_proj"],
                                                task_type="CAUSAL_LM"))
    model.save_pretrained(f"{tmp}/peft_keys")
    with open(f"{tmp}/peft_keys/adapter_config.json") as f:
        return set(json.load(f))


def check_loom_case(tmp, name, base_name, adapter, tolerances, expected_keys, problems, figures):
    logit_tol, weight_tol = tolerances
    d = f"{tmp}/{name}"
    spec = {"source": os.path.join(GOLDEN, base_name), "lora": adapter, "adapter_seed": 3,
            "adapter_scale": 0.2, "ids": IDS, "merged_dir": f"{d}/merged",
            "merged_bf16_dir": f"{d}/merged_bf16", "peft_dir": f"{d}/peft",
            "logits": f"{d}/loom.bin"}
    os.makedirs(d)
    with open(f"{d}/spec.json", "w") as f:
        json.dump(spec, f)
    run_tool("export", f"{d}/spec.json", f"{d}/out.json")
    with open(f"{d}/out.json") as f:
        out = json.load(f)
    ours = loom_logits(f"{d}/loom.bin", out["vocab_size"])

    with open(f"{d}/peft/adapter_config.json") as f:
        keys = set(json.load(f))
    if keys != expected_keys:
        problems.append(f"{name}: adapter_config.json keys differ from PEFT's: missing "
                        f"{sorted(expected_keys - keys)}, extra {sorted(keys - expected_keys)}")
    base = load_base(base_name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(base, f"{d}/peft").eval()
    for w in caught:
        # PEFT's caution about merging an adapted tied LM head (its merge changes the embedding
        # too; loom's merged export unties the head instead, checked below) is expected there.
        if "lm_head" in adapter["target_modules"] and "tied_target_modules" in str(w.message):
            continue
        problems.append(f"{name}: PeftModel.from_pretrained warned: {w.message}")
    peft_err = rel_err(torch_logits(model), ours)
    with model.disable_adapter():
        moved = rel_err(torch_logits(model), ours)
    merged_model = transformers.AutoModelForCausalLM.from_pretrained(
        f"{d}/merged", torch_dtype=torch.float32).eval()
    merged_err = rel_err(torch_logits(merged_model), ours)
    ours_merged = load_file(f"{d}/merged/model.safetensors")
    # An adapted LM head of a tied model: loom's merged folder unties it (its own lm_head.weight,
    # the embedding unchanged); PEFT's merge_and_unload writes the merge into the shared tensor,
    # changing the embedding too (PEFT warns about that), so the embedding is checked against
    # the base instead.
    untied_head = "lm_head" in adapter["target_modules"] and base.config.tie_word_embeddings
    if untied_head:
        if merged_model.config.tie_word_embeddings:
            problems.append(f"{name}: the merged folder still ties the adapted LM head")
        base_embed = load_base(base_name).model.embed_tokens.weight.detach().numpy()
        if rel_err(ours_merged["model.embed_tokens.weight"].numpy(), base_embed) > 0:
            problems.append(f"{name}: the merged folder changed the token embedding")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tied-module merge warning, expected here
        peft_merged = model.merge_and_unload().state_dict()
    weight_err = 0.0
    for key, theirs in peft_merged.items():
        if untied_head and key == "model.embed_tokens.weight":
            continue  # PEFT merged the LM head's update into it (see above)
        if key == "lm_head.weight" and merged_model.config.tie_word_embeddings:
            key = "model.embed_tokens.weight"  # tied: the state dict lists the one tensor twice
        if key not in ours_merged:
            problems.append(f"{name}: merged/model.safetensors has no {key}")
            continue
        weight_err = max(weight_err, rel_err(theirs.numpy(), ours_merged[key].numpy()))
    if set(ours_merged) - set(peft_merged):
        problems.append(f"{name}: merged folder has extra tensors "
                        f"{sorted(set(ours_merged) - set(peft_merged))}")
    bf16 = load_file(f"{d}/merged_bf16/model.safetensors")
    bf16_equal = all(bf16[k].dtype == torch.bfloat16 and
                     torch.equal(bf16[k], ours_merged[k].to(torch.bfloat16)) for k in ours_merged)
    with open(f"{d}/merged_bf16/config.json") as f:
        bf16_dtype = json.load(f)["torch_dtype"]
    figures.append(f"{name}: PEFT logits {peft_err:.1e}, merged logits {merged_err:.1e}, merged "
                   f"weights vs PEFT's merge {weight_err:.1e}, bf16 = torch rounding: "
                   f"{bf16_equal}; adapter moves logits {moved:.2f}")
    if peft_err > logit_tol or merged_err > LOGIT_TOL:
        problems.append(f"{name}: logits differ (PEFT {peft_err:.2e}, merged {merged_err:.2e}; "
                        f"tolerance {logit_tol}, {LOGIT_TOL})")
    if weight_err > weight_tol:
        problems.append(f"{name}: merged weights differ from PEFT's merge by {weight_err:.2e}")
    if not bf16_equal or bf16_dtype != "bfloat16":
        problems.append(f"{name}: the bf16 folder is not loom's merge rounded to bf16 "
                        f"(torch_dtype {bf16_dtype})")
    if moved < 100 * LOGIT_TOL:
        problems.append(f"{name}: the adapter moves the logits by only {moved:.2e} of their "
                        "scale, too little to tell a right export from a wrong one")


def set_peft_weights(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_magnitude_vector" in pname:
                p.mul_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif "lora_" in pname:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def check_peft_case(tmp, name, base_name, kwargs, logit_tol, problems, figures):
    d = f"{tmp}/{name}"
    model = peft.get_peft_model(load_base(base_name),
                                peft.LoraConfig(task_type="CAUSAL_LM", **kwargs))
    set_peft_weights(model, 11)
    model.eval()
    theirs = torch_logits(model)
    model.save_pretrained(f"{d}/peft")
    with open(f"{d}/ids.json", "w") as f:
        json.dump(IDS, f)
    run_tool("logits", os.path.join(GOLDEN, base_name), f"{d}/ids.json", f"{d}/loom.bin",
             f"{d}/peft")
    err = rel_err(theirs, loom_logits(f"{d}/loom.bin", theirs.shape[-1]))
    figures.append(f"{name}: loom reading PEFT's adapter, logits {err:.1e}")
    if err > logit_tol:
        problems.append(f"{name}: loom's logits with PEFT's adapter differ by {err:.2e} "
                        f"(tolerance {logit_tol})")


def main():
    if not os.access(TOOL, os.X_OK):
        fail(f"{TOOL} is not built (ninja -C {BUILD_DIR} loom_test_hf_export_tool)")
    torch.manual_seed(0)
    problems, figures = [], []
    with tempfile.TemporaryDirectory(prefix="loom_export_hf_") as tmp:
        expected_keys = peft_saved_keys(tmp)
        for name, base, adapter, *tolerances in LOOM_CASES:
            check_loom_case(tmp, name, base, adapter, (tolerances or [(LOGIT_TOL, WEIGHT_TOL)])[0],
                            expected_keys, problems, figures)
        for name, base, kwargs, *tolerance in PEFT_CASES:
            check_peft_case(tmp, name, base, kwargs, (tolerance or [LOGIT_TOL])[0], problems,
                            figures)
    for f in figures:
        print("  " + f)
    if problems:
        fail("\n  ".join(problems))
    print(f"test_export_hf: transformers {transformers.__version__}, peft {peft.__version__}, "
          f"torch {torch.__version__}: {len(LOOM_CASES)} loom exports and {len(PEFT_CASES)} PEFT "
          "adapters agree")


if __name__ == "__main__":
    main()
