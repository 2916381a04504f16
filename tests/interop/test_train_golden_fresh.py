#!/usr/bin/env python3
"""The committed training goldens (tests/golden/train_golden.*) are what scripts/make_train_golden.py makes.

1. The script runs into a temporary folder with the installed torch and transformers.
2. The JSON must agree: configuration, token ids and targets exactly; losses and gradient norms
   within 1e-6 relative.
3. Every golden tensor (initial adapters, logits, gradients, each step's clipped gradients and
   the adapters after it) must be within 1e-6 of its largest value: a reference run on another
   BLAS may round differently, never more.

So the C++ test (tests/test_train.cpp, TrainGolden.*), which needs no Python, checks loom against
PyTorch itself. Exit 0: all equal; 1: a difference or an error; 77: skipped (torch /
transformers / safetensors missing).
"""
import json
import os
import subprocess
import sys
import tempfile

from interop_common import SOURCE_DIR, GOLDEN_DIR, skip, fail


try:
    import numpy as np
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from safetensors.numpy import load_file
except Exception as e:
    skip(f"torch / transformers / safetensors not importable ({e}); run scripts/setup_python.sh")

SCRIPT = os.path.join(SOURCE_DIR, "scripts", "make_train_golden.py")
EXACT_KEYS = ["model", "rank", "alpha", "scale", "targets", "lr", "weight_decay", "betas", "eps",
              "clip_grad_norm", "steps", "batch", "seq_len", "ids", "targets_flat", "parameters"]


def close(a, b, rel):
    return abs(a - b) <= rel * max(abs(b), 1e-30)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, SCRIPT, "--out", tmp], capture_output=True, text=True)
        if r.returncode == 77:
            skip(r.stderr.strip())
        if r.returncode != 0:
            fail(f"{SCRIPT} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        problems = []
        with open(os.path.join(tmp, "train_golden.json")) as f:
            fresh = json.load(f)
        with open(os.path.join(GOLDEN_DIR, "train_golden.json")) as f:
            committed = json.load(f)
        for k in EXACT_KEYS:
            if fresh.get(k) != committed.get(k):
                problems.append(f"train_golden.json: '{k}' differs from what the script makes now")
        if not close(fresh["loss"], committed["loss"], 1e-6):
            problems.append(f"loss {fresh['loss']} vs committed {committed['loss']}")
        for key in ("step_losses", "grad_norms"):
            for i, (a, b) in enumerate(zip(fresh[key], committed[key])):
                if not close(a, b, 1e-6):
                    problems.append(f"{key}[{i}]: {a} vs committed {b}")
        a = load_file(os.path.join(tmp, "train_golden.safetensors"))
        b = load_file(os.path.join(GOLDEN_DIR, "train_golden.safetensors"))
        if sorted(a) != sorted(b):
            problems.append("train_golden.safetensors: the tensor names differ")
        worst = 0.0
        for name in sorted(set(a) & set(b)):
            scale = max(float(np.abs(b[name]).max()), 1e-30)
            err = float(np.abs(a[name].astype(np.float64) - b[name]).max()) / scale
            worst = max(worst, err)
            if err > 1e-6:
                problems.append(f"{name}: max error {err:.3g} of its scale (limit 1e-6)")
        if problems:
            fail("\n".join(problems))
        print(f"train goldens reproduced: {len(a)} tensors, worst relative error {worst:.3g}")


if __name__ == "__main__":
    main()
