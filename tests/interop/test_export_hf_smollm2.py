#!/usr/bin/env python3
"""loom's Hugging Face exports of the real SmolLM2-135M-Instruct Q4_1 GGUF, loaded by transformers
and PEFT.

loom (tests/tools/hf_export_tool.cpp) loads the GGUF, attaches a small deterministic LoRA adapter
to all seven projections (q/k included, whose rows llama.cpp permuted), and exports:
  merged/  base + adapter merged, f32 safetensors, config.json, tokenizer files synthesized from
           the GGUF's tokenizer.* keys (byte-level BPE, pre-tokenizer "smollm", chat template)
  base/    the base alone (the dequantized Q4_1 weights), f32
  peft/    the adapter as a PEFT adapter
It also writes its own logits (the GGUF model + adapter, unmerged, f32) and its token ids.

Checked here, with transformers + peft over Debian's torch:
  1. AutoTokenizer.from_pretrained(merged/) gives loom's ids on a chat transcript (rendered from
     the GGUF's chat template by jinja2, the way transformers renders) and on a text of digits,
     contractions, whitespace runs and non-Latin scripts; apply_chat_template renders the same
     text; decode gives the text back.
  2. AutoModelForCausalLM.from_pretrained(merged/) logits equal loom's.
  3. PeftModel.from_pretrained(AutoModelForCausalLM(base/), peft/) logits equal loom's, and
     PEFT's merge_and_unload() gives merged/'s weights.
  4. `loom eval --data` of chat JSONL (ShareGPT's layout) on merged/ gives transformers' loss on
     the assistant turns (check_eval_data says how they are found there).
Tolerance: both sides run the same f32 weights in f32; what differs is the order of f32
accumulations (GEMM blocking, softmax, rms norm) over 30 layers, a few 1e-6 relative per layer.
Logits must agree to 2e-5 of their largest magnitude (measured 2e-6 on 2026-11-24; the printed
figures say the run's), and the greedy next token at every position must be the same. So that
agreement cannot come from an adapter that does nothing, the adapter must move the logits by
more than 100 times the disagreement allowed.

Exit 0: all agree; 1: a difference; 77: skipped (model or references missing), said loudly.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings

from interop_common import PEFT_INSTALL_HINT, SOURCE_DIR, BUILD_DIR, skip, fail


try:
    import numpy as np
    import torch
    import transformers
    from safetensors.numpy import load_file
except Exception as e:  # ImportError, or transformers refusing its dependency versions
    skip(f"torch / transformers / safetensors not importable ({e}); run scripts/setup_python.sh")
try:
    import peft
except Exception as e:
    skip(f"peft not importable ({e}); {PEFT_INSTALL_HINT}")
try:
    import jinja2
    from gguf import GGUFReader
except Exception as e:
    skip(f"jinja2 / gguf not importable ({e}); run scripts/setup_python.sh")

MODEL = os.path.join(SOURCE_DIR, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
TOOL = os.path.join(BUILD_DIR, "tests", "loom_test_hf_export_tool")
LOGIT_TOL = 2e-5

MESSAGES = [
    {"role": "system", "content": "You answer in one sentence."},
    {"role": "user", "content": "What's a compiler? Explain it in 20 words, or 3 lines."},
    {"role": "assistant", "content": "A compiler translates source code  into machine code."},
    {"role": "user", "content": "Und auf Deutsch? Привет, 世界! 🙂"},
]
PLAIN = ("It's 2024-11-24: I'LL pay $1,234.56 for 7 items.\n\n\t  indented   text\r\n"
         "caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \u043f\u0440\u0438\u0432\u0435\u0442 "
         "<|im_start|>user x<|im_end|> tail")
ADAPTER = {"peft_type": "LORA", "r": 8, "lora_alpha": 16,
           "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                              "down_proj"]}


def gguf_chat_template(path):
    field = GGUFReader(path).fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def render_chat(template):
    """As transformers renders chat templates (sandboxed jinja2, trim_blocks, lstrip_blocks)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=MESSAGES, add_generation_prompt=True)


def compare_logits(what, theirs, ours, figures):
    scale = float(np.abs(ours).max())
    err = float(np.abs(theirs.astype(np.float64) - ours.astype(np.float64)).max())
    same_argmax = bool((theirs.argmax(-1) == ours.argmax(-1)).all())
    figures.append(f"{what}: max |diff| {err:.3e}, {err / scale:.2e} of max |logit| {scale:.2f}, "
                   f"greedy tokens {'equal' if same_argmax else 'DIFFER'}")
    if err > LOGIT_TOL * scale or not same_argmax:
        fail(f"{what}: logits differ by {err:.3e} (tolerance {LOGIT_TOL} x {scale:.2f}), "
             f"greedy tokens equal: {same_argmax}")


def torch_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


CONVERSATIONS = [
    [{"role": "user", "content": "What is a compiler?"},
     {"role": "assistant", "content": "A program that translates source code into machine code."},
     {"role": "user", "content": "And an interpreter?"},
     {"role": "assistant", "content": "It runs the program directly, statement by statement."}],
    [{"role": "system", "content": "You answer in one sentence."},
     {"role": "user", "content": "Define FOLDOC."},
     {"role": "assistant", "content": "The Free On-line Dictionary of Computing."}],
]


def check_eval_data(tmp, tok, model, problems, figures):
    """4. `loom eval --data` on chat JSONL (ShareGPT's layout) scores what transformers scores on
    the assistant turns: each turn's tokens and its <|im_end|> (the text between the generation
    prompt apply_chat_template gives for the turns before it and the template's rendering up to
    the turn, less the newline after <|im_end|>), in conversations rendered by the model's own
    template, its default system message included where a conversation has none."""
    path = f"{tmp}/chat.jsonl"
    with open(path, "w") as f:
        for conv in CONVERSATIONS:
            turns = [{"from": {"user": "human", "assistant": "gpt"}.get(m["role"], m["role"]),
                      "value": m["content"]} for m in conv]
            f.write(json.dumps({"conversations": turns}) + "\n")
    nll, count = 0.0, 0
    for conv in CONVERSATIONS:
        full = tok.apply_chat_template(conv, tokenize=True)
        logp = torch.log_softmax(torch.tensor(torch_logits(model, full), dtype=torch.float64), -1)
        for k, m in enumerate(conv):
            if m["role"] != "assistant":
                continue
            prompt = tok.apply_chat_template(conv[:k], tokenize=True, add_generation_prompt=True)
            upto = tok.apply_chat_template(conv[:k + 1], tokenize=True)
            if full[:len(upto)] != upto or upto[:len(prompt)] != prompt:
                fail("apply_chat_template's renderings of a conversation's prefixes are not "
                     "prefixes of each other: cannot tell the assistant tokens")
            if tok.decode(upto[-2:]) != "<|im_end|>\n":
                fail(f"an assistant turn ends in {tok.decode(upto[-2:])!r}, not <|im_end|> and "
                     "a newline")
            for t in range(len(prompt), len(upto) - 1):
                nll -= float(logp[t - 1, full[t]])
                count += 1
    theirs = nll / count
    run = subprocess.run([os.path.join(BUILD_DIR, "loom"), "eval", "--model", f"{tmp}/merged",
                          "--data", path, "--format", "chat", "--messages-field", "conversations",
                          "--precision", "f32"], capture_output=True, text=True, cwd=tmp)
    if run.returncode != 0:
        fail(f"loom eval --data exited {run.returncode}:\n{run.stdout}{run.stderr}")
    m = re.search(r"^loss:\s*([0-9.]+) nats per target token, perplexity [0-9.]+ \((\d+) targets",
                  run.stdout, re.MULTILINE)
    if not m:
        fail(f"no loss in loom eval --data's output:\n{run.stdout}")
    ours, targets = float(m.group(1)), int(m.group(2))
    figures.append(f"loom eval --data (chat, ShareGPT layout): loss {ours:.5f} on {targets} "
                   f"assistant tokens, transformers {theirs:.5f} on {count}")
    if targets != count or abs(ours - theirs) > 1e-4:
        problems.append(f"loom eval --data: loss {ours} on {targets} targets, transformers "
                        f"{theirs} on {count}")


def main():
    if not os.path.exists(MODEL):
        skip(f"{MODEL} is missing (run scripts/fetch_models.sh)")
    if not os.access(TOOL, os.X_OK):
        fail(f"{TOOL} is not built (ninja -C {BUILD_DIR} loom_test_hf_export_tool)")
    torch.manual_seed(0)
    chat_text = render_chat(gguf_chat_template(MODEL))
    problems, figures = [], []
    with tempfile.TemporaryDirectory(prefix="loom_export_hf_smollm2_") as tmp:
        spec = {"source": MODEL, "lora": ADAPTER, "adapter_seed": 5, "adapter_scale": 0.05,
                "texts": [chat_text, PLAIN], "base_dir": f"{tmp}/base",
                "merged_dir": f"{tmp}/merged", "peft_dir": f"{tmp}/peft",
                "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
                "logits": f"{tmp}/loom_logits.bin"}
        with open(f"{tmp}/spec.json", "w") as f:
            json.dump(spec, f)
        start = time.time()
        run = subprocess.run([TOOL, "export", f"{tmp}/spec.json", f"{tmp}/out.json"],
                             capture_output=True, text=True)
        sys.stderr.write(run.stderr)
        if run.returncode != 0:
            fail(f"loom_test_hf_export_tool exited {run.returncode}")
        print(f"loom: exports written in {time.time() - start:.1f} s")
        with open(f"{tmp}/out.json") as f:
            out = json.load(f)
        ids = out["ids"]
        loom_logits = np.fromfile(f"{tmp}/loom_logits.bin", dtype=np.float32).reshape(
            len(ids), out["vocab_size"])

        # 1. The tokenizer.
        tok = transformers.AutoTokenizer.from_pretrained(f"{tmp}/merged")
        rendered = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
        if rendered != chat_text:
            problems.append("apply_chat_template renders another text than the GGUF's template")
        for name, text, loom_ids in (("chat", chat_text, out["texts_ids"][0]),
                                     ("plain", PLAIN, out["texts_ids"][1])):
            hf_ids = tok(text)["input_ids"]
            if hf_ids != loom_ids:
                first = next((i for i, (a, b) in enumerate(zip(hf_ids, loom_ids)) if a != b),
                             min(len(hf_ids), len(loom_ids)))
                problems.append(f"{name} text: transformers' ids differ from loom's at {first} "
                                f"({hf_ids[first:first + 5]} vs {loom_ids[first:first + 5]})")
            if tok.decode(hf_ids) != text:
                problems.append(f"{name} text: decode does not give the text back")
        chat_ids = tok.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True)
        if chat_ids != out["texts_ids"][0]:
            problems.append("apply_chat_template(tokenize=True) ids differ from loom's")
        figures.append(f"tokenizer: {len(ids)} chat tokens and {len(out['texts_ids'][1])} plain "
                       f"tokens, ids equal: {not problems}")

        # 2. The merged model.
        start = time.time()
        merged = transformers.AutoModelForCausalLM.from_pretrained(
            f"{tmp}/merged", torch_dtype=torch.float32).eval()
        compare_logits("merged f32 (transformers)", torch_logits(merged, ids), loom_logits,
                       figures)
        merged_weights = {k: v.detach().numpy() for k, v in merged.state_dict().items()}
        check_eval_data(tmp, tok, merged, problems, figures)
        del merged

        # 3. The PEFT adapter on the exported base.
        base = transformers.AutoModelForCausalLM.from_pretrained(
            f"{tmp}/base", torch_dtype=torch.float32).eval()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = peft.PeftModel.from_pretrained(base, f"{tmp}/peft").eval()
        for w in caught:
            problems.append(f"PeftModel.from_pretrained warned: {w.message}")
        compare_logits("base + PEFT adapter (peft)", torch_logits(model, ids), loom_logits, figures)
        with model.disable_adapter():
            moved = float(np.abs(torch_logits(model, ids) - loom_logits).max())
        scale = float(np.abs(loom_logits).max())
        figures.append(f"the adapter moves the logits by up to {moved:.3f} ({moved / scale:.2e} "
                       "of max |logit|)")
        if moved < 100 * LOGIT_TOL * scale:
            problems.append(f"the adapter moves the logits by only {moved:.3e}: too little to "
                            "tell a correct export from a wrong one")
        peft_merged = model.merge_and_unload().state_dict()
        worst = 0.0
        for name, theirs in peft_merged.items():
            theirs = theirs.detach().numpy()
            ours = merged_weights[name]
            scale = max(float(np.abs(theirs).max()), 1e-30)
            worst = max(worst, float(np.abs(theirs - ours).max()) / scale)
        figures.append(f"PEFT merge_and_unload vs loom's merged weights: worst {worst:.2e} of "
                       "scale")
        if worst > 1e-6:
            problems.append(f"PEFT's merged weights differ from loom's by {worst:.2e} of scale")
        print(f"transformers / peft: {time.time() - start:.1f} s")
    for f in figures:
        print("  " + f)
    if problems:
        fail("\n  ".join(problems))
    print(f"test_export_hf_smollm2: transformers {transformers.__version__}, peft "
          f"{peft.__version__}, torch {torch.__version__}: all agree")


if __name__ == "__main__":
    main()
