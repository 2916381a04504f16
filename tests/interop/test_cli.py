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
5. `loom eval --adapter RUN` scores the training text with a lower perplexity than the base;
   `loom eval --data` scores the completions of instruct records (one target per completion
   byte and EOS with the byte tokenizer) with a lower loss with the adapter; `loom train
   --dry-run` counts the steps of train.epochs and shows the first record with its completion
   (and only it) marked as what the loss counts, and writes no run folder.
6. Ctrl-C (SIGINT) in the middle of a run: it stops after the step, exits 130, leaves the
   checkpoint and adapter of that step and no summary.json; `--resume` then ends byte-identical
   to an uninterrupted run. SIGTERM likewise (143).
7. `loom inspect --tensors` of a sharded Hugging Face folder lists what its safetensors headers
   hold; `loom inspect` of the SmolLM2 GGUF names its chat format and the default system
   message its template renders (jinja2, the template read with the gguf package).

Needs the build, the SmolLM2 model (scripts/fetch_models.sh) and the .venv's gguf and jinja2;
exit 0: all hold, 1: one does not.
"""
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

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


def start_training(run, steps):
    """`loom train RECIPE` in the background, returned once its first 30 steps are in
    metrics.jsonl (the training loop, not the model load, is then running)."""
    # As a foreground process at a terminal: SIGINT at its default (a test run in the background
    # of a non-interactive shell inherits it ignored, and loom leaves an ignored SIGINT ignored).
    p = subprocess.Popen([LOOM, "train", RECIPE, f"output.dir={run}", f"train.steps={steps}"],
                         cwd=SOURCE_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        try:
            if len(metrics(run, "train")) >= 30:
                return p
        except (OSError, ValueError):
            pass  # not written yet, or a line being written
        time.sleep(0.05)
    p.kill()
    fail(f"`loom train` into {run} did not reach step 30 (exit {p.poll()}):\n"
         f"{p.communicate()[0][-2000:]}")


def check_interrupts(tmp):
    """Section 6 of the module docstring."""
    steps = 400  # a few seconds on the tiny model: time to send a signal in the middle
    ref, cut = os.path.join(tmp, "ref"), os.path.join(tmp, "cut")
    loom("train", RECIPE, f"output.dir={ref}", f"train.steps={steps}")

    p = start_training(cut, steps)
    p.send_signal(signal.SIGINT)
    out = p.communicate(timeout=120)[0]
    if p.returncode != 130:
        fail(f"after Ctrl-C `loom train` exited {p.returncode}, expected 130:\n{out[-2000:]}")
    m = re.search(r"^interrupted:\s+by SIGINT \(Ctrl-C\) after step (\d+) of 400", out, re.M)
    if not m or f"continue with: loom train --resume {cut}" not in out:
        fail(f"the interrupted run does not say where it stopped and how to go on:\n{out[-2000:]}")
    at = int(m.group(1))
    if not 30 <= at < steps:
        fail(f"interrupted at step {at}; expected between 30 and {steps}")
    for part in (f"checkpoints/checkpoint-{at}.h5", "adapter/adapter_model.safetensors"):
        if not os.path.exists(os.path.join(cut, part)):
            fail(f"the interrupted run left no {part}:\n{out[-2000:]}")
    if os.path.exists(os.path.join(cut, "summary.json")):
        fail("the interrupted run wrote summary.json (it stands for a finished run)")
    if [j["step"] for j in metrics(cut, "train")] != list(range(1, at + 1)):
        fail(f"metrics.jsonl of the run interrupted at step {at} has other train steps")
    out = loom("train", "--resume", cut)
    if f"(step {at} of {steps}" not in out:
        fail(f"--resume did not continue from step {at}:\n{out[-2000:]}")
    tensors = "adapter/adapter_model.safetensors"
    if read_bytes(os.path.join(ref, tensors)) != read_bytes(os.path.join(cut, tensors)):
        fail("the run interrupted by Ctrl-C and resumed differs from the uninterrupted run")
    print(f"Ctrl-C at step {at} of {steps}: exit 130, checkpoint and adapter saved; resumed "
          "byte-identical to the uninterrupted run")

    p = start_training(os.path.join(tmp, "term"), 100000)
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=120)[0]
    if p.returncode != 143 or "interrupted:   by SIGTERM" not in out:
        fail(f"after SIGTERM `loom train` exited {p.returncode}, expected 143 and a note:\n"
             f"{out[-2000:]}")

    print("SIGTERM: exit 143 after saving the checkpoint and adapter")
    # A second Ctrl-C ending the process at once is tested in-process (Interrupt.* in
    # test_train.cpp): two signals sent from here coalesce into one before loom runs.


def check_inspect():
    """`loom inspect` of a sharded Hugging Face folder lists what the safetensors headers (read
    here with the standard library: an 8-byte length, then JSON) say: every tensor with its dtype
    and shape, the parameter count."""
    folder = "tests/golden/hf_llama3"
    expected = {}
    for name in sorted(os.listdir(os.path.join(SOURCE_DIR, folder))):
        if not name.endswith(".safetensors"):
            continue
        with open(os.path.join(SOURCE_DIR, folder, name), "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        for tensor, info in header.items():
            if tensor != "__metadata__":
                expected[tensor] = (info["dtype"], info["shape"])
    out = loom("inspect", folder, "--tensors")
    listed = {}
    for m in re.finditer(r"^  (\S+)\s+([A-Z0-9]+)\s+\[([0-9, ]*)\]", out, re.MULTILINE):
        listed[m.group(1)] = (m.group(2), [int(x) for x in m.group(3).split(",") if x.strip()])
    if listed != expected:
        fail(f"loom inspect --tensors lists {listed}, the headers say {expected}:\n{out}")
    params = sum(math.prod(shape) for _, shape in expected.values())
    if f"{len(expected)} tensors, {params / 1e6:.2f}M parameters" not in out:
        fail(f"loom inspect does not count {len(expected)} tensors, {params} parameters:\n{out}")
    if "2 safetensors files" not in out or "rope scaling             llama3" not in out:
        fail(f"loom inspect does not show the shards or config.json:\n{out}")
    print(f"loom inspect {folder}: {len(expected)} tensors in 2 shards, as their headers say")

    # A GGUF model: the chat format loom renders its template as, and the default system
    # message, which jinja2 (as apply_chat_template) renders for a conversation without one.
    model = os.path.join(SOURCE_DIR, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(model):
        fail(f"{model} is missing: run scripts/fetch_models.sh")
    import gguf
    import jinja2
    field = gguf.GGUFReader(model).fields["tokenizer.chat_template"]
    template = bytes(field.parts[field.data[0]]).decode()
    rendered = jinja2.Environment().from_string(template).render(
        messages=[{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    system = rendered.split("<|im_start|>system\n", 1)[1].split("<|im_end|>", 1)[0]
    out = loom("inspect", model)
    if "chat template: chatml (" not in out or f'default system message "{system}"' not in out:
        fail(f"loom inspect of {model} does not show the chatml format and the default system "
             f"message {system!r}:\n{out}")
    print(f"loom inspect of the SmolLM2 GGUF: chatml, default system message {system!r}")


def main():
    if not os.access(LOOM, os.X_OK):
        fail(f"no loom binary at {LOOM}: build first (scripts/build.sh)")
    tmp = tempfile.mkdtemp(prefix="loom_cli_")
    try:
        out = loom("recipes")
        for name in sorted(os.listdir(os.path.join(SOURCE_DIR, "recipes"))):
            if name.endswith(".yaml") and name[:-5] not in out:
                fail(f"`loom recipes` does not list {name}:\n{out}")
        if "does not load" in out:
            fail(f"`loom recipes` says a shipped recipe does not load:\n{out}")
        # A recipe that does not load is listed with its error.
        shutil.copytree(os.path.join(SOURCE_DIR, "recipes"), os.path.join(tmp, "recipes"))
        with open(os.path.join(tmp, "recipes", "broken.yaml"), "w") as f:
            f.write("# a typo\nmodel:\n  path: x.gguf\ntrain:\n  stepz: 3\n")
        out = loom("recipes", "--dir", os.path.join(tmp, "recipes"))
        if "does not load" not in out or "train.stepz" not in out:
            fail(f"`loom recipes` lists a broken recipe without its error:\n{out}")

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

        # --data: the loss on a data source's trained tokens (here the completions of instruct
        # records cut from the training text); the adapter lowers it too.
        with open(os.path.join(SOURCE_DIR, text), encoding="utf-8") as f:
            lines = [l.strip() for l in f if len(l.strip()) > 40][:20]
        data = os.path.join(tmp, "instruct.jsonl")
        with open(data, "w") as f:
            for l in lines:
                f.write(json.dumps({"prompt": l[:20], "completion": l[20:]}) + "\n")

        def data_loss(out):
            m = re.search(r"^loss:\s*([0-9.]+) nats per target token, perplexity [0-9.]+ \((\d+) "
                          r"targets", out, re.MULTILINE)
            if not m:
                fail(f"no loss in the output of loom eval --data:\n{out[-2000:]}")
            return float(m.group(1)), int(m.group(2))

        args = ["eval", "--data", data, "--format", "instruct", "--ctx", "256", "--batch", "4"]
        base_loss, targets = data_loss(loom(*args, "--model", "tests/golden/hf_llama"))
        tuned_loss, tuned_targets = data_loss(loom(*args, "--adapter", a))
        completion_bytes = sum(len(l[20:].encode()) for l in lines)
        print(f"loom eval --data (instruct, {len(lines)} records): loss {base_loss:.4f} -> "
              f"{tuned_loss:.4f} with the adapter, {targets} targets")
        # The byte tokenizer: one target per completion byte, plus each record's EOS.
        if targets != tuned_targets or targets != completion_bytes + len(lines):
            fail(f"loom eval --data scored {targets} / {tuned_targets} targets, expected "
                 f"{completion_bytes + len(lines)} (the completions' bytes and EOS)")
        if not tuned_loss < base_loss:
            fail(f"the adapter did not lower the completion loss: {base_loss} -> {tuned_loss}")
        # --dry-run: the plan, the step count and the first batch with what the loss counts
        # (the completion inside the brackets, the prompt outside); no run folder.
        dry = os.path.join(tmp, "dry")
        out = loom("train", RECIPE, "--dry-run", f"output.dir={dry}",
                   f"data.sources=[{{name: ins, path: {data}, format: instruct, "
                   "heldout_fraction: 0}]", "train.epochs=2", "train.steps=0",
                   "train.warmup_steps=0")
        records = [json.loads(l) for l in open(data)]
        if os.path.exists(dry):
            fail("loom train --dry-run created the run folder")
        if "steps:" not in out or "what 2 epochs of the data give" not in out:
            fail(f"--dry-run with train.epochs does not say the steps the data gives:\n{out}")
        shown = [r for r in records if r["prompt"] + "\u27e6" + r["completion"][:20] in out]
        if not shown:
            fail(f"--dry-run's preview shows no record with its completion (and only it) as "
                 f"counted by the loss:\n{out[-3000:]}")
        print("loom train --dry-run: steps counted, a record shown as "
              f"{shown[0]['prompt']}\u27e6{shown[0]['completion'][:20]}...")

        out = loom("eval", "--model", "tests/golden/hf_llama", "--data", data, "--text", text,
                   expect_ok=False)
        if "not both" not in out:
            fail(f"--text with --data is not refused clearly:\n{out}")

        check_inspect()
        check_interrupts(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("PASS")


if __name__ == "__main__":
    main()
