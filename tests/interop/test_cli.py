#!/usr/bin/env python3
"""The `loom` command as a user runs it, on the shipped recipe recipes/lora_hf.yaml (the tiny
Hugging Face Llama in tests/golden/hf_llama, trained on the repository's own text: seconds).

1. `loom recipes` lists every shipped recipe.
2. `loom train R --print-config` prints the resolved recipe (overrides applied) and trains
   nothing; an unknown key fails naming the key, the nearest valid one and nothing is written.
3. `loom train R` twice gives byte-identical adapters; the held-out loss falls; the run folder
   holds the adapter, the metrics, the checkpoints and the summary.
4. The second run, cut back to its first checkpoint as if killed there, continued with
   `loom train R --resume DIR`, ends byte-identical to the uninterrupted run.
5. `loom eval --adapter RUN` scores the training text with a lower perplexity than the base.

Needs only the Python standard library and the build; exit 0: all hold, 1: one does not.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from interop_common import SOURCE_DIR, BUILD_DIR, fail

LOOM = os.path.join(BUILD_DIR, "loom")
RECIPE = "recipes/lora_hf.yaml"
# The recipe's own 40 steps, evaluation and checkpoints every 20; keep every checkpoint.
STEPS = ["checkpoint.keep_last=4"]


def loom(*args, expect_ok=True):
    p = subprocess.run([LOOM, *args], cwd=SOURCE_DIR, capture_output=True, text=True)
    out = p.stdout + p.stderr
    if expect_ok and p.returncode != 0:
        fail(f"`loom {' '.join(args)}` exited {p.returncode}:\n{out[-3000:]}")
    if not expect_ok and p.returncode == 0:
        fail(f"`loom {' '.join(args)}` succeeded; expected an error:\n{out[-3000:]}")
    return out


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def metrics(run, kind):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [j for j in map(json.loads, f) if j.get("type") == kind]


def perplexity(out):
    m = re.search(r"^perplexity:\s*([0-9.]+)", out, re.MULTILINE)
    if not m:
        fail(f"no perplexity in the output of loom eval:\n{out[-2000:]}")
    return float(m.group(1))


def main():
    if not os.access(LOOM, os.X_OK):
        fail(f"no loom binary at {LOOM}: build first (scripts/build.sh)")
    tmp = tempfile.mkdtemp(prefix="loom_cli_")
    try:
        out = loom("recipes")
        for name in sorted(os.listdir(os.path.join(SOURCE_DIR, "recipes"))):
            if name.endswith(".yaml") and name[:-5] not in out:
                fail(f"`loom recipes` does not list {name}:\n{out}")

        a, b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
        out = loom("train", RECIPE, "--print-config", f"output.dir={a}", "lora.rank=4")
        for expected in ("rank: 4", f"dir: {a}", "path: tests/golden/hf_llama"):
            if expected not in out:
                fail(f"--print-config does not show `{expected}`:\n{out}")
        if os.path.exists(a):
            fail("--print-config created the run folder")
        out = loom("train", RECIPE, f"output.dir={a}", "lora.rnak=4", expect_ok=False)
        if "lora.rnak" not in out or "rank" not in out:
            fail(f"the unknown-key error does not name the key and the nearest one:\n{out}")
        if os.path.exists(a):
            fail("a refused recipe left a run folder behind")

        loom("train", RECIPE, f"output.dir={a}", *STEPS)
        loom("train", RECIPE, f"output.dir={b}", *STEPS)
        for part in ("adapter/adapter_model.safetensors", "adapter/loom_adapter.json",
                     "metrics.jsonl", "summary.json", "recipe.yaml",
                     "checkpoints/checkpoint-20.h5", "checkpoints/checkpoint-40.h5"):
            if not os.path.exists(os.path.join(a, part)):
                fail(f"the run folder has no {part}")
        tensors = "adapter/adapter_model.safetensors"
        if read_bytes(os.path.join(a, tensors)) != read_bytes(os.path.join(b, tensors)):
            fail("the same recipe run twice gave different adapters")
        steps = [j["step"] for j in metrics(a, "train")]
        if steps != list(range(1, 41)):
            fail(f"metrics.jsonl train steps are {steps}, expected 1..40")
        evals = [(j["step"], j["sources"]["sample"]["loss"]) for j in metrics(a, "eval")]
        print(f"held-out loss by step: {evals}")
        if [s for s, _ in evals] != [0, 20, 40] or not evals[-1][1] < evals[0][1] - 0.3:
            fail(f"the held-out loss did not fall by 0.3 over the run: {evals}")

        # Interrupt b after its step-20 checkpoint, as a kill there would leave it, and resume.
        os.remove(os.path.join(b, "checkpoints/checkpoint-40.h5"))
        shutil.rmtree(os.path.join(b, "adapter"))
        os.remove(os.path.join(b, "summary.json"))
        out = loom("train", RECIPE, "--resume", b, *STEPS)
        if "(step 20 of 40" not in out or "step 1/40" in out:
            fail(f"--resume did not continue from the step-20 checkpoint:\n{out[-2000:]}")
        if read_bytes(os.path.join(a, tensors)) != read_bytes(os.path.join(b, tensors)):
            fail(f"the resumed run's adapter differs from the uninterrupted run's:\n{out[-2000:]}")
        steps = [j["step"] for j in metrics(b, "train")]
        if steps != list(range(1, 41)):
            fail(f"after resume metrics.jsonl has train steps {steps}")
        print("resumed from step 20: adapter byte-identical to the uninterrupted run")

        text = "tests/golden/tokenizer_text.txt"
        base = perplexity(loom("eval", "--model", "tests/golden/hf_llama", "--text", text))
        tuned = perplexity(loom("eval", "--model", "tests/golden/hf_llama", "--text", text,
                                "--adapter", a))
        print(f"loom eval on the training text: base perplexity {base:.3f}, with the adapter "
              f"{tuned:.3f}")
        if not tuned < base:
            fail(f"the adapter did not lower the perplexity of its own training text: {base} -> "
                 f"{tuned}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("PASS")


if __name__ == "__main__":
    main()
