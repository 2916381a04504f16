#!/usr/bin/env python3
"""loom's GGUF reader against the gguf Python package's GGUFReader.

Reads each file with both and compares every metadata key (order, type, element type, value)
and every tensor (name, dims, GGML type, absolute byte offset, size, crc32 of the bytes loom's
Tensor points at). Files: one written here by gguf's GGUFWriter with every value type and tensor
type loom reads (alignment 64), then the real default model (scripts/fetch_models.sh).

loom's side comes from build/tests/loom_test_gguf_dump (tests/tools/gguf_dump.cpp) as JSON.
Exit 0: all equal; 1: a difference or an error; 77: skipped (gguf package or model missing).
"""
import json
import os
import subprocess
import sys
import tempfile
import zlib

from interop_common import SOURCE_DIR, BUILD_DIR, skip

MODEL = "models/SmolLM2-135M-Instruct.Q4_1.gguf"


try:
    import numpy as np
    import gguf
except ImportError as e:
    skip(f"the gguf Python package is not importable ({e}); run scripts/setup_python.sh")

DUMP_TOOL = os.path.join(BUILD_DIR, "tests", "loom_test_gguf_dump")


def loom_view(path):
    if not os.access(DUMP_TOOL, os.X_OK):
        sys.exit(f"FAIL: {DUMP_TOOL} is not built (it is part of the default build target)")
    run = subprocess.run([DUMP_TOOL, path], capture_output=True)
    if run.returncode != 0:
        sys.exit(f"FAIL: loom_test_gguf_dump {path} exited {run.returncode}: {run.stderr.decode(errors='replace')}")
    return json.loads(run.stdout)


def reference_view(path):
    reader = gguf.GGUFReader(path)
    meta = []
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):  # the reader's pseudo-fields for the header
            continue
        entry = {"key": key, "type": field.types[0].name.lower(), "value": field.contents()}
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            entry["elem_type"] = field.types[1].name.lower()
        meta.append(entry)
    tensors = []
    for t in reader.tensors:
        start, n = int(t.data_offset), int(t.n_bytes)
        tensors.append({
            "name": t.name,
            "ne": [int(d) for d in t.shape],
            "shape": [int(d) for d in reversed(t.shape)],
            "ggml_type": int(t.tensor_type.value),
            "dtype": t.tensor_type.name.lower(),
            "abs_offset": start,
            "nbytes": n,
            "crc32": zlib.crc32(reader.data[start:start + n].tobytes()),
        })
    return {
        "version": int(reader.fields["GGUF.version"].contents()),
        "alignment": int(reader.alignment),
        "data_offset": int(reader.data_offset),
        "metadata": meta,
        "tensors": tensors,
    }


def compare(label, ours, ref):
    problems = []
    for k in ("version", "alignment", "data_offset"):
        if ours[k] != ref[k]:
            problems.append(f"{k}: loom {ours[k]}, gguf {ref[k]}")
    om, rm = ours["metadata"], ref["metadata"]
    if [m["key"] for m in om] != [m["key"] for m in rm]:
        problems.append(f"metadata keys differ: loom {[m['key'] for m in om]}, gguf {[m['key'] for m in rm]}")
    for a, b in zip(om, rm):
        for k in ("key", "type", "elem_type"):
            if a.get(k) != b.get(k):
                problems.append(f"key {b['key']!r} {k}: loom {a.get(k)!r}, gguf {b.get(k)!r}")
        if a["value"] != b["value"]:
            problems.append(f"key {b['key']!r} value: loom {str(a['value'])[:80]}, gguf {str(b['value'])[:80]}")
    ot, rt = ours["tensors"], ref["tensors"]
    if len(ot) != len(rt):
        problems.append(f"tensor count: loom {len(ot)}, gguf {len(rt)}")
    for a, b in zip(ot, rt):
        for k in ("name", "ne", "shape", "ggml_type", "dtype", "abs_offset", "nbytes", "crc32"):
            if a[k] != b[k]:
                problems.append(f"tensor {b['name']!r} {k}: loom {a[k]}, gguf {b[k]}")
    for p in problems[:30]:
        print(f"  MISMATCH {label}: {p}")
    if len(problems) > 30:
        print(f"  ... {len(problems) - 30} more")
    print(f"{label}: {len(om)} keys, {len(ot)} tensors compared, {len(problems)} differences")
    return not problems


def write_synthetic(path):
    V = gguf.GGUFValueType
    w = gguf.GGUFWriter(path, "llama")
    w.add_custom_alignment(64)
    w.add_uint8("t.u8", 255)
    w.add_int8("t.i8", -128)
    w.add_uint16("t.u16", 65535)
    w.add_int16("t.i16", -32768)
    w.add_uint32("t.u32", 2**32 - 1)
    w.add_int32("t.i32", -2**31)
    w.add_float32("t.f32", 1e-5)
    w.add_uint64("t.u64", 2**64 - 1)
    w.add_int64("t.i64", -2**63)
    w.add_float64("t.f64", -1e300)
    w.add_bool("t.bool", True)
    w.add_string("t.string", "h\u00e9llo \u2014 \"w\"\n")
    w.add_string("t.empty_string", "")
    for name, vtype, items in [
        ("u8", V.UINT8, [0, 7]), ("i8", V.INT8, [-1]), ("u16", V.UINT16, [1, 2]),
        ("i16", V.INT16, [-3]), ("u32", V.UINT32, [10, 20, 30]), ("i32", V.INT32, [-5, 5]),
        ("f32", V.FLOAT32, [0.5, -2.25, 0.1]), ("bool", V.BOOL, [True, False]),
        ("u64", V.UINT64, [2**40]), ("i64", V.INT64, [-2**40]), ("f64", V.FLOAT64, [3.141592653589793]),
    ]:
        w.add_key_value(f"t.arr_{name}", items, V.ARRAY, sub_type=vtype)
    w.add_array("t.arr_string", ["<s>", "", "\u0120the"])
    rng = np.random.default_rng(0)
    w.add_tensor("f32.2d", np.arange(12, dtype=np.float32).reshape(3, 4))
    w.add_tensor("f16.1d", np.arange(5, dtype=np.float16))
    Q = gguf.GGMLQuantizationType
    # Quantized tensors as raw bytes shaped [rows, row bytes]; the writer derives the dims.
    for name, qtype, rows, row_bytes in [
        ("bf16.2d", Q.BF16, 2, 6), ("q8_0.2d", Q.Q8_0, 2, 68), ("q4_0.2d", Q.Q4_0, 3, 18),
        ("q4_1.2d", Q.Q4_1, 2, 40), ("q4_k.2d", Q.Q4_K, 1, 144), ("q6_k.2d", Q.Q6_K, 2, 210),
    ]:
        w.add_tensor(name, rng.integers(0, 256, size=(rows, row_bytes), dtype=np.uint8), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = os.path.join(tmp, "synthetic.gguf")
        write_synthetic(synthetic)
        ok &= compare("synthetic (GGUFWriter, every type)", loom_view(synthetic), reference_view(synthetic))

    model = os.path.join(SOURCE_DIR, MODEL)
    if not os.path.exists(model):
        if not ok:
            sys.exit("FAIL: the synthetic file differs (see above)")
        skip(f"{model} is absent; run scripts/fetch_models.sh (the synthetic file matched)")
    ok &= compare(MODEL, loom_view(model), reference_view(model))
    if not ok:
        sys.exit("FAIL: loom's GGUF reader and gguf's GGUFReader disagree (see above)")
    print("OK: loom's GGUF reader agrees with gguf's GGUFReader")


if __name__ == "__main__":
    main()
