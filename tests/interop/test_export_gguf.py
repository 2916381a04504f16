#!/usr/bin/env python3
"""loom's GGUF exports (export/gguf_*) against the gguf Python package and llama.cpp.

A. The gguf package reads every GGUF loom writes (build/tests/loom_test_export_tool write-spec):
   metadata of every value type (strings, arrays, a nested array) with the values asked for, the
   alignment (default 32, and general.alignment = 64), and tensors of every type loom writes --
   f32, f16, bf16, q8_0, q4_0, q4_1, q4_k, q6_k -- whose gguf dequantization equals loom's own
   reading of the same file bit for bit; for f16 / bf16 / q8_0 / q4_0 / q4_1 the stored bytes also
   equal numpy's / gguf's quantization of the input (gguf-py cannot quantize K-quants).
B. An adapter file in the layout llama.cpp's convert_lora_to_gguf.py writes, made here with the
   gguf package's GGUFWriter (f16 tensors, a norm tensor the loader skips), is read by loom with
   the values written (loom_test_export_tool read-adapter).
C. llama.cpp (llama-cpp-python) on SmolLM2-135M-Instruct (Q4_1) with a deterministic rank-8 LoRA
   adapter on all seven projections, alpha 16 (loom_test_export_tool smollm2): q/k get a
   structured update (A spans each weight's top-8 right-singular directions, B = W A^T scaled so
   those directions grow by 25%), the other five seeded random B (N(0, 0.02^2)) on the seeded
   Kaiming A. Evaluated by llama.cpp and by loom on the same tokens:
     - the GGUF adapter on the base (llama.cpp --lora): f32, f16 and q8_0 files; loom reads the
       f32 file back onto the base (f16 / q8_0 only round A and B: unit-tested);
     - the merged model exported as f16, q8_0 and q4_k; loom loads the same files as models;
   perplexity  llama.cpp's perplexity-tool scoring (windows of 512 from an empty context, second
               half scored) over 4 windows of a Debian license text;
   greedy      loom's 16 greedy tokens after each of 3 prompts, fed to llama.cpp: llama.cpp must
               pick loom's token wherever its own top-2 gap is decided (>= 0.5), and at >= 85%
               of all steps.
   Tolerances. llama.cpp rounds the activations of every quantized product to 8 bits (Q8_0/Q8_1
   blocks), the activations of f16 products to f16, and keeps an f16 KV cache; loom computes in
   f32 with exactly dequantized weights. On this model the 8-bit rounding turns last-bit
   differences into rounding flips that grow layer after layer: llama.cpp's logits move by as much
   as switching its own KV cache to f32 moves them (max 0.5-1.4, tests/test_inference.cpp
   LlamaCpp.*). Over 4 windows that is worth about 1% of perplexity: measured when writing this
   test, loom vs llama.cpp -0.003% for the f16 merge (no 8-bit activations), +0.04% to +1.4% for
   the others, and llama.cpp against itself +0.8% between the f32 and the f16 adapter file, which
   loom scores 0.001% apart (the full 45-window text agrees to 0.16%, README). So perplexities
   must agree within 2.5%; the adapter must move loom's perplexity by more than 3x that (it moves
   it ~29%), so that llama.cpp ignoring or mis-scaling it cannot pass. A control makes the q/k row
   order concrete: the same adapter with the q/k lora_b rows left in Hugging Face order (rewritten
   here with numpy) must miss loom's perplexity by more than the tolerance (it misses by ~47%).

D. A PiSSA adapter (q/v, rank 8, f32 residual base, B moved from B0): loom writes it at rank 16
   as [B, -B0] [A; A0]; llama.cpp applies it to the original Q4_1 file and must score what the
   trained model (residual + adapter) scores in loom, within the 2.5% above.

E. An LM head adapter on SmolLM2, whose output is tied to the token embedding (lm_head alone,
   rank 8, seeded random B): the merged exports (f16, q8_0) get an output.weight of their own
   (W_embd + s B A) next to the unchanged token_embd.weight. llama.cpp must use it: its
   perplexity must match loom's adapter model within the 2.5% above, while the adapter moves the
   perplexity by more than 3x that (llama.cpp falling back to the tied embedding would miss).
   Then that merged f16 file, untied now, is the base of a second LM head adapter, exported as a
   llama.cpp adapter GGUF (output.weight.lora_a/b): llama.cpp --lora must score what loom's adapter
   model scores, within the same tolerance, while the adapter moves it by more than 3x that.

Exit 0: all agree; 1: a difference or an error; 77: skipped (gguf / numpy not importable, or for
B/C/D llama_cpp not importable or the model missing -- A still runs first and fails loudly).
Environment: LOOM_BUILD_DIR (default <source>/build), LOOM_SOURCE_DIR.
"""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from interop_common import skip


try:
    import numpy as np
    import gguf
    import gguf.quants as gq
    from gguf import GGMLQuantizationType as QT
    from gguf import GGUFValueType as VT
except ImportError as exc:
    skip(f"cannot import numpy / gguf ({exc}); run scripts/setup_python.sh")

SOURCE = Path(os.environ.get("LOOM_SOURCE_DIR", Path(__file__).resolve().parents[2]))
BUILD = Path(os.environ.get("LOOM_BUILD_DIR", SOURCE / "build"))
TOOL = BUILD / "tests" / "loom_test_export_tool"
MODEL = SOURCE / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PPL_TEXT = "/usr/share/common-licenses/GPL-3"
CTX = 512
WINDOWS = 4
N_GREEDY = 16
PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is a compiler?<|im_end|>\n<|im_start|>assistant\n",
    "Photosynthesis is the process by which",
]
PPL_TOLERANCE = 0.025   # relative, loom vs llama.cpp (see above)
DECIDED_GAP = 0.5       # llama.cpp's top-2 logit gap above which the engines must agree
MIN_GREEDY_AGREEMENT = 0.85
QK_SUBSPACE_SCALE = 0.25  # q/k updates: the weights' top-8 directions scaled by 1.25
THREADS = 2

failures = []
WORK = Path(tempfile.mkdtemp(prefix="loom_export_gguf_"))


def check(ok, what, detail=""):
    print(f"  {'ok  ' if ok else 'FAIL'}  {what}{': ' + detail if detail and not ok else ''}")
    if not ok:
        failures.append(what)


def tool(*args):
    res = subprocess.run([str(TOOL), *map(str, args)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{TOOL.name} {args[0]} failed ({res.returncode}): {res.stderr.strip()}")
    return res


# ---- A. every type through the gguf package ------------------------------------------------

TENSOR_TYPES = {"f32": QT.F32, "f16": QT.F16, "bf16": QT.BF16, "q8_0": QT.Q8_0, "q4_0": QT.Q4_0,
                "q4_1": QT.Q4_1, "q4_k": QT.Q4_K, "q6_k": QT.Q6_K}
GGUF_QUANTIZABLE = {"bf16", "q8_0", "q4_0", "q4_1"}  # gguf-py quantizes these exactly as ggml

METADATA = [
    ("general.architecture", "string", "llama"),
    ("u8", "uint8", 250), ("i8", "int8", -7), ("u16", "uint16", 65000), ("i16", "int16", -32000),
    ("u32", "uint32", 4000000000), ("i32", "int32", -2000000000), ("f32", "float32", 0.15625),
    ("bool_true", "bool", True), ("bool_false", "bool", False),
    ("string", "string", "héllo \"gguf\"\n\t✓"), ("empty_string", "string", ""),
    ("u64", "uint64", 18000000000000000000), ("i64", "int64", -9000000000000000000),
    ("f64", "float64", 2.718281828459045),
]
ARRAYS = [
    ("tokens", "string", ["<|im_start|>", "Ġthe", "", "é"]),
    ("token_type", "int32", [3, 1, 1, -1]),
    ("scores", "float32", [0.5, -1.25, 3.0]),
    ("flags", "bool", [True, False]),
    ("empty", "uint32", []),
]
VT_OF = {"uint8": VT.UINT8, "int8": VT.INT8, "uint16": VT.UINT16, "int16": VT.INT16,
         "uint32": VT.UINT32, "int32": VT.INT32, "float32": VT.FLOAT32, "bool": VT.BOOL,
         "string": VT.STRING, "array": VT.ARRAY, "uint64": VT.UINT64, "int64": VT.INT64,
         "float64": VT.FLOAT64}


def spec_for(alignment):
    meta = [{"key": k, "type": t, "value": v} for k, t, v in METADATA]
    meta += [{"key": k, "type": "array", "elem_type": t, "value": v} for k, t, v in ARRAYS]
    meta.append({"key": "nested", "type": "array", "elem_type": "array",
                 "value": [{"elem_type": "uint8", "value": [1, 2]},
                           {"elem_type": "string", "value": ["x", "yz"]}]})
    if alignment is not None:
        meta.append({"key": "general.alignment", "type": "uint32", "value": alignment})
    rng = np.random.default_rng(1234)
    tensors, inputs = [], {}
    for name in TENSOR_TYPES:
        x = (rng.standard_normal((3, 512)) * rng.uniform(0.01, 4.0, (3, 1))).astype(np.float32)
        x[0, :32] = 0.0  # an all-zero block
        path = WORK / f"in_{name}.f32"
        x.tofile(path)
        inputs[f"w.{name}"] = x
        tensors.append({"name": f"w.{name}", "shape": [3, 512], "type": name, "input": str(path)})
    v = rng.standard_normal(7).astype(np.float32)  # odd size: padding after it
    v.tofile(WORK / "in_vec.f32")
    inputs["vec"] = v
    tensors.append({"name": "vec", "shape": [7], "type": "f32", "input": str(WORK / "in_vec.f32")})
    return {"metadata": meta, "tensors": tensors}, inputs


def same_value(got, want):
    return float(got) == want if isinstance(want, float) else got == want


def check_metadata(reader, label):
    fields = reader.fields
    for key, typ, want in METADATA:
        f = fields.get(key)
        ok = f is not None and f.types == [VT_OF[typ]] and same_value(f.contents(), want)
        check(ok, f"{label}: key {key} ({typ})", f"read {None if f is None else (f.types, f.contents())}")
    for key, typ, want in ARRAYS:
        f = fields.get(key)
        ok = f is not None and f.types[0] == VT.ARRAY and (not want or f.types[-1] == VT_OF[typ])
        if ok and typ == "float32":
            ok = np.array_equal(np.float32(f.contents()), np.float32(want))
        elif ok:
            ok = f.contents() == want
        check(ok, f"{label}: array {key} of {typ}", f"read {None if f is None else f.contents()}")
    # Nested arrays: gguf-py keeps their raw parts (element type, count, then each inner array).
    f = fields.get("nested")
    parts = [p.tolist() for p in f.parts[3:]] if f is not None else None
    want = [[int(VT.ARRAY)], [2], [int(VT.UINT8)], [2], [1], [2], [int(VT.STRING)], [2],
            [1], list(b"x"), [2], list(b"yz")]
    check(parts == want, f"{label}: nested array", f"parts {parts}")


def check_tensors(reader, inputs, dump_dir, label):
    for i, t in enumerate(reader.tensors):
        ours = np.fromfile(dump_dir / f"{i}.f32", dtype=np.float32)
        name = t.name
        qtype = TENSOR_TYPES[name[2:]] if name.startswith("w.") else QT.F32
        check(t.tensor_type == qtype, f"{label}: {name} type", f"{t.tensor_type.name}")
        x = inputs[name]
        check(list(t.shape) == list(reversed(x.shape)), f"{label}: {name} ne", f"{list(t.shape)}")
        theirs = gq.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        check(np.array_equal(theirs.view(np.uint32), ours.view(np.uint32)),
              f"{label}: {name}: gguf dequantization == loom's, bit for bit",
              f"max diff {np.max(np.abs(theirs - ours)) if theirs.size == ours.size else 'sizes differ'}")
        key = name[2:] if name.startswith("w.") else "f32"
        raw = np.asarray(t.data).reshape(-1).view(np.uint8)
        if key == "f32":
            check(np.array_equal(raw, x.reshape(-1).view(np.uint8)), f"{label}: {name} bytes == input")
        elif key == "f16":
            check(np.array_equal(raw, x.astype(np.float16).reshape(-1).view(np.uint8)),
                  f"{label}: {name} bytes == numpy float16")
        elif key in GGUF_QUANTIZABLE:
            want = gq.quantize(x, qtype).reshape(-1).view(np.uint8)
            check(np.array_equal(raw, want), f"{label}: {name} bytes == gguf.quants.quantize")
        else:  # K-quants: within the format's error of the input
            err = np.max(np.abs(ours - x.reshape(-1)))
            check(err <= 0.25 * np.max(np.abs(x)), f"{label}: {name} close to its input", f"max err {err}")


def part_a():
    print("A. every GGUF type loom writes, read by the gguf package")
    for alignment in (None, 64):
        label = f"alignment {alignment or 'default'}"
        spec, inputs = spec_for(alignment)
        spec_path, out, dump = WORK / "spec.json", WORK / f"types_{alignment}.gguf", WORK / f"dump_{alignment}"
        spec_path.write_text(json.dumps(spec))
        tool("write-spec", spec_path, out, dump)
        reader = gguf.GGUFReader(out)
        want_align = alignment or 32
        check(reader.alignment == want_align, f"{label}: gguf sees alignment {want_align}", f"{reader.alignment}")
        check(reader.data_offset % want_align == 0, f"{label}: data section aligned")
        check(all(int(t.data_offset) % want_align == 0 for t in reader.tensors),
              f"{label}: every tensor aligned")
        check(int(reader.fields["GGUF.version"].contents()) == 3, f"{label}: version 3")
        check_metadata(reader, label)
        check_tensors(reader, inputs, dump, label)


# ---- B. an adapter in llama.cpp's converter layout, read by loom ------------------------------

def part_b():
    print("B. a converter-layout adapter (gguf.GGUFWriter) read by loom")
    rng = np.random.default_rng(7)
    path = WORK / "converter_adapter.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 32.0)
    written = {}
    # q (576 x 576) and down (576 x 1536) of layer 3, rank 8 / 16, f16 as the converter's default
    for base, out_f, in_f, r in (("blk.3.attn_q.weight", 576, 576, 8), ("blk.3.ffn_down.weight", 576, 1536, 16)):
        a = (rng.standard_normal((r, in_f)) * 0.05).astype(np.float16)
        b = (rng.standard_normal((out_f, r)) * 0.05).astype(np.float16)
        w.add_tensor(base + ".lora_a", a)
        w.add_tensor(base + ".lora_b", b)
        written[base] = (a.astype(np.float32), b.astype(np.float32))
    w.add_tensor("blk.3.attn_norm.weight", np.ones(576, dtype=np.float32))  # mergekit adds these
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = WORK / "read_back"
    tool("read-adapter", MODEL, path, out)
    meta = json.loads((out / "adapter.json").read_text())
    # q and down of layer 3: the full product of {q_proj, down_proj} and {3}, so loom reads the
    # targets back as PEFT would write them, names over layers_to_transform.
    check(meta["targets"] == ["q_proj", "down_proj"] and meta["layers"] == [3],
          "loom targets the two projections of layer 3", f"{meta['targets']} in layers {meta['layers']}")
    check(meta["file_alpha"] == 32.0 and meta["alpha"] == 32.0, "alpha 32 read", f"{meta}")
    check(meta["ignored"] == ["blk.3.attn_norm.weight"], "the norm is skipped, as llama.cpp skips it")
    names = meta["parameters"]
    for base, hf in (("blk.3.attn_q.weight", "model.layers.3.self_attn.q_proj"),
                     ("blk.3.ffn_down.weight", "model.layers.3.mlp.down_proj")):
        for k, suffix in ((0, "lora_A.weight"), (1, "lora_B.weight")):
            i = names.index(f"base_model.model.{hf}.{suffix}")
            got = np.fromfile(out / f"{i}.f32", dtype=np.float32).reshape(written[base][k].shape)
            check(np.array_equal(got, written[base][k]), f"{base} {suffix} values as written")


# ---- C. llama.cpp --------------------------------------------------------------------------

def open_llama(llama_cpp, model, lora=None, logits_all=True):
    kw = dict(model_path=str(model), n_ctx=CTX, n_batch=CTX, n_ubatch=CTX, n_threads=THREADS,
              n_threads_batch=THREADS, logits_all=logits_all, verbose=False)
    if lora:
        kw["lora_path"] = str(lora)
    return llama_cpp.Llama(**kw)


def log_softmax_rows(x):
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def llamacpp_perplexity(llm, tokens):
    """llama.cpp's perplexity tool scoring (as scripts/make_llamacpp_golden.py runs it)."""
    first = CTX // 2
    n_vocab = llm.n_vocab()
    nll = []
    for w in range(len(tokens) // CTX):
        window = tokens[w * CTX:(w + 1) * CTX]
        llm._ctx.kv_cache_clear()
        llm._batch.set_batch(window, n_past=0, logits_all=False)
        for i in range(CTX):
            llm._batch.batch.logits[i] = i >= first
        llm._ctx.decode(llm._batch)
        out = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=((CTX - first) * n_vocab,))
        lp = log_softmax_rows(out.reshape(CTX - first, n_vocab)[:-1].astype(np.float64))
        targets = np.array(window[first + 1:CTX])
        nll.append(float(-lp[np.arange(len(targets)), targets].sum()))
    return math.exp(sum(nll) / (len(nll) * (CTX - 1 - first)))


def llamacpp_follow(llm, prompt, loom_tokens):
    """llama.cpp's logits along loom's greedy path: (steps agreeing, decided disagreements, gaps)."""
    llm.reset()
    ids = list(prompt) + list(loom_tokens)
    llm.eval(ids)
    agree, bad = 0, []
    for i, tok in enumerate(loom_tokens):
        logits = np.array(llm.scores[len(prompt) - 1 + i], dtype=np.float64)
        top = int(np.argmax(logits))
        if top == tok:
            agree += 1
        else:
            gap = float(logits[top] - logits[tok])
            if gap >= DECIDED_GAP:
                bad.append((i, top, tok, round(gap, 3)))
    return agree, bad


def control_perplexity(llama_cpp, source, path, edit, tokens):
    """llama.cpp's perplexity of the base with a copy of adapter file `source` in which every
    tensor went through edit(name, values) (numpy, PyTorch order)."""
    r = gguf.GGUFReader(source)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(r.fields["adapter.lora.alpha"].contents()))
    for t in r.tensors:
        data = np.array(t.data, dtype=np.float32).reshape(list(reversed([int(x) for x in t.shape])))
        w.add_tensor(t.name, np.ascontiguousarray(edit(t.name, data)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    llm = open_llama(llama_cpp, MODEL, path, logits_all=False)
    ppl = llamacpp_perplexity(llm, tokens)
    del llm
    return ppl


def smollm2_tokens(llama_cpp, prompts=()):
    """The perplexity text as llama.cpp's SmolLM2 vocabulary tokenizes it (CTX * WINDOWS tokens),
    and `prompts` tokenized with special tokens."""
    vocab = open_llama(llama_cpp, MODEL, logits_all=False)
    tokens = vocab.tokenize(Path(PPL_TEXT).read_bytes(), add_bos=False, special=False)[:CTX * WINDOWS]
    prompt_ids = [vocab.tokenize(p.encode(), add_bos=False, special=True) for p in prompts]
    del vocab
    if len(tokens) < CTX * WINDOWS:
        raise RuntimeError(f"{PPL_TEXT} gives only {len(tokens)} tokens")
    return tokens, prompt_ids


def compare_perplexity(llama_cpp, label, model, lora, tokens, mine):
    """llama.cpp's perplexity of `model` (with adapter file `lora`) against loom's `mine`, checked
    within PPL_TOLERANCE; returns (llama.cpp's, relative difference)."""
    t0 = time.time()
    llm = open_llama(llama_cpp, model, lora, logits_all=False)
    ppl = llamacpp_perplexity(llm, tokens)
    del llm
    rel = ppl / mine - 1
    check(abs(rel) < PPL_TOLERANCE, f"{label}: perplexity loom {mine:.4f} vs llama.cpp {ppl:.4f} "
          f"({rel:+.3%}, {time.time() - t0:.0f} s)", f"{rel:+.3%}")
    return ppl, rel


def run_smollm2(request, name, model=MODEL):
    """loom_test_export_tool smollm2 on the request: its folder and its loom.json."""
    req = WORK / f"request_{name}.json"
    req.write_text(json.dumps(request))
    out = WORK / name
    t0 = time.time()
    tool("smollm2", model, out, req)
    loom = json.loads((out / "loom.json").read_text())
    print(f"  loom: exports and {len(request['evaluate'])} evaluations in {time.time() - t0:.1f} s")
    return out, loom


def part_c(llama_cpp):
    print("C. llama.cpp runs loom's exports of SmolLM2 + a LoRA adapter")
    tokens, prompts = smollm2_tokens(llama_cpp, PROMPTS)
    request = {"rank": 8, "alpha": 16.0, "targets": ["all-linear"], "seed": 2024, "b_scale": 0.02,
               "qk_subspace_scale": QK_SUBSPACE_SCALE,
               "adapter_types": ["f32", "f16", "q8_0"], "merged_types": ["f16", "q8_0", "q4_k"],
               "evaluate": ["base", "file_adapter_f32", "merged_f16", "merged_q8_0", "merged_q4_k"],
               "tokens": tokens, "ctx": CTX, "prompts": prompts, "n_greedy": N_GREEDY}
    out, loom = run_smollm2(request, "smollm2")
    for name, e in loom["exports"].items():
        print(f"    {name}: {e['bytes'] / 1e6:.1f} MB in {e['seconds']:.1f} s, types {e['types']}")
        for n in e["notes"]:
            print(f"      {n}")

    ppl_base = loom["base"]["perplexity"]
    ppl_adapter = loom["file_adapter_f32"]["perplexity"]
    moved = abs(ppl_adapter / ppl_base - 1)
    print(f"  loom perplexity: base {ppl_base:.4f}, with the adapter {ppl_adapter:.4f} ({moved:.1%} apart)")
    check(moved > 3 * PPL_TOLERANCE, "the adapter moves the perplexity by > 3x the tolerance",
          f"{moved:.2%}")
    # loom itself: the merged f16 file against the adapter file on the base
    rel = abs(loom["merged_f16"]["perplexity"] / ppl_adapter - 1)
    check(rel < 2e-3, "loom: merged f16 perplexity within 0.2% of the adapter's", f"{rel:.2e}")

    table = []
    variants = [("adapter f32 on base", MODEL, out / "adapter_f32.gguf", "file_adapter_f32"),
                ("adapter f16 on base", MODEL, out / "adapter_f16.gguf", "file_adapter_f32"),
                ("adapter q8_0 on base", MODEL, out / "adapter_q8_0.gguf", "file_adapter_f32"),
                ("merged f16", out / "merged_f16.gguf", None, "merged_f16"),
                ("merged q8_0", out / "merged_q8_0.gguf", None, "merged_q8_0"),
                ("merged q4_k", out / "merged_q4_k.gguf", None, "merged_q4_k")]
    for label, model, lora, key in variants:
        mine = loom[key]["perplexity"]
        ppl, rel = compare_perplexity(llama_cpp, label, model, lora, tokens, mine)
        table.append((label, mine, ppl, rel))
        if key.startswith("merged") or key == "file_adapter_f32":
            llm = open_llama(llama_cpp, model, lora, logits_all=True)
            steps = agree = 0
            for prompt, greedy in zip(prompts, loom[key]["greedy"]):
                a, bad = llamacpp_follow(llm, prompt, greedy)
                steps += len(greedy)
                agree += a
                check(not bad, f"{label}: llama.cpp picks loom's greedy token at every decided step",
                      f"(step, llama.cpp token, loom token, gap) {bad}")
            del llm
            print(f"    {label}: greedy, llama.cpp on loom's path: {agree} of {steps} steps agree")
            check(agree >= MIN_GREEDY_AGREEMENT * steps, f"{label}: greedy agreement >= {MIN_GREEDY_AGREEMENT:.0%}",
                  f"{agree}/{steps}")

    # Control: q/k lora_b rows left in Hugging Face order must not pass.
    heads = {"attn_q": 9, "attn_k": 3}

    def unpermute(name, data):  # q/k lora_b: llama.cpp order -> Hugging Face order
        stem = name.split(".")[2]
        if not name.endswith(".lora_b") or stem not in heads:
            return data
        hd = data.shape[0] // heads[stem]
        return data.reshape(heads[stem], hd // 2, 2, -1).swapaxes(1, 2).reshape(data.shape)

    ppl_ctl = control_perplexity(llama_cpp, out / "adapter_f32.gguf",
                                 WORK / "control_unpermuted.gguf", unpermute, tokens)
    rel_ctl = ppl_ctl / loom["file_adapter_f32"]["perplexity"] - 1
    print(f"  control, q/k lora_b in Hugging Face order: llama.cpp {ppl_ctl:.4f} ({rel_ctl:+.2%} from loom)")
    check(abs(rel_ctl) > PPL_TOLERANCE, "the unpermuted control misses loom's perplexity", f"{rel_ctl:+.3%}")

    spread = table[0][2] / table[1][2] - 1
    print(f"  llama.cpp against itself, f32 vs f16 adapter file: {spread:+.3%}")
    print("\n  perplexity, 4 windows of 512 (second half scored), loom vs llama.cpp:")
    print(f"    {'base (no adapter), loom':28s} {ppl_base:9.4f}")
    for label, mine, ppl, rel in table:
        print(f"    {label:28s} {mine:9.4f} {ppl:9.4f}  {rel:+.3%}")


def part_d(llama_cpp):
    """A PiSSA adapter exported for llama.cpp, applied by llama.cpp to the ORIGINAL base."""
    print("D. llama.cpp applies loom's export of a PiSSA adapter to the original base")
    tokens, _ = smollm2_tokens(llama_cpp)
    # PiSSA on q/v (rank 8): the base is replaced by its f32 residual W - s B0 A0, B moves from B0.
    request = {"rank": 8, "alpha": 16.0, "targets": ["q_proj", "v_proj"], "seed": 7,
               "b_scale": 0.05, "init": "pissa", "base_dtype": "f32",
               "adapter_types": ["f32"], "merged_types": [],
               "evaluate": ["adapter", "file_adapter_f32"],
               "tokens": tokens, "ctx": CTX, "prompts": [], "n_greedy": 0}
    out, loom = run_smollm2(request, "pissa")
    for n in loom["exports"]["adapter_f32"]["notes"]:
        print(f"      {n}")
    ranks = {int(t.shape[0]) for t in gguf.GGUFReader(out / "adapter_f32.gguf").tensors
             if t.name.endswith(".lora_b")}
    check(ranks == {16}, "the PiSSA adapter file is rank 2r = 16 ([B, -B0] [A; A0])", f"{ranks}")
    trained = loom["adapter"]["perplexity"]
    back = loom["file_adapter_f32"]["perplexity"]
    rel = abs(back / trained - 1)
    check(rel < 2e-3, f"loom: the original base + the file {back:.4f} = the trained model "
          f"{trained:.4f}", f"{rel:.2e}")
    compare_perplexity(llama_cpp, "original base + PiSSA file vs the trained model", MODEL,
                       out / "adapter_f32.gguf", tokens, trained)

    # Control: the trained A, B alone (what the export wrote before), i.e. the first r rows of
    # lora_a and first r columns of lora_b, scaled for llama.cpp's alpha / r: llama.cpp then adds
    # s B A (about the base's top-8 part again) to the full base and must miss.
    def rank_r(name, data):  # lora_b: scale alpha / 2r in the file, alpha / r for rank r
        if name.endswith(".lora_a"):
            return data[:data.shape[0] // 2]
        return data[:, :data.shape[1] // 2] / 2

    ppl_ctl = control_perplexity(llama_cpp, out / "adapter_f32.gguf",
                                 WORK / "control_pissa_rank_r.gguf", rank_r, tokens)
    rel_ctl = ppl_ctl / trained - 1
    print(f"  control, the trained A, B alone at rank 8: llama.cpp {ppl_ctl:.4f} ({rel_ctl:+.2%} from loom)")
    check(abs(rel_ctl) > PPL_TOLERANCE, "the rank-r control misses the trained model", f"{rel_ctl:+.3%}")


def part_e(llama_cpp):
    """The LM head of a tied model, adapted, merged into an output.weight of its own."""
    print("E. llama.cpp runs loom's merged exports of an LM head adapter on tied SmolLM2")
    tokens, _ = smollm2_tokens(llama_cpp)
    request = {"rank": 8, "alpha": 16.0, "targets": ["lm_head"], "seed": 11, "b_scale": 0.1,
               "adapter_types": [], "merged_types": ["f16", "q8_0"],
               "evaluate": ["base", "adapter", "merged_f16", "merged_q8_0"],
               "tokens": tokens, "ctx": CTX, "prompts": [], "n_greedy": 0}
    out, loom = run_smollm2(request, "head")
    names = {t.name for t in gguf.GGUFReader(out / "merged_f16.gguf").tensors}
    source_names = {t.name for t in gguf.GGUFReader(MODEL).tensors}
    check("output.weight" not in source_names and names == source_names | {"output.weight"},
          "the merged file adds output.weight to the tied source's tensors")
    base, adapted = loom["base"]["perplexity"], loom["adapter"]["perplexity"]
    moved = abs(adapted / base - 1)
    print(f"  loom perplexity: base {base:.4f}, with the LM head adapter {adapted:.4f} ({moved:.1%} apart)")
    check(moved > 3 * PPL_TOLERANCE, "the LM head adapter moves the perplexity by > 3x the tolerance",
          f"{moved:.2%}")
    for key in ("merged_f16", "merged_q8_0"):
        mine = loom[key]["perplexity"]
        check(abs(mine / adapted - 1) < 1e-2, f"loom: {key} {mine:.4f} within 1% of the adapter model",
              f"{mine / adapted - 1:+.3%}")
        compare_perplexity(llama_cpp, key, out / f"{key}.gguf", None, tokens, mine)

    # An untied base (the merged f16 file): the LM head adapter as a llama.cpp adapter file.
    untied = out / "merged_f16.gguf"
    request = dict(request, seed=12, adapter_types=["f32"], merged_types=[],
                   evaluate=["base", "file_adapter_f32"])
    out2, loom2 = run_smollm2(request, "head_untied", model=untied)
    names = {t.name for t in gguf.GGUFReader(out2 / "adapter_f32.gguf").tensors}
    check(names == {"output.weight.lora_a", "output.weight.lora_b"},
          "the adapter file holds output.weight.lora_a / lora_b", f"{sorted(names)}")
    base2, mine = loom2["base"]["perplexity"], loom2["file_adapter_f32"]["perplexity"]
    moved = abs(mine / base2 - 1)
    check(moved > 3 * PPL_TOLERANCE, f"the adapter moves loom's perplexity {base2:.4f} -> {mine:.4f}",
          f"{moved:.2%}")
    compare_perplexity(llama_cpp, "untied base + LM head adapter file (llama.cpp --lora)", untied,
                       out2 / "adapter_f32.gguf", tokens, mine)


def main():
    if not TOOL.exists():
        print(f"FAIL: {TOOL} is missing; build the tools first", file=sys.stderr)
        shutil.rmtree(WORK, ignore_errors=True)
        return 1
    t0 = time.time()
    part_a()
    skip_reason = None
    if not MODEL.exists():
        skip_reason = f"{MODEL} is missing (scripts/fetch_models.sh): parts B and C not run"
    else:
        part_b()
        try:
            import llama_cpp
        except ImportError as e:
            skip_reason = (f"llama_cpp (llama-cpp-python) is not importable ({e}); run "
                           "scripts/setup_python.sh: part C (llama.cpp runs loom's exports) not run")
        else:
            part_c(llama_cpp)
            part_d(llama_cpp)
            part_e(llama_cpp)
    print(f"\n{len(failures)} failure(s), {time.time() - t0:.0f} s")
    if failures:
        print(f"FAIL: {'; '.join(failures)} (files kept in {WORK})", file=sys.stderr)
        return 1
    shutil.rmtree(WORK, ignore_errors=True)
    if skip_reason:
        skip(skip_reason)
    print("GGUF export interop: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
