#!/usr/bin/env python3
"""loom's storage formats against the `gguf` Python package (gguf-py), driven through
build/tests/loom_test_quant_tool.

Checks (all exact -- bytes equal, or f32 values equal bit for bit):
  1. Q8_0, Q4_0, Q4_1: our quantized bytes == gguf.quants.quantize bytes, on several
     distributions (gaussian, uniform, all-zero blocks, large outliers, negative-dominant blocks,
     +-max ties, constant blocks, exact rounding ties, f16-subnormal scales, large values).
  2. Q8_0, Q4_0, Q4_1, Q4_K, Q6_K: gguf.quants.dequantize of OUR bytes == our dequantize, fast
     path and scalar reference, value for value; our bf16 dequantize == gguf's BF16 rounding of it.
  3. The same on random raw blocks (random bytes, sane f16 scales), so the dequantizers are
     checked independently of our quantizers (this is the only external check of Q4_K / Q6_K
     bytes: gguf-py cannot quantize K-quants).
  4. NF4 (no gguf counterpart): an independent numpy implementation of the rules in
     autograd/quant/nf4.h / nf4.cpp; bytes and values must match ours.
  5. F16 / BF16 conversions against numpy's float16 and gguf's BF16 rounding, special values
     included.
Exactness is expected, not just closeness: gguf-py evaluates the same f32 operations in the same
order (numpy float32 ufuncs round each operation, no FMA), and converts f16 exactly.

Exit status: 0 all passed, 1 any mismatch, 77 when gguf / numpy cannot be imported (ctest: skip).
Environment: LOOM_BUILD_DIR (default <source>/build), LOOM_SOURCE_DIR.
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import numpy as np
    import gguf.quants as gq
    from gguf import GGMLQuantizationType as QT
except ImportError as exc:  # the reference is missing: skip loudly
    msg = f"SKIPPED: cannot import numpy / gguf ({exc}); run scripts/setup_python.sh"
    print("=" * len(msg), msg, "=" * len(msg), sep="\n", file=sys.stderr)
    sys.exit(77)

SOURCE = Path(os.environ.get("LOOM_SOURCE_DIR", Path(__file__).resolve().parents[2]))
BUILD = Path(os.environ.get("LOOM_BUILD_DIR", SOURCE / "build"))
TOOL = BUILD / "tests" / "loom_test_quant_tool"

GGUF_TYPES = {"q8_0": QT.Q8_0, "q4_0": QT.Q4_0, "q4_1": QT.Q4_1, "q4_k": QT.Q4_K, "q6_k": QT.Q6_K}
BLOCK = {"q8_0": (32, 34), "q4_0": (32, 18), "q4_1": (32, 20), "q4_k": (256, 144), "q6_k": (256, 210)}
# Byte offsets of the f16 scale fields in each block, and whether they must be positive.
F16_FIELDS = {"q8_0": [(0, False)], "q4_0": [(0, False)], "q4_1": [(0, False), (2, False)],
              "q4_k": [(0, True), (2, True)], "q6_k": [(208, False)]}

NF4_CODES = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0], dtype=np.float32)

failures = []
passes = 0
WORK = Path(tempfile.mkdtemp(prefix="loom_quant_interop_"))


def check(ok, what, detail=""):
    global passes
    if ok:
        passes += 1
        print(f"  ok    {what}")
    else:
        failures.append(what)
        print(f"  FAIL  {what}: {detail}")


def tool(*args):
    res = subprocess.run([str(TOOL), *map(str, args)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{TOOL.name} {' '.join(map(str, args))} failed ({res.returncode}): {res.stderr.strip()}")


def ours_quantize(dtype, x):
    src, dst = WORK / "in.f32", WORK / "out.bin"
    np.ascontiguousarray(x, dtype="<f4").tofile(src)
    tool("quantize", dtype, src, dst)
    return dst.read_bytes()


def ours_dequantize(dtype, raw, n, ref=False):
    src, dst = WORK / "in.bin", WORK / "out.f32"
    src.write_bytes(raw)
    tool("dequantize", dtype, src, n, dst, *(["--ref"] if ref else []))
    return np.fromfile(dst, dtype="<f4")


def ours_dequantize_bf16(dtype, raw, n):
    src, dst = WORK / "in.bin", WORK / "out.bf16"
    src.write_bytes(raw)
    tool("dequantize-bf16", dtype, src, n, dst)
    return np.fromfile(dst, dtype="<u2")


def first_diff(a, b):
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape:
        return f"sizes differ: {a.size} vs {b.size}"
    bad = np.flatnonzero(a != b)
    return f"{bad.size} of {a.size} differ, first at {bad[0]}: ours {a[bad[0]]!r} ref {b[bad[0]]!r}" if bad.size else ""


# ---------------------------------------------------------------- data sets

def datasets(rng, rows=32, cols=1024):
    shape = (rows, cols)
    g = rng.normal(0, 0.02, shape).astype(np.float32)
    sets = {"gaussian": g, "uniform": rng.uniform(-1, 1, shape).astype(np.float32)}
    z = g.copy().reshape(-1, 32)
    z[::3] = 0.0
    sets["zero blocks"] = z.reshape(shape)
    o = g.copy().reshape(-1, 32)
    o[np.arange(o.shape[0]), rng.integers(0, 32, o.shape[0])] *= rng.choice([-300.0, 300.0], o.shape[0])
    sets["outliers"] = o.reshape(shape)
    neg = -np.abs(g).reshape(-1, 32)
    neg[:, ::5] = np.abs(neg[:, ::5]) * 0.5
    sets["negative dominant"] = neg.reshape(shape)
    t = g.copy().reshape(-1, 32)
    i, j = rng.integers(0, 16, t.shape[0]), rng.integers(16, 32, t.shape[0])
    m = np.float32(0.07)
    t[np.arange(t.shape[0]), i], t[np.arange(t.shape[0]), j] = np.where(np.arange(t.shape[0]) % 2, m, -m), np.where(np.arange(t.shape[0]) % 2, -m, m)
    sets["+-max ties"] = t.reshape(shape)
    c = np.repeat(rng.normal(0, 1, (rows * cols // 32, 1)), 32, axis=1).astype(np.float32)
    sets["constant blocks"] = c.reshape(shape)
    h = (rng.integers(-254, 255, shape) / 2.0).astype(np.float32).reshape(-1, 32)
    h[:, 0] = np.where(np.arange(h.shape[0]) % 2, 127.0, -127.0)  # amax 127: Q8_0 id = 1, x.5 ties
    sets["half-integer grid"] = h.reshape(shape)
    q = rng.integers(-8, 8, shape).astype(np.float32).reshape(-1, 32)
    q[:, 3] = -8.0  # Q4_0 d = 1 exactly, Q4_1 integer levels
    sets["integer grid"] = q.reshape(shape)
    sets["f16-subnormal scales"] = (g * 1e-4).astype(np.float32)
    sets["large values"] = (g * 5e4).astype(np.float32)
    sets["q4_0 fma-sensitive"] = q4_0_rounding_sensitive(rng, rows, cols)
    return sets


def q4_0_rounding_sensitive(rng, rows, cols):
    """Q4_0 blocks whose codes depend on rounding x * id before adding 8.5 (a non-FMA ggml build)
    or not (gguf-py, an FMA build): x * id just past -k - 0.5, where the small sum is finer than
    the product. Random data almost never lands there."""
    blocks = rng.normal(0, 0.2, (rows * cols // 32, 32)).astype(np.float32)
    found = 0
    for b in range(blocks.shape[0]):
        m = np.float32(rng.uniform(1.0, 2.0) * rng.choice([-1.0, 1.0]))
        blocks[b] = np.clip(blocks[b], -abs(m) * 0.99, abs(m) * 0.99)
        blocks[b, 0] = m
        d = np.float32(m / np.float32(-8))
        inv = np.float32(1) / d
        slot = 1
        for k in range(4, 8):
            x0 = np.float32((-k - 0.5) / inv)
            cand = x0 + np.arange(-64, 65, dtype=np.float32) * np.spacing(x0)
            exact = np.trunc((cand.astype(np.float64) * np.float64(inv) + 8.5).astype(np.float32))
            rounded = np.trunc((cand * inv).astype(np.float32) + np.float32(8.5))
            for x in cand[exact != rounded][:2]:
                if slot < 32 and abs(x) < abs(m):
                    blocks[b, slot] = x
                    slot += 1
                    found += 1
    assert found > blocks.shape[0], f"only {found} rounding-sensitive values found"
    return blocks.reshape(rows, cols)


def random_raw_blocks(rng, dtype, nblocks):
    _, size = BLOCK[dtype]
    raw = rng.integers(0, 256, (nblocks, size), dtype=np.uint8)
    for off, positive in F16_FIELDS[dtype]:
        mag = np.exp2(rng.uniform(-14, 4, nblocks)) * 0.05
        val = mag if positive else mag * rng.choice([-1.0, 1.0], nblocks)
        raw[:, off:off + 2] = val.astype(np.float16).view(np.uint8).reshape(nblocks, 2)
    return raw


# ---------------------------------------------------------------- checks

def check_dequant(dtype, raw_2d, label):
    """gguf dequantize vs our fast / reference dequantize, and our bf16 vs gguf's bf16 rounding."""
    n = raw_2d.shape[0] * raw_2d.shape[1] // BLOCK[dtype][1] * BLOCK[dtype][0]
    theirs = gq.dequantize(raw_2d, GGUF_TYPES[dtype]).astype(np.float32).ravel()
    raw = raw_2d.tobytes()
    fast, ref = ours_dequantize(dtype, raw, n), ours_dequantize(dtype, raw, n, ref=True)
    check(np.array_equal(fast.view(np.uint32), theirs.view(np.uint32)), f"{dtype} dequantize (fast) == gguf, {label}",
          first_diff(fast, theirs))
    check(np.array_equal(ref.view(np.uint32), theirs.view(np.uint32)), f"{dtype} dequantize (ref)  == gguf, {label}",
          first_diff(ref, theirs))
    bf16 = ours_dequantize_bf16(dtype, raw, n)
    theirs_bf16 = gq.quantize(theirs, QT.BF16).view(np.uint16).ravel()
    check(np.array_equal(bf16, theirs_bf16), f"{dtype} dequantize bf16 == gguf BF16(gguf f32), {label}",
          first_diff(bf16, theirs_bf16))


def check_gguf_formats(rng):
    print("GGUF block formats")
    for label, x in datasets(rng).items():
        for dtype in ("q8_0", "q4_0", "q4_1"):
            ours = ours_quantize(dtype, x)
            theirs = gq.quantize(x, GGUF_TYPES[dtype]).tobytes()
            a = np.frombuffer(ours, np.uint8).reshape(-1, BLOCK[dtype][1])
            b = np.frombuffer(theirs, np.uint8).reshape(-1, BLOCK[dtype][1]) if len(theirs) == len(ours) else None
            detail = ""
            if b is None:
                detail = f"sizes differ: {len(ours)} vs {len(theirs)}"
            elif ours != theirs:
                bad = np.flatnonzero((a != b).any(axis=1))
                detail = f"{bad.size} of {a.shape[0]} blocks differ, first {bad[0]}: ours {a[bad[0]].tolist()} gguf {b[bad[0]].tolist()}"
            check(ours == theirs, f"{dtype} quantize bytes == gguf, {label}", detail)
        for dtype in GGUF_TYPES:
            raw = np.frombuffer(ours_quantize(dtype, x), np.uint8).reshape(x.shape[0], -1)
            check_dequant(dtype, raw, label)
    print("random raw blocks (independent of our quantizers)")
    for dtype in GGUF_TYPES:
        for seed in range(3):
            raw = random_raw_blocks(np.random.default_rng(100 + seed), dtype, 512)
            check_dequant(dtype, raw.reshape(16, -1), f"random raw blocks seed {seed}")


# ---------------------------------------------------------------- NF4, independent numpy version

def nf4_quantize_np(x):
    blocks = x.astype(np.float32).reshape(-1, 64)
    nb = blocks.shape[0]
    absmax = np.abs(blocks).max(axis=1)
    denom = np.where(absmax > 0, absmax, np.float32(1))
    v = (blocks / denom[:, None]).astype(np.float32)
    v[absmax == 0] = 0
    # Brute-force nearest code in float64; argmin takes the first (lowest) index on ties.
    idx = np.abs(v.astype(np.float64)[..., None] - NF4_CODES.astype(np.float64)).argmin(axis=-1).astype(np.uint8).ravel()
    codes = (idx[0::2] << 4) | idx[1::2]
    mean = np.float32(np.cumsum(absmax.astype(np.float64))[-1] / nb) if nb else np.float32(0)
    centered = (absmax - mean).astype(np.float32)
    ngroups = (nb + 255) // 256
    scales = np.zeros(ngroups, np.float32)
    q = np.zeros(nb, np.int8)
    for g in range(ngroups):
        c = centered[g * 256:(g + 1) * 256]
        s = np.abs(c).max()
        scales[g] = s
        if s > 0:
            q[g * 256:(g + 1) * 256] = np.clip(np.rint((c / s).astype(np.float32) * np.float32(127)), -127, 127).astype(np.int8)
    return codes.tobytes() + q.tobytes() + scales.astype("<f4").tobytes() + np.float32(mean).astype("<f4").tobytes()


def nf4_dequantize_np(raw, n):
    nb = n // 64
    ngroups = (nb + 255) // 256
    buf = np.frombuffer(raw, np.uint8)
    codes = buf[:n // 2]
    q = buf[n // 2:n // 2 + nb].view(np.int8).astype(np.float32)
    scales = np.frombuffer(raw[n // 2 + nb:n // 2 + nb + 4 * ngroups], "<f4")
    mean = np.frombuffer(raw[n // 2 + nb + 4 * ngroups:], "<f4")[0]
    absmax = (q * np.repeat(scales, 256)[:nb]).astype(np.float32) / np.float32(127) + mean
    idx = np.stack([codes >> 4, codes & 0x0F], axis=1).ravel()
    return (NF4_CODES[idx].reshape(nb, 64) * absmax.astype(np.float32)[:, None]).astype(np.float32).ravel()


def check_nf4(rng):
    print("NF4 against an independent numpy implementation")
    n = 64 * 600  # 600 blocks: absmax groups of 256, 256 and 88
    g = rng.normal(0, 0.03, n).astype(np.float32)
    zero = g.copy().reshape(-1, 64)
    zero[::7] = 0
    outl = g.copy().reshape(-1, 64)
    outl[::5, 3] = 2.5
    mids = g.copy()
    mids[:15] = ((NF4_CODES[:-1].astype(np.float64) + NF4_CODES[1:]) / 2).astype(np.float32)  # near-ties
    mids[15] = 1.0
    sets = {"gaussian": g, "zero blocks": zero.ravel(), "outliers": outl.ravel(), "near-midpoints": mids,
            "uniform, one group": rng.uniform(-2, 2, 64 * 100).astype(np.float32)}
    for label, x in sets.items():
        ours = ours_quantize("nf4", x)
        theirs = nf4_quantize_np(x)
        check(ours == theirs, f"nf4 quantize bytes == numpy, {label}",
              first_diff(np.frombuffer(ours, np.uint8), np.frombuffer(theirs, np.uint8)))
        want = nf4_dequantize_np(ours, x.size)
        for ref in (False, True):
            got = ours_dequantize("nf4", ours, x.size, ref=ref)
            check(np.array_equal(got.view(np.uint32), want.view(np.uint32)),
                  f"nf4 dequantize ({'ref' if ref else 'fast'}) == numpy, {label}", first_diff(got, want))
        bf16 = ours_dequantize_bf16("nf4", ours, x.size)
        want_bf16 = gq.quantize(want, QT.BF16).view(np.uint16).ravel()
        check(np.array_equal(bf16, want_bf16), f"nf4 dequantize bf16 == gguf BF16(numpy f32), {label}",
              first_diff(bf16, want_bf16))
    # Random raw NF4 bytes with sane double-quant scales and mean.
    raw = bytearray(rng.integers(0, 256, n // 2 + n // 64, dtype=np.uint8).tobytes())
    raw += (np.exp2(rng.uniform(-3, 3, 3 + 1)) * 0.05).astype("<f4").tobytes()
    want = nf4_dequantize_np(bytes(raw), n)
    got = ours_dequantize("nf4", bytes(raw), n)
    check(np.array_equal(got.view(np.uint32), want.view(np.uint32)), "nf4 dequantize == numpy, random raw bytes",
          first_diff(got, want))


# ---------------------------------------------------------------- float conversions

def check_floats(rng):
    print("f16 / bf16 conversions")
    special = np.array([0x00000000, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0x3f808000, 0x3f818000,
                        0x477ff000, 0x477fefff, 0x33000000, 0x33000001, 0x387fe000, 0x00000001, 0x007fffff,
                        0x7f7fffff, 0x00018000], dtype=np.uint32).view(np.float32)
    x = np.concatenate([special, rng.normal(0, 1, 4000).astype(np.float32),
                        (rng.normal(0, 1, 4000) * 1e-6).astype(np.float32),
                        rng.integers(0, 2**32, 4000, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    # numpy keeps a signalling NaN signalling when narrowing to f16; loom (like F16C's vcvtps2ph)
    # quiets it. So the f16 comparison takes every non-NaN plus the canonical quiet NaN only.
    canonical_nan = (x.view(np.uint32) & 0x7fffffff) == 0x7fc00000
    xf = x[~np.isnan(x) | canonical_nan]
    with np.errstate(over="ignore"):
        want_f16 = xf.astype(np.float16).view(np.uint16)
    got_f16 = np.frombuffer(ours_quantize("f16", xf), "<u2")
    check(np.array_equal(got_f16, want_f16), "f16 quantize == numpy astype(float16)", first_diff(got_f16, want_f16))
    got_bf16 = np.frombuffer(ours_quantize("bf16", x), "<u2")
    want_bf16 = gq.quantize(x, QT.BF16).view(np.uint16).ravel()
    check(np.array_equal(got_bf16, want_bf16), "bf16 quantize == gguf BF16 (NaN payloads included)",
          first_diff(got_bf16, want_bf16))
    halves = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    finite = np.isfinite(halves.view(np.float16))
    got = ours_dequantize("f16", halves.tobytes(), 65536)[finite]
    want = halves.view(np.float16)[finite].astype(np.float32)
    check(np.array_equal(got.view(np.uint32), want.view(np.uint32)), "f16 dequantize == numpy, all finite halves",
          first_diff(got, want))


def main():
    if not TOOL.exists():
        print(f"FAIL: {TOOL} not found; build it (ninja -C {BUILD} loom_test_quant_tool) or set LOOM_BUILD_DIR")
        return 1
    from importlib.metadata import version
    print(f"loom quant interop: tool {TOOL}, gguf {version('gguf')}, numpy {np.__version__}")
    rng = np.random.default_rng(2024)
    check_gguf_formats(rng)
    check_nf4(rng)
    check_floats(rng)
    print(f"\nSUMMARY: {passes + len(failures)} checks, {passes} passed, {len(failures)} failed "
          "(all comparisons exact: bytes equal / f32 bit patterns equal)")
    for f in failures:
        print(f"  failed: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        for p in WORK.iterdir():
            p.unlink()
        WORK.rmdir()
