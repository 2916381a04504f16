#!/usr/bin/env python3
"""Golden values for loom's LoRA / DoRA adapters, made by Hugging Face PEFT.

For each case below the script loads one of the committed tiny Hugging Face models
(tests/golden/hf_*, made by scripts/make_hf_golden.py), wraps it with peft.get_peft_model and a
LoraConfig, overwrites every adapter parameter with seeded random values (B non-zero, so the
adapters act; DoRA magnitudes away from their init, so m / ||W + s B A|| matters), runs one fixed
token batch and back-propagates the mean cross-entropy. Into --out (default tests/golden) it
writes:

  lora_golden.json           per case: the model folder, the PEFT config (as loom's test maps it
                             to a LoraConfig), inputs, targets, the loss, the parameter names in
                             PEFT's adapter_model.safetensors naming, PEFT's scale of each
                             adapted module; versions
  lora_golden.safetensors    per case, f32: "<case>/<name>" every adapter parameter's value,
                             "<case>/grad/<name>" d loss / d that parameter, "<case>/logits"

The reference runs in float64 (the f32 weights and adapter values upcast exactly; the rotary
tables recomputed in f32 as a loaded model has them), so the goldens carry only the f32 steps
transformers takes by design. loom's test (tests/test_lora.cpp, LoraGolden.*) loads the same
values by name and compares logits, loss and every adapter gradient.

Cases:
  lora        hf_llama, the seven projections by name, r 4, alpha 8, rank_pattern and
              alpha_pattern (PEFT >= 0.15 matching), dropout 0
  lora_regex  hf_llama, a regex target over both layers, rsLoRA (alpha / sqrt(r)), r 8
  dora        hf_llama_tied (q/k/v/o biases, tied embeddings), all-linear, DoRA, r 4
  lm_head_tied  hf_llama_tied, q_proj, v_proj and the LM head (tied to the embedding: PEFT
              adapts the output only), lm_head with its own rank and alpha
  lm_head     hf_llama (untied), the LM head alone, rsLoRA, r 3

Run with the repo's environment:  .venv/bin/python3 scripts/make_lora_golden.py
Needs torch, transformers and peft. PEFT declares torch>=1.13.0, which Debian's 1.13.0a0 does not
satisfy (a pre-release), so pip would replace torch: install it without dependencies,
  .venv/bin/python3 -m pip install --no-deps peft==0.15.2 accelerate==0.34.2
Exits 77 when a reference is missing.
"""
import argparse
import json
import os
import sys

# Goldens must come out the same on every machine: OpenBLAS (under numpy and Debian's torch)
# picks its kernels by CPU when OPENBLAS_CORETYPE is unset, and its Cooperlake kernels (a Zen 4
# here) round differently from the Haswell ones the committed goldens were made with (after three
# AdamW steps, up to 8.7e-6 of a tensor's scale). Set before torch / numpy load the library; a
# value the environment already sets is kept.
os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")

SOURCE_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
GOLDEN_DIR = os.path.join(SOURCE_DIR, "tests", "golden")
BATCH, SEQ, IGNORE = 2, 10, -100

CASES = {
    "lora": dict(model_dir="hf_llama", seed=11, peft=dict(
        r=4, lora_alpha=8.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                        "gate_proj", "up_proj", "down_proj"],
        rank_pattern={"down_proj": 2, r"layers\.1\.self_attn\.q_proj": 6},
        alpha_pattern={"v_proj": 16.0, r"mlp\..*_proj": 4.0})),
    "lora_regex": dict(model_dir="hf_llama", seed=12, peft=dict(
        r=8, lora_alpha=16.0, use_rslora=True,
        target_modules=r"model\.layers\.(0\.self_attn\.(q|v)_proj|1\.mlp\.(gate|down)_proj)")),
    "dora": dict(model_dir="hf_llama_tied", seed=13, peft=dict(
        r=4, lora_alpha=8.0, use_dora=True, target_modules="all-linear")),
    "lm_head_tied": dict(model_dir="hf_llama_tied", seed=14, peft=dict(
        r=4, lora_alpha=8.0, target_modules=["q_proj", "v_proj", "lm_head"],
        rank_pattern={"lm_head": 2}, alpha_pattern={"lm_head": 6.0})),
    "lm_head": dict(model_dir="hf_llama", seed=15, peft=dict(
        r=3, lora_alpha=4.0, use_rslora=True, target_modules=["lm_head"])),
}


def skip(msg):
    print(f"SKIPPED: {msg}", file=sys.stderr)
    sys.exit(77)


def import_references():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        import safetensors  # noqa: F401
    except Exception as e:  # ImportError, or transformers refusing its dependency versions
        skip(f"torch / transformers / safetensors not importable ({e}); "
             "run scripts/setup_python.sh")
    try:
        import peft  # noqa: F401
    except Exception as e:
        skip(f"peft not importable ({e}); install it without dependencies (it would replace "
             "Debian's torch): .venv/bin/python3 -m pip install --no-deps peft==0.15.2 "
             "accelerate==0.34.2")


def peft_name(param_name):
    """named_parameters() name -> adapter_model.safetensors key (get_peft_model_state_dict's)."""
    name = param_name.replace(".default", "")
    if name.endswith(".lora_magnitude_vector.weight"):
        name = name[: -len(".weight")]
    return name


def fix_rotary_tables(model):
    """Casting a model casts its rotary inv_freq buffers too; recompute them in f32 (as loaded)."""
    for module in model.modules():
        if hasattr(module, "rope_init_fn"):
            inv_freq, module.attention_scaling = module.rope_init_fn(module.config, None)
            module.register_buffer("inv_freq", inv_freq, persistent=False)
            module.original_inv_freq = inv_freq


def make_inputs(seed, vocab):
    import torch
    g = torch.Generator().manual_seed(2000 + seed)
    ids = torch.randint(0, vocab, (BATCH, SEQ), generator=g)
    targets = torch.full((BATCH, SEQ), IGNORE, dtype=torch.long)
    targets[:, :-1] = ids[:, 1:]
    targets[1, 4] = IGNORE  # a masked target inside the sequence
    return ids, targets


def set_adapter_values(model, seed):
    """Seeded values for every adapter parameter, f32 (so float64 holds them exactly)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    values = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if ".lora_A." in name:
                bound = 1.0 / p.shape[1] ** 0.5  # PEFT's Kaiming-uniform(a=sqrt(5)) range
                v = (torch.rand(p.shape, generator=g, dtype=torch.float32) * 2 - 1) * bound
            elif ".lora_B." in name:
                v = 0.2 * torch.randn(p.shape, generator=g, dtype=torch.float32)
            elif ".lora_magnitude_vector." in name:
                # PEFT initialized it to ||W||_row; move it so m / ||W + s B A|| is not ~1.
                noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
                v = p.detach().float() * (1 + 0.2 * noise)
            else:
                raise RuntimeError(f"unexpected trainable parameter {name}")
            p.copy_(v)
            values[peft_name(name)] = v.clone()
    return values


def run_case(name, case):
    import peft
    import torch
    import torch.nn.functional as F
    import transformers
    model_dir = os.path.join(GOLDEN_DIR, case["model_dir"])
    base = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    config = peft.LoraConfig(lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", **case["peft"])
    model = peft.get_peft_model(base, config)
    values = set_adapter_values(model, case["seed"])
    # Only the adapter: with lm_head among the targets PEFT would also save the LM head's base
    # weight ("auto" save_embedding_layers), which the base model already has.
    saved = peft.get_peft_model_state_dict(model, save_embedding_layers=False)
    assert sorted(saved) == sorted(values), (sorted(saved), sorted(values))

    model = model.double().eval()
    fix_rotary_tables(model)
    ids, targets = make_inputs(case["seed"], base.config.vocab_size)
    positions = torch.arange(SEQ).expand(BATCH, SEQ).clone()
    logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE)
    loss.backward()
    grads = {peft_name(n): p.grad for n, p in model.named_parameters() if p.requires_grad}
    # PEFT's scale per adapted module (alpha / r or alpha / sqrt(r), after the patterns).
    scaling = {f"base_model.model.{n}": m.scaling["default"] for n, m in base.named_modules()
               if isinstance(getattr(m, "scaling", None), dict) and "default" in m.scaling}

    tensors = {f"{name}/logits": logits.detach()}
    for pname in values:
        tensors[f"{name}/{pname}"] = values[pname]
        tensors[f"{name}/grad/{pname}"] = grads[pname]
    peft_config = {k: (v if not isinstance(v, set) else sorted(v)) for k, v in case["peft"].items()}
    meta = {
        "model_dir": case["model_dir"],
        "peft_config": peft_config,
        "batch": BATCH,
        "seq_len": SEQ,
        "input_ids": ids.flatten().tolist(),
        "position_ids": positions.flatten().tolist(),
        "targets": targets.flatten().tolist(),
        "ignore_index": IGNORE,
        "loss": loss.item(),
        "n_tokens": int((targets != IGNORE).sum().item()),
        "parameters": list(values),  # PEFT's order (named_parameters)
        "scaling": scaling,
    }
    print(f"make_lora_golden: {name}: loss {loss.item():.6f}, {len(values)} adapter tensors, "
          f"{sum(v.numel() for v in values.values())} parameters")
    return meta, tensors


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=GOLDEN_DIR, help="output folder (default tests/golden)")
    args = parser.parse_args()
    import_references()
    import peft
    import torch
    import transformers
    from safetensors.torch import save_file
    torch.set_num_threads(1)  # reductions in one fixed order: reruns give the same bytes
    os.makedirs(args.out, exist_ok=True)
    golden = {"cases": {}, "reference": (
        f"peft=={peft.__version__} transformers=={transformers.__version__} "
        f"torch=={torch.__version__}, eager attention, float64 (norms, softmax and rope tables in "
        "f32)")}
    tensors = {}
    for name, case in CASES.items():
        meta, t = run_case(name, case)
        golden["cases"][name] = meta
        tensors.update(t)
    save_file({k: v.to(torch.float32).contiguous() for k, v in tensors.items()},
              os.path.join(args.out, "lora_golden.safetensors"))
    with open(os.path.join(args.out, "lora_golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
