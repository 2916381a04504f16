#!/usr/bin/env python3
"""PyTorch CPU reference for bench/bench_train.cpp: the LoRA training step of a SmolLM2-135M-shaped
Llama (hidden 576, 30 layers, 9 heads / 3 kv heads, intermediate 1536, vocab 49152, tied
embeddings), LoRA r=16 alpha=32 on all seven projections (plain PyTorch wrappers, as
scripts/make_train_golden.py), AdamW, batch B x T of random tokens. Weights are random: the
step's cost does not depend on their values. Prints one JSON line:
  {"config": "torch-f32" | "torch-bf16", "tokens_per_second": ..., "peak_rss_mb": ..., "step_seconds": [...]}
--precision bf16 runs forward and backward under torch.autocast("cpu", dtype=torch.bfloat16).
Exits 77 when torch / transformers are missing.
"""
import argparse
import json
import resource
import sys
import time

try:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
except Exception as e:  # pragma: no cover
    print(f"bench_train_torch: skipped, {e}", file=sys.stderr)
    sys.exit(77)


class LoraLinear(torch.nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base
        self.lora_A = torch.nn.Parameter(torch.randn(rank, base.in_features) / base.in_features ** 0.5)
        self.lora_B = torch.nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.t()) @ self.lora_B.t() * self.scale


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--precision", choices=["f32", "bf16"], default="bf16")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                      max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=100000.0)
    model = LlamaForCausalLM(cfg)
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for layer in model.model.layers:
        for parent, names in ((layer.self_attn, ["q_proj", "k_proj", "v_proj", "o_proj"]),
                              (layer.mlp, ["gate_proj", "up_proj", "down_proj"])):
            for n in names:
                w = LoraLinear(getattr(parent, n), 16, 32.0)
                setattr(parent, n, w)
                params += [w.lora_A, w.lora_B]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq))
    times = []
    for step in range(args.steps + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        opt.zero_grad()
        if args.precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
        else:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step > 0:
            times.append(time.perf_counter() - t0)
    tokens = args.batch * args.seq
    print(json.dumps({"config": f"torch-{args.precision}",
                      "tokens_per_second": tokens * len(times) / sum(times),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                      "step_seconds": times}))


if __name__ == "__main__":
    main()
