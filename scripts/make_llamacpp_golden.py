#!/usr/bin/env python3
"""llama.cpp's answers on SmolLM2-135M-Instruct (Q4_1 GGUF), for loom's parity tests.

Writes <out>/llamacpp_smollm2.json (default out: tests/golden), which tests/test_inference.cpp
reads (LlamaCpp.* tests) so CI compares without llama.cpp installed:

  tokens      llama.cpp's token ids for tests/golden/tokenizer_text.txt, specials parsed and not
  logits      next-token logits after each of a few prompts: the 64 largest (id, logit), every
              97th id's logit, the arg-max and the log-sum-exp; and how far the same llama.cpp
              with an f32 KV cache lands from them (max diff over those ids)
  greedy      the 32 greedy tokens (arg-max of llama.cpp's logits, no stop token) after a few
              prompts, the gap between the two largest logits at each step, and the tokens the
              same llama.cpp gives with an f32 KV cache
  perplexity  llama.cpp's perplexity-tool scoring on a ~24k-token text made of license texts from
              Debian's base-files (/usr/share/common-licenses, on every Debian system): windows of
              512 tokens from an empty context, only the predictions at positions 256..510 of each
              window count (as tools/perplexity/perplexity.cpp: first = n_ctx / 2); per-window
              negative log-likelihood sums, the total and the throughput

llama.cpp comes from the llama-cpp-python package (scripts/python-requirements.txt), which builds
it from source; its defaults are kept (f16 KV cache, no flash attention), with 2 threads.

  --perplexity-only --text FILE [--ctx 512] : print one JSON line with llama.cpp's perplexity and
                                              tokens/s on FILE (bench/bench_model.cpp uses it)
"""
import argparse
import json
import math
import os
import sys
import time

SOURCE_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
MODEL = os.path.join(SOURCE_DIR, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
TOKENIZER_TEXT = os.path.join(SOURCE_DIR, "tests", "golden", "tokenizer_text.txt")
PPL_SOURCES = [f"/usr/share/common-licenses/{n}"
               for n in ("GPL-3", "GPL-2", "Apache-2.0", "MPL-2.0", "LGPL-2.1")]
PPL_CTX = 512
THREADS = 2

LOGIT_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea, there lived",
    "<|im_start|>user\nWhat is 17 times 3?<|im_end|>\n<|im_start|>assistant\n",
]
CHATML_SYSTEM = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
                 "Face<|im_end|>\n")
GREEDY_PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived",
    CHATML_SYSTEM + "<|im_start|>user\nGive me three tips for learning to cook.<|im_end|>\n"
    "<|im_start|>assistant\n",
    CHATML_SYSTEM + "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\n",
    "import numpy as np\n\ndef softmax(x):\n",
    "The GNU General Public License is a free, copyleft license for",
    "Photosynthesis is the process by which",
]
N_GREEDY = 32
TOP_LOGITS = 64
LOGIT_STRIDE = 97


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def ppl_text_bytes():
    """The perplexity text: the license files joined by blank lines."""
    parts = []
    for path in PPL_SOURCES:
        with open(path, "rb") as f:
            parts.append(f.read())
    return b"\n\n".join(parts)


def open_model(llama_cpp, n_ctx, logits_all=True):
    return llama_cpp.Llama(model_path=MODEL, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                           n_threads=THREADS, n_threads_batch=THREADS, logits_all=logits_all,
                           verbose=False)


def last_logits(llm, ids):
    import numpy as np
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[len(ids) - 1], dtype=np.float64)


def log_softmax_rows(x):
    import numpy as np
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def perplexity(llama_cpp, tokens, ctx, progress=True):
    """llama.cpp's perplexity tool (tools/perplexity/perplexity.cpp), window by window: the KV
    cache cleared, one llama_decode of the window with output logits only at positions ctx/2 and
    later, and the predictions at positions ctx/2 .. ctx-2 scored. Uses llama-cpp-python's
    internal batch and context objects (pinned version) to set the per-token logits flags."""
    import numpy as np
    llm = open_model(llama_cpp, ctx, logits_all=False)
    first = ctx // 2
    n_vocab = llm.n_vocab()
    n_windows = len(tokens) // ctx
    window_nll = []
    decode_s = 0.0
    t0 = time.time()
    for w in range(n_windows):
        window = tokens[w * ctx:(w + 1) * ctx]
        llm._ctx.kv_cache_clear()
        llm._batch.set_batch(window, n_past=0, logits_all=False)
        for i in range(ctx):
            llm._batch.batch.logits[i] = i >= first
        t1 = time.time()
        llm._ctx.decode(llm._batch)
        decode_s += time.time() - t1
        # Output rows are the flagged positions first .. ctx-1, in order; the last predicts past
        # the window.
        out = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=((ctx - first) * n_vocab,))
        lp = log_softmax_rows(out.reshape(ctx - first, n_vocab)[:-1].astype(np.float64))
        targets = np.array(window[first + 1:ctx])
        window_nll.append(float(-lp[np.arange(len(targets)), targets].sum()))
        if progress:
            print(f"  llama.cpp perplexity [{w + 1}/{n_windows}] "
                  f"{math.exp(sum(window_nll) / ((w + 1) * (ctx - 1 - first))):.4f}, "
                  f"{(w + 1) * ctx / decode_s:.1f} tokens/s", file=sys.stderr)
    seconds = time.time() - t0
    scored = n_windows * (ctx - 1 - first)
    return {
        "ctx": ctx,
        "scoring": "second-half",
        "windows": n_windows,
        "tokens_evaluated": n_windows * ctx,
        "tokens_scored": scored,
        "window_nll": window_nll,
        "nll_sum": sum(window_nll),
        "perplexity": math.exp(sum(window_nll) / scored),
        "seconds": seconds,
        "decode_seconds": decode_s,
        "tokens_per_second": n_windows * ctx / decode_s,  # llama_decode time only
    }


def sample_logits(logits):
    """The 64 largest logits, every 97th logit, and log-sum-exp (for log-probabilities)."""
    import numpy as np
    order = np.lexsort((np.arange(len(logits)), -logits))
    return {
        "n_vocab": len(logits),
        "argmax": int(order[0]),
        "logsumexp": float(logits.max() + np.log(np.exp(logits - logits.max()).sum())),
        "top": [[int(i), float(logits[i])] for i in order[:TOP_LOGITS]],
        "stride": LOGIT_STRIDE,
        "strided": [float(v) for v in logits[::LOGIT_STRIDE]],
    }


def sampled_max_diff(entry, logits):
    """max |logits - entry| over the ids sample_logits kept."""
    d = max(abs(logits[i] - v) for i, v in entry["top"])
    return max(d, max(abs(a - b) for a, b in zip(logits[::LOGIT_STRIDE], entry["strided"])))


def greedy(llm, ids, n):
    """n greedy tokens, and at each step the gap between the two largest logits."""
    import numpy as np
    llm.reset()
    llm.eval(ids)
    out, margins = [], []
    for _ in range(n):
        s = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        top2 = np.argsort(-s, kind="stable")[:2]  # first index on ties, as loom
        out.append(int(top2[0]))
        margins.append(float(s[top2[0]] - s[top2[1]]))
        llm.eval([out[-1]])
    return out, margins


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(SOURCE_DIR, "tests", "golden"))
    ap.add_argument("--perplexity-only", action="store_true")
    ap.add_argument("--text", help="text file for --perplexity-only")
    ap.add_argument("--ctx", type=int, default=PPL_CTX)
    args = ap.parse_args()
    try:
        import llama_cpp
    except ImportError as e:
        print(f"SKIPPED: llama_cpp is not importable ({e}); run scripts/setup_python.sh "
              "(it builds llama-cpp-python from source)", file=sys.stderr)
        return 77
    if not os.path.exists(MODEL):
        print(f"SKIPPED: {MODEL} is missing; run scripts/fetch_models.sh", file=sys.stderr)
        return 77

    if args.perplexity_only:
        if not args.text:
            ap.error("--perplexity-only needs --text FILE")
        with open(args.text, "rb") as f:
            text = f.read()
        llm = open_model(llama_cpp, args.ctx, logits_all=False)
        t0 = time.time()
        tokens = llm.tokenize(text, add_bos=False, special=False)
        tokenize_s = time.time() - t0
        del llm
        r = perplexity(llama_cpp, tokens, args.ctx)
        r.pop("window_nll")
        r.update({"n_tokens": len(tokens), "tokenize_seconds": tokenize_s,
                  "llama_cpp_python": llama_cpp.__version__, "threads": THREADS})
        print(json.dumps(r))
        return 0

    golden = {
        "about": "llama.cpp (llama-cpp-python) on SmolLM2-135M-Instruct Q4_1; made by "
                 "scripts/make_llamacpp_golden.py",
        "llama_cpp_python": llama_cpp.__version__,
        "model": os.path.relpath(MODEL, SOURCE_DIR),
        "model_bytes": os.path.getsize(MODEL),
        "settings": {"threads": THREADS, "kv_cache": "f16 (llama.cpp default)",
                     "flash_attn": False},
    }
    llm = open_model(llama_cpp, 2048)
    # The same llama.cpp with an f32 KV cache: how much llama.cpp's answers move under a change
    # of its own rounding, the yardstick for loom's differences (tests/test_inference.cpp).
    llm_f32kv = llama_cpp.Llama(model_path=MODEL, n_ctx=2048, n_batch=2048, n_ubatch=2048,
                                n_threads=THREADS, n_threads_batch=THREADS, logits_all=True,
                                verbose=False, type_k=0, type_v=0)  # GGML_TYPE_F32

    with open(TOKENIZER_TEXT, "rb") as f:
        text = f.read()
    golden["tokens"] = {
        "text_file": os.path.relpath(TOKENIZER_TEXT, SOURCE_DIR),
        "text_fnv1a64": fnv1a64(text),
        "plain": llm.tokenize(text, add_bos=False, special=False),
        "parse_special": llm.tokenize(text, add_bos=False, special=True),
    }
    print(f"tokens: {len(golden['tokens']['plain'])} plain, "
          f"{len(golden['tokens']['parse_special'])} with specials", file=sys.stderr)

    golden["logits"] = []
    for prompt in LOGIT_PROMPTS:
        ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        entry = {"prompt": prompt, "ids": ids}
        entry.update(sample_logits(last_logits(llm, ids)))
        entry["f32kv_max_diff"] = float(sampled_max_diff(entry, last_logits(llm_f32kv, ids)))
        golden["logits"].append(entry)
        print(f"logits: {len(ids)} prompt tokens, arg-max {entry['argmax']}, llama.cpp f16 vs "
              f"f32 KV cache: max diff {entry['f32kv_max_diff']:.3f}", file=sys.stderr)

    golden["greedy"] = []
    for prompt in GREEDY_PROMPTS:
        ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        toks, margins = greedy(llm, ids, N_GREEDY)
        toks_f32kv, _ = greedy(llm_f32kv, ids, N_GREEDY)
        text_out = llm.detokenize(toks, special=True).decode("utf-8", "replace")
        golden["greedy"].append({"prompt": prompt, "ids": ids, "tokens": toks, "margins": margins,
                                 "f32kv_tokens": toks_f32kv, "text": text_out})
        same = next((i for i in range(N_GREEDY) if toks[i] != toks_f32kv[i]), N_GREEDY)
        print(f"greedy: {text_out!r} (f32 KV cache: same for {same} tokens)", file=sys.stderr)
    del llm, llm_f32kv

    ppl_text = ppl_text_bytes()
    tok_llm = open_model(llama_cpp, PPL_CTX, logits_all=False)
    ppl_tokens = tok_llm.tokenize(ppl_text, add_bos=False, special=False)
    del tok_llm
    ppl = perplexity(llama_cpp, ppl_tokens, PPL_CTX)
    print(f"perplexity: {ppl['perplexity']:.4f} over {ppl['windows']} windows "
          f"({ppl['tokens_per_second']:.1f} tokens/s)", file=sys.stderr)
    for timing in ("seconds", "decode_seconds", "tokens_per_second"):  # bench_model measures speed
        ppl.pop(timing)
    ppl.update({"sources": PPL_SOURCES, "joiner": "\\n\\n", "text_bytes": len(ppl_text),
                "text_fnv1a64": fnv1a64(ppl_text), "n_tokens": len(ppl_tokens)})
    golden["perplexity"] = ppl

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "llamacpp_smollm2.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(golden, f, indent=None, separators=(",", ":"))
        f.write("\n")
    os.replace(path + ".tmp", path)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
