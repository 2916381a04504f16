#!/usr/bin/env python3
"""The committed PEFT goldens (tests/golden/lora_golden.*) are make_lora_golden.py's output.

1. The script runs into a temporary folder with the installed torch, transformers and peft.
2. The golden JSON must be equal case by case (config, inputs, targets, parameter names, PEFT's
   scales; the loss within 1e-9 relative).
3. Every golden tensor (adapter values, adapter gradients, logits) must be within 1e-6 of its
   largest value: a reference run on another BLAS may round differently, never more.

So the C++ test (tests/test_lora.cpp, LoraGolden.*), which needs no Python, checks loom against
PEFT itself.

Exit 0: all equal; 1: a difference or an error; 77: skipped (torch / transformers / peft missing).
"""
import json
import os
import subprocess
import sys
import tempfile

from interop_common import PEFT_INSTALL_HINT, SOURCE_DIR, GOLDEN_DIR, skip, fail


try:
    import numpy as np
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from safetensors.numpy import load_file
except Exception as e:  # ImportError, or transformers refusing its dependency versions
    skip(f"torch / transformers / safetensors not importable ({e}); run scripts/setup_python.sh")
try:
    import peft
except Exception as e:
    skip(f"peft not importable ({e}); {PEFT_INSTALL_HINT}")

SCRIPT = os.path.join(SOURCE_DIR, "scripts", "make_lora_golden.py")


def compare_json(fresh, committed, problems):
    with open(fresh) as f:
        a = json.load(f)
    with open(committed) as f:
        b = json.load(f)
    if a.get("reference") != b.get("reference"):
        print(f"note: {committed}: made with {b.get('reference')}; this run: {a.get('reference')}")
    cases_a, cases_b = a.get("cases", {}), b.get("cases", {})
    if sorted(cases_a) != sorted(cases_b):
        problems.append(f"{committed}: cases {sorted(cases_b)}, the script makes {sorted(cases_a)}")
    for case in sorted(set(cases_a) & set(cases_b)):
        ca, cb = cases_a[case], cases_b[case]
        for key in sorted(set(ca) | set(cb)):
            if key == "loss":
                if abs(ca[key] - cb[key]) > 1e-9 * abs(cb[key]):
                    problems.append(f"{committed}: {case}: loss {cb[key]!r}, now {ca[key]!r}")
            elif ca.get(key) != cb.get(key):
                problems.append(f"{committed}: {case}: '{key}' differs from the script's")


def compare_tensors(fresh, committed, problems):
    a, b = load_file(fresh), load_file(committed)
    if sorted(a) != sorted(b):
        problems.append(f"{committed}: the tensor names differ from the script's "
                        f"({len(b)} committed, {len(a)} made)")
        return
    worst = 0.0
    for name in sorted(a):
        if a[name].shape != b[name].shape:
            problems.append(f"{committed}: {name} shape {b[name].shape} vs {a[name].shape}")
            continue
        scale = float(np.abs(b[name]).max())
        err = float(np.abs(a[name].astype(np.float64) - b[name].astype(np.float64)).max())
        worst = max(worst, err / max(scale, 1e-30))
        if err > 1e-6 * scale:
            problems.append(f"{committed}: {name} differs by {err:.3e} (scale {scale:.3e})")
    print(f"  {os.path.basename(committed)}: {len(a)} tensors, "
          f"worst difference {worst:.3e} of scale")


def main():
    for name in ("lora_golden.json", "lora_golden.safetensors"):
        if not os.path.exists(os.path.join(GOLDEN_DIR, name)):
            fail(f"{os.path.join(GOLDEN_DIR, name)} is missing; run scripts/make_lora_golden.py")
    with tempfile.TemporaryDirectory(prefix="loom_lora_golden_") as tmp:
        run = subprocess.run([sys.executable, SCRIPT, "--out", tmp], capture_output=True, text=True)
        sys.stdout.write(run.stdout)
        sys.stderr.write(run.stderr)
        if run.returncode == 77:
            skip("make_lora_golden.py skipped (see above)")
        if run.returncode != 0:
            fail(f"make_lora_golden.py exited {run.returncode}")
        problems = []
        compare_json(os.path.join(tmp, "lora_golden.json"),
                     os.path.join(GOLDEN_DIR, "lora_golden.json"), problems)
        compare_tensors(os.path.join(tmp, "lora_golden.safetensors"),
                        os.path.join(GOLDEN_DIR, "lora_golden.safetensors"), problems)
    if problems:
        fail(f"the committed goldens are not the script's output (peft {peft.__version__}); "
             "regenerate with `.venv/bin/python3 scripts/make_lora_golden.py` and commit:\n  "
             + "\n  ".join(problems))
    print(f"test_lora_golden_fresh: equal to a fresh run (peft {peft.__version__})")


if __name__ == "__main__":
    main()
