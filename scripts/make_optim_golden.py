#!/usr/bin/env python3
"""Golden values for loom's optimizer step: AdamW, global-norm clipping and the LR schedules.

Writes tests/golden/adamw_golden.json (or --out), which tests/test_optimizer.cpp replays:

  adamw     five steps of torch.optim.AdamW on three small f32 parameters with fixed gradients:
            each step sets the gradients, clips them with torch.nn.utils.clip_grad_norm_,
            steps the optimizer, then steps a LambdaLR made by transformers'
            get_cosine_with_min_lr_schedule_with_warmup (warmup 2 of 5 steps, so the first step
            runs at lr 0, min_lr_rate 0.1). Weight decay 0.1, except parameter "c" (a second
            param group with weight_decay 0). Parameter "c" has no gradient on step 2 (index),
            so torch skips it there and its step count lags. Recorded per step: the lr used, the
            norm clip_grad_norm_ returned, the gradients and the parameters after the step.
  schedules the multiplier transformers' schedules give LambdaLR at steps 0..10 for
            constant / linear / cosine with warmup 3 of 10 steps, and cosine with
            min_lr_rate 0.25.

Values are f32 written as exact decimal doubles. transformers.optimization imports
torch.optim.lr_scheduler.LRScheduler, which torch 1.13 calls _LRScheduler; the script aliases it.

Run with the repo's environment:  .venv/bin/python3 scripts/make_optim_golden.py
Needs torch and transformers (scripts/python-requirements.txt). Exits 77 when they are missing.
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
    import torch.optim.lr_scheduler as lr_scheduler

    if not hasattr(lr_scheduler, "LRScheduler"):
        lr_scheduler.LRScheduler = lr_scheduler._LRScheduler
    import transformers
    from transformers import optimization as hf_opt
except ImportError as e:  # pragma: no cover - depends on the environment
    print(f"make_optim_golden: skipped, {e}", file=sys.stderr)
    sys.exit(77)


def values(t):
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def adamw_case():
    gen = torch.Generator().manual_seed(1234)
    shapes = {"a": [4, 3], "b": [3, 5], "c": [6]}
    params = {n: torch.randn(s, generator=gen, dtype=torch.float32) for n, s in shapes.items()}
    initial = [{"name": n, "shape": shapes[n], "values": values(p)} for n, p in params.items()]
    for p in params.values():
        p.requires_grad_(True)

    config = {
        "lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1,
        "no_decay": ["c"], "max_norm": 1.0, "schedule": "cosine", "warmup_steps": 2,
        "total_steps": 5, "min_lr_ratio": 0.1,
    }
    opt = torch.optim.AdamW(
        [{"params": [params["a"], params["b"]]},
         {"params": [params["c"]], "weight_decay": 0.0}],
        lr=config["lr"], betas=(config["beta1"], config["beta2"]), eps=config["eps"],
        weight_decay=config["weight_decay"], foreach=False)
    sched = hf_opt.get_cosine_with_min_lr_schedule_with_warmup(
        opt, num_warmup_steps=config["warmup_steps"], num_training_steps=config["total_steps"],
        min_lr_rate=config["min_lr_ratio"])

    # Scales chosen so that clipping engages on steps 1 and 3 only.
    scales = [0.05, 1.0, 0.1, 2.0, 0.15]
    steps = []
    for i, scale in enumerate(scales):
        grads = {}
        for n, p in params.items():
            if n == "c" and i == 2:
                p.grad = None
                continue
            g = torch.randn(p.shape, generator=gen, dtype=torch.float32) * scale
            p.grad = g.clone()
            grads[n] = values(g)
        lr = opt.param_groups[0]["lr"]
        norm = torch.nn.utils.clip_grad_norm_([p for p in params.values() if p.grad is not None],
                                              config["max_norm"])
        opt.step()
        sched.step()
        steps.append({
            "lr": float(lr),
            "grad_norm": float(norm),
            "grads": grads,
            "params": {n: values(p) for n, p in params.items()},
        })
    return {"config": config, "params": initial, "steps": steps}


def schedule_cases():
    warmup, total = 3, 10
    cases = [
        ("constant", 0.0, lambda o: hf_opt.get_constant_schedule_with_warmup(o, warmup)),
        ("linear", 0.0, lambda o: hf_opt.get_linear_schedule_with_warmup(o, warmup, total)),
        ("cosine", 0.0, lambda o: hf_opt.get_cosine_schedule_with_warmup(o, warmup, total)),
        ("cosine", 0.25, lambda o: hf_opt.get_cosine_with_min_lr_schedule_with_warmup(
            o, warmup, total, min_lr_rate=0.25)),
    ]
    out = []
    for kind, min_ratio, make in cases:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched = make(opt)
        multipliers = [sched.lr_lambdas[0](step) for step in range(total + 1)]
        out.append({"kind": kind, "warmup_steps": warmup, "total_steps": total,
                    "min_lr_ratio": min_ratio, "multipliers": [float(m) for m in multipliers]})
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                      "golden", "adamw_golden.json"))
    args = parser.parse_args()
    golden = {
        "generator": "scripts/make_optim_golden.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "adamw": adamw_case(),
        "schedules": schedule_cases(),
    }
    with open(args.out, "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.normpath(args.out)}")


if __name__ == "__main__":
    main()
