#!/usr/bin/env python3
"""The committed Hugging Face goldens (tests/golden/hf_*) are what scripts/make_hf_golden.py makes.

1. The script runs into a temporary folder with the installed torch and transformers.
2. Every model folder file (config.json, *.safetensors, the shard index) must be byte-identical
   to the committed one: the weights loom's parity test loads are the script's.
3. Every golden JSON must be equal (ids, positions, documents, targets, counts; the loss within
   1e-9 relative) and every golden tensor (logits, hidden, grad_hidden, grad_embeddings) within
   1e-6 of its largest value: a reference run on another BLAS may round differently, never more.

So the C++ test (tests/test_llama.cpp, HfParity.*), which needs no Python, checks loom against
transformers itself.

Exit 0: all equal; 1: a difference or an error; 77: skipped (torch / transformers missing).
"""
import filecmp
import json
import os
import subprocess
import sys
import tempfile

from interop_common import SOURCE_DIR, GOLDEN_DIR, skip, fail


try:
    import numpy as np
    import torch  # noqa: F401
    import transformers
    from safetensors.numpy import load_file
except Exception as e:  # ImportError, or transformers refusing its dependency versions
    skip(f"torch / transformers / safetensors not importable ({e}); run scripts/setup_python.sh")

SCRIPT = os.path.join(SOURCE_DIR, "scripts", "make_hf_golden.py")


def compare_model_dirs(fresh, committed, problems):
    names = sorted(set(os.listdir(fresh)) | set(os.listdir(committed)))
    for name in names:
        a, b = os.path.join(fresh, name), os.path.join(committed, name)
        if not os.path.exists(b):
            problems.append(f"{b} is missing (the script writes it)")
        elif not os.path.exists(a):
            problems.append(f"{b} is not written by the script (stale file?)")
        elif not filecmp.cmp(a, b, shallow=False):
            problems.append(f"{b} differs from the script's output")


def compare_json(fresh, committed, problems):
    with open(fresh) as f:
        a = json.load(f)
    with open(committed) as f:
        b = json.load(f)
    for key in sorted(set(a) | set(b)):
        if key == "reference":
            if a.get(key) != b.get(key):
                print(f"note: {committed}: made with {b.get(key)}; this run: {a.get(key)}")
        elif key == "loss":
            if abs(a[key] - b[key]) > 1e-9 * abs(b[key]):
                problems.append(f"{committed}: loss {b[key]!r}, the script now gives {a[key]!r}")
        elif a.get(key) != b.get(key):
            problems.append(f"{committed}: '{key}' differs from the script's")


def compare_tensors(fresh, committed, problems):
    a, b = load_file(fresh), load_file(committed)
    if sorted(a) != sorted(b):
        problems.append(f"{committed}: tensors {sorted(b)}, the script writes {sorted(a)}")
        return
    for name in sorted(a):
        if a[name].shape != b[name].shape:
            problems.append(f"{committed}: {name} shape {b[name].shape} vs {a[name].shape}")
            continue
        scale = float(np.abs(b[name]).max())
        err = float(np.abs(a[name].astype(np.float64) - b[name].astype(np.float64)).max())
        print(f"  {os.path.basename(committed)} {name}: max abs diff {err:.3e} (scale {scale:.3e})")
        if err > 1e-6 * scale:
            problems.append(f"{committed}: {name} differs by {err:.3e} (scale {scale:.3e})")


def main():
    committed = sorted(n[: -len("_golden.json")] for n in os.listdir(GOLDEN_DIR)
                       if n.startswith("hf_") and n.endswith("_golden.json"))
    if not committed:
        fail(f"no hf_*_golden.json in {GOLDEN_DIR}")
    with tempfile.TemporaryDirectory(prefix="loom_hf_golden_") as tmp:
        run = subprocess.run([sys.executable, SCRIPT, "--out", tmp], capture_output=True, text=True)
        sys.stdout.write(run.stdout)
        sys.stderr.write(run.stderr)
        if run.returncode == 77:
            skip("make_hf_golden.py skipped (see above)")
        if run.returncode != 0:
            fail(f"make_hf_golden.py exited {run.returncode}")
        fresh = sorted(n[: -len("_golden.json")] for n in os.listdir(tmp) if n.endswith("_golden.json"))
        problems = []
        if fresh != committed:
            problems.append(f"committed cases {committed}, the script makes {fresh}")
        for case in sorted(set(fresh) & set(committed)):
            compare_model_dirs(os.path.join(tmp, case), os.path.join(GOLDEN_DIR, case), problems)
            compare_json(os.path.join(tmp, f"{case}_golden.json"),
                         os.path.join(GOLDEN_DIR, f"{case}_golden.json"), problems)
            compare_tensors(os.path.join(tmp, f"{case}_golden.safetensors"),
                            os.path.join(GOLDEN_DIR, f"{case}_golden.safetensors"), problems)
    if problems:
        fail("the committed goldens are not the script's output "
             f"(transformers {transformers.__version__}); regenerate with "
             "`.venv/bin/python3 scripts/make_hf_golden.py` and commit:\n  " + "\n  ".join(problems))
    print(f"test_hf_golden_fresh: {len(committed)} cases equal to a fresh run "
          f"(transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
