#!/usr/bin/env python3
"""Golden values for loom's training step: LoRA forward, loss, adapter gradients and 3 AdamW steps.

On tests/golden/hf_llama (a tiny Llama, f32), LoRA is implemented here in plain PyTorch,
independently of loom and of PEFT: each targeted projection's output gets
    y = W x (+ b) + scale * (x A^T) B^T,     scale = alpha / rank
added by replacing the nn.Linear with a small wrapper module. A and B are drawn from a seeded
torch generator (B non-zero, so every gradient is non-trivial). On one fixed batch the script
records the logits, the mean next-token loss, the gradients of every A and B, then runs three
training steps -- forward, backward, torch.nn.utils.clip_grad_norm_, torch.optim.AdamW (weight
decay, default betas) -- recording the loss, the gradient norm, the clipped gradients AdamW is
given and every adapter value after each step.

Writes tests/golden/train_golden.json (config, token ids, targets, losses, norms, tensor names)
and tests/golden/train_golden.safetensors (f32 tensors: "init.<name>", "grad.<name>",
"stepgrad<k>.<name>", "step<k>.<name>" and "logits"), names as PEFT's
("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"). tests/test_train.cpp
(TrainGolden.*) replays them through loom.

Run with the repo's environment:  .venv/bin/python3 scripts/make_train_golden.py [--out DIR]
Exits 77 when torch / transformers / safetensors are missing.
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

try:
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM
except Exception as e:  # pragma: no cover - depends on the environment
    print(f"make_train_golden: skipped, {e}", file=sys.stderr)
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

RANK = 4
ALPHA = 8.0
LR = 1e-3
WEIGHT_DECAY = 0.01
CLIP = 1.0
STEPS = 3
BATCH, SEQ = 2, 16
SEED = 1234
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraLinear(torch.nn.Module):
    def __init__(self, base, rank, alpha, gen):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        fan_in, fan_out = base.in_features, base.out_features
        bound = 1.0 / fan_in ** 0.5
        self.lora_A = torch.nn.Parameter((torch.rand(rank, fan_in, generator=gen) * 2 - 1) * bound)
        self.lora_B = torch.nn.Parameter((torch.rand(fan_out, rank, generator=gen) * 2 - 1) * 0.1)
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.t()) @ self.lora_B.t() * self.scale


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "golden"))
    ap.add_argument("--model", default=os.path.join(ROOT, "tests", "golden", "hf_llama"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # a fixed summation order
    model = LlamaForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    model.eval()  # no dropout anywhere
    for p in model.parameters():
        p.requires_grad_(False)

    gen = torch.Generator().manual_seed(SEED)
    params = {}  # PEFT name -> parameter, in loom's order (layer, projection, A then B)
    for i, layer in enumerate(model.model.layers):
        for name in TARGETS:
            parent = layer.self_attn if name in ("q_proj", "k_proj", "v_proj", "o_proj") else layer.mlp
            wrapped = LoraLinear(getattr(parent, name), RANK, ALPHA, gen)
            setattr(parent, name, wrapped)
            kind = "self_attn" if parent is layer.self_attn else "mlp"
            stem = f"base_model.model.model.layers.{i}.{kind}.{name}"
            params[f"{stem}.lora_A.weight"] = wrapped.lora_A
            params[f"{stem}.lora_B.weight"] = wrapped.lora_B

    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (BATCH, SEQ), generator=gen)
    targets = torch.full((BATCH, SEQ), -100, dtype=torch.long)
    targets[:, :-1] = ids[:, 1:]
    targets[0, 3] = -100  # an ignored target in the middle

    def loss_of(logits):
        return torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1),
                                                 ignore_index=-100)

    tensors = {f"init.{k}": v.detach().clone() for k, v in params.items()}
    logits = model(input_ids=ids).logits
    loss = loss_of(logits)
    loss.backward()
    tensors["logits"] = logits.detach().reshape(BATCH * SEQ, vocab).clone()
    for k, v in params.items():
        tensors[f"grad.{k}"] = v.grad.detach().clone()
        v.grad = None
    loss0 = loss.item()

    opt = torch.optim.AdamW(list(params.values()), lr=LR, weight_decay=WEIGHT_DECAY)
    step_losses, norms = [], []
    for s in range(STEPS):
        opt.zero_grad()
        loss = loss_of(model(input_ids=ids).logits)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(list(params.values()), CLIP)))
        for k, v in params.items():  # what AdamW is given: the clipped gradient
            tensors[f"stepgrad{s + 1}.{k}"] = v.grad.detach().clone()
        opt.step()
        step_losses.append(loss.item())
        for k, v in params.items():
            tensors[f"step{s + 1}.{k}"] = v.detach().clone()

    os.makedirs(args.out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(args.out, "train_golden.safetensors"))
    golden = {
        "reference": f"torch {torch.__version__}, transformers {transformers.__version__}",
        "model": "tests/golden/hf_llama",
        "rank": RANK, "alpha": ALPHA, "scale": ALPHA / RANK, "targets": TARGETS,
        "lr": LR, "weight_decay": WEIGHT_DECAY, "betas": [0.9, 0.999], "eps": 1e-8,
        "clip_grad_norm": CLIP, "steps": STEPS, "batch": BATCH, "seq_len": SEQ,
        "ids": ids.reshape(-1).tolist(), "targets_flat": targets.reshape(-1).tolist(),
        "loss": loss0, "step_losses": step_losses, "grad_norms": norms,
        "parameters": list(params.keys()),
    }
    with open(os.path.join(args.out, "train_golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}/train_golden.json and train_golden.safetensors: loss {loss0:.6f}, "
          f"step losses {step_losses}, grad norms {norms}")


if __name__ == "__main__":
    main()
