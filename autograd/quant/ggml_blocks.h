// GGUF/ggml block layouts as plain structs, byte for byte as in a GGUF file (little-endian, no
// padding), plus the small decoding helpers that the scalar reference and the AVX-512 path share
// so that both read the same bits the same way.
//
// Per-block value formulas (each operation is one f32 rounding, evaluated in this order; gguf-py
// and ggml without FMA contraction do the same):
//   Q8_0  y = float(q)         * d                      q int8
//   Q4_0  y = float(q - 8)     * d                      q 0..15, j in low nibble, j+16 in high
//   Q4_1  y = float(q) * d + m                          (product rounded, then the sum)
//   Q4_K  y = float(q) * (d*sc) - (dmin*m)              8 sub-blocks of 32, 6-bit sc / m
//   Q6_K  y = float(q - 32) * (d*sc)                    16 sub-blocks of 16, int8 sc
#pragma once

#include <cstdint>
#include <cstring>

#include "autograd/quant/quant.h"

namespace loom {

inline constexpr int64_t kQk = 32;    // Q8_0 / Q4_0 / Q4_1 block size
inline constexpr int64_t kQkK = 256;  // K-quant super-block size

struct BlockQ8_0 {
  f16_t d;
  int8_t qs[32];
};
struct BlockQ4_0 {
  f16_t d;
  uint8_t qs[16];  // element j in the low nibble of qs[j], element j+16 in the high nibble
};
struct BlockQ4_1 {
  f16_t d;
  f16_t m;
  uint8_t qs[16];
};
struct BlockQ4_K {
  f16_t d;             // scale of the 6-bit sub-block scales
  f16_t dmin;          // scale of the 6-bit sub-block mins
  uint8_t scales[12];  // 8 (scale, min) pairs of 6 bits, packed (see k4_scale_min)
  uint8_t qs[128];     // 64-element chunk c: qs[32c+l] low nibble = element 64c+l, high = 64c+32+l
};
struct BlockQ6_K {
  uint8_t ql[128];    // low 4 bits
  uint8_t qh[64];     // high 2 bits
  int8_t scales[16];  // one per 16 elements
  f16_t d;
};

static_assert(sizeof(BlockQ8_0) == 34, "GGUF block_q8_0 is 34 bytes");
static_assert(sizeof(BlockQ4_0) == 18, "GGUF block_q4_0 is 18 bytes");
static_assert(sizeof(BlockQ4_1) == 20, "GGUF block_q4_1 is 20 bytes");
static_assert(sizeof(BlockQ4_K) == 144, "GGUF block_q4_K is 144 bytes");
static_assert(sizeof(BlockQ6_K) == 210, "GGUF block_q6_K is 210 bytes");
static_assert(alignof(BlockQ8_0) == 2 && alignof(BlockQ6_K) == 2, "blocks are only 2-aligned");

// Scale and min of sub-block j (0..7) of a Q4_K super-block. Bytes 0..3 hold the low 6 bits of
// scales 0..3, bytes 4..7 the low 6 bits of mins 0..3; for j >= 4 the low 4 bits come from byte
// j+4 (scale in the low nibble, min in the high) and the top 2 bits from bits 6..7 of bytes j-4
// (scale) and j (min).
inline void k4_scale_min(const uint8_t* scales, int j, uint8_t& sc, uint8_t& m) {
  if (j < 4) {
    sc = scales[j] & 63;
    m = scales[j + 4] & 63;
  } else {
    sc = static_cast<uint8_t>((scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4));
    m = static_cast<uint8_t>((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4));
  }
}

// Blocks of a GGUF run are only 2-byte aligned inside a file; read f16 fields through memcpy.
inline f16_t load_f16(const void* p) {
  f16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace loom
