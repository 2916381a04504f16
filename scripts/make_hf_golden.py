#!/usr/bin/env python3
"""Golden values for loom's Llama-family model, made by Hugging Face transformers.

For each case below the script builds a tiny randomly initialized model with transformers
(seeded, so the same versions give the same bytes), saves it as a Hugging Face directory
(config.json + model.safetensors, or shards + model.safetensors.index.json) and runs one fixed
token batch through it. Into --out (default tests/golden) it writes:

  hf_<case>/                      the model directory loom loads
  hf_<case>_golden.json           inputs (ids, positions, document ids, targets), the loss, the
                                  number of counted targets, versions
  hf_<case>_golden.safetensors    f32 tensors: logits [B,T,V], hidden [B,T,D] (after the final
                                  norm), grad_hidden (d loss / d hidden), grad_embeddings
                                  (d loss / d token embeddings, i.e. through every block)

The reference runs in float64 (the stored weights upcast exactly), so the goldens carry only
transformers' own f32 steps: its RMSNorm, softmax and rotary tables compute in f32 by design.
The loss is the mean cross-entropy over targets != -100 (targets are given already shifted).

Cases:
  llama        f32, separate lm_head
  llama_tied   f32, tied embeddings, attention_bias (q/k/v/o biases), per-row positions
  llama3       f32, rope_scaling llama3 (original_max_position_embeddings 64), positions
               from 200, saved as two shards with an index
  mistral      bf16 weights, head_dim 32 != hidden/heads, packed documents (a 4-D mask
               blocks attention across documents; positions restart per document)
  qwen2        f16 weights, q/k/v biases, rope_theta 1e6

Run with the repo's environment:  .venv/bin/python3 scripts/make_hf_golden.py
Needs torch and transformers (scripts/python-requirements.txt). Exits 77 when they are missing.
"""
import argparse
import json
import os
import shutil
import sys

# Goldens must come out the same on every machine: OpenBLAS (under numpy and Debian's torch)
# picks its kernels by CPU when OPENBLAS_CORETYPE is unset, and its Cooperlake kernels (a Zen 4
# here) round differently from the Haswell ones the committed goldens were made with (after three
# AdamW steps, up to 8.7e-6 of a tensor's scale). Set before torch / numpy load the library; a
# value the environment already sets is kept.
os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")

SOURCE_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
GOLDEN_DIR = os.path.join(SOURCE_DIR, "tests", "golden")

VOCAB, HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS = 256, 64, 128, 2, 4, 2
BATCH, SEQ = 2, 12
IGNORE = -100

CASES = {
    "llama": dict(arch="llama", dtype="f32", seed=1, config=dict(rope_theta=10000.0)),
    "llama_tied": dict(arch="llama", dtype="f32", seed=2, per_row_positions=True,
                       config=dict(tie_word_embeddings=True, attention_bias=True,
                                   rms_norm_eps=1e-6, rope_theta=500000.0)),
    "llama3": dict(arch="llama", dtype="f32", seed=3, position_start=200, shards="250KB",
                   config=dict(rope_theta=500000.0, max_position_embeddings=512,
                               rope_scaling=dict(rope_type="llama3", factor=8.0,
                                                 low_freq_factor=1.0, high_freq_factor=4.0,
                                                 original_max_position_embeddings=64))),
    "mistral": dict(arch="mistral", dtype="bf16", seed=4, documents=True,
                    config=dict(head_dim=32, rope_theta=10000.0, sliding_window=4096)),
    "qwen2": dict(arch="qwen2", dtype="f16", seed=5,
                  config=dict(rope_theta=1000000.0, use_sliding_window=False)),
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


def make_model(name, case):
    import torch
    import transformers as tf
    classes = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
               "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
               "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM)}
    config_cls, model_cls = classes[case["arch"]]
    kwargs = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                  num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  num_key_value_heads=KV_HEADS, max_position_embeddings=256,
                  rms_norm_eps=1e-5, initializer_range=0.1, tie_word_embeddings=False,
                  attn_implementation="eager")
    kwargs.update(case["config"])
    config = config_cls(**kwargs)
    torch.manual_seed(case["seed"])
    model = model_cls(config)
    # transformers initializes norms to 1 and biases to 0; random values check that loom uses them.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif pname.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[case["dtype"]]
    return model.to(dtype).eval()


def make_inputs(case):
    import torch
    g = torch.Generator().manual_seed(1000 + case["seed"])
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    targets = torch.full((BATCH, SEQ), IGNORE, dtype=torch.long)
    targets[:, :-1] = ids[:, 1:]
    targets[0, 3] = IGNORE  # a masked target inside the sequence
    docs = None
    if case.get("documents"):
        # Row 0 packs three documents, row 1 two; positions restart in each, the last token of a
        # document has no target (the next token belongs to another document).
        docs = torch.tensor([[0] * 5 + [1] * 4 + [2] * 3, [0] * 7 + [1] * 5])
        positions = torch.zeros((BATCH, SEQ), dtype=torch.long)
        for b in range(BATCH):
            for t in range(SEQ):
                same = t > 0 and docs[b, t] == docs[b, t - 1]
                positions[b, t] = positions[b, t - 1] + 1 if same else 0
                if t + 1 < SEQ and docs[b, t + 1] != docs[b, t]:
                    targets[b, t] = IGNORE
    elif case.get("per_row_positions"):
        positions = torch.stack([torch.arange(SEQ) + 7, torch.arange(SEQ) + 31])
    else:
        start = case.get("position_start", 0)
        positions = (torch.arange(SEQ) + start).expand(BATCH, SEQ).clone()
    return ids, positions, docs, targets


def document_mask(docs, dtype):
    """Additive 4-D mask [B,1,T,T]: 0 where a query may attend (causal, same document)."""
    import torch
    T = docs.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    allowed = causal[None] & (docs[:, :, None] == docs[:, None, :])
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def run_reference(model, ids, positions, docs, targets):
    import torch
    import torch.nn.functional as F
    ref = model.double()
    # Casting a model casts its rotary inv_freq buffer too (to bf16 / f16 / f64), which
    # from_pretrained(torch_dtype=...) never does: recompute it in f32, as a loaded model has it.
    for module in ref.modules():
        if hasattr(module, "rope_init_fn"):
            inv_freq, module.attention_scaling = module.rope_init_fn(module.config, None)
            module.register_buffer("inv_freq", inv_freq, persistent=False)
            module.original_inv_freq = inv_freq
    embeds = ref.get_input_embeddings()(ids).detach().requires_grad_(True)
    mask = document_mask(docs, torch.float64) if docs is not None else None
    out = ref(inputs_embeds=embeds, position_ids=positions, attention_mask=mask,
              output_hidden_states=True, use_cache=False)
    hidden = out.hidden_states[-1]  # after the final norm: what the lm head reads
    hidden.retain_grad()
    logits = out.logits
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE)
    loss.backward()
    if docs is not None:
        check_documents_independent(ref, ids, positions, docs, logits)
    return dict(logits=logits.detach(), hidden=hidden.detach(), grad_hidden=hidden.grad,
                grad_embeddings=embeds.grad), loss.item()


def check_documents_independent(ref, ids, positions, docs, logits):
    """Self-check of the 4-D mask: each document run alone gives the packed run's logits."""
    import torch
    with torch.no_grad():
        for b in range(ids.shape[0]):
            for d in docs[b].unique():
                sel = (docs[b] == d).nonzero().flatten()
                alone = ref(input_ids=ids[b:b + 1, sel], position_ids=positions[b:b + 1, sel],
                            use_cache=False).logits[0]
                err = (alone - logits[b, sel]).abs().max().item()
                assert err < 1e-6, f"document mask self-check failed: row {b} doc {d} err {err}"


def save_case(name, case, out):
    import torch
    import transformers
    from safetensors.torch import save_file
    model = make_model(name, case)
    model_dir = os.path.join(out, f"hf_{name}")
    if os.path.exists(model_dir):
        shutil.rmtree(model_dir)
    model.save_pretrained(model_dir, safe_serialization=True,
                          max_shard_size=case.get("shards", "10GB"))
    extra = os.path.join(model_dir, "generation_config.json")
    if os.path.exists(extra):
        os.remove(extra)  # loom does not read it; keep the golden directory minimal

    ids, positions, docs, targets = make_inputs(case)
    tensors, loss = run_reference(model, ids, positions, docs, targets)
    save_file({k: v.to(torch.float32).contiguous() for k, v in tensors.items()},
              os.path.join(out, f"hf_{name}_golden.safetensors"))
    golden = {
        "case": name,
        "model_dir": f"hf_{name}",
        "architecture": case["arch"],
        "weights_dtype": case["dtype"],
        "batch": BATCH,
        "seq_len": SEQ,
        "input_ids": ids.flatten().tolist(),
        "position_ids": positions.flatten().tolist(),
        "document_ids": docs.flatten().tolist() if docs is not None else None,
        "targets": targets.flatten().tolist(),
        "ignore_index": IGNORE,
        "loss": loss,
        "n_tokens": int((targets != IGNORE).sum().item()),
        "reference": (f"transformers=={transformers.__version__} torch=={torch.__version__}, "
                      "eager attention, float64 (norms, softmax and rope tables in f32)"),
    }
    with open(os.path.join(out, f"hf_{name}_golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    print(f"make_hf_golden: {name}: loss {loss:.6f} over {golden['n_tokens']} targets")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=GOLDEN_DIR, help="output folder (default tests/golden)")
    parser.add_argument("--case", action="append", choices=sorted(CASES),
                        help="only this case (repeatable); default all")
    args = parser.parse_args()
    import_references()
    import torch
    torch.set_num_threads(1)  # reductions in one fixed order: reruns give the same bytes
    os.makedirs(args.out, exist_ok=True)
    for name in args.case or CASES:
        save_case(name, CASES[name], args.out)


if __name__ == "__main__":
    main()
