// GGUF Q8_0: blocks of 32 weights, f16 scale d + 32 int8, value q * d.
//
// The quantizer follows ggml's reference (quantize_row_q8_0_ref) and gguf-py rounding exactly, so
// the bytes match theirs: d = amax / 127 in f32, id = 1/d (0 for an all-zero block),
// q = round-half-away-from-zero(x * id) with the product rounded to f32 first.
#include <cmath>

#include "autograd/quant/ggml_blocks.h"
#include "autograd/quant/quant_kernels.h"

// Last: applies to the code below only (see the header).
#include "autograd/quant/fp_contract_off.h"

namespace loom::quant {
namespace {

// roundf() without a libm call: for |v| < 2^31 the truncation t and the fraction v - t are exact,
// so the fraction decides the half-away-from-zero rounding exactly. |v| <= 127.5 for real blocks;
// a block of only subnormals makes id infinite (d then stores as f16 zero, so any code decodes to
// 0): saturate instead of converting inf / NaN to int.
int8_t round_half_away(float v) {
  const float a = std::fabs(v);
  if (!(a < 127.5f)) return static_cast<int8_t>(v < 0.0f ? -127 : 127);
  const auto t = static_cast<int32_t>(a);
  const int32_t r = t + (a - static_cast<float>(t) >= 0.5f ? 1 : 0);
  return static_cast<int8_t>(v < 0.0f ? -r : r);
}

}  // namespace

void quantize_q8_0(const float* x, int64_t nblocks, uint8_t* out) {
  for (int64_t b = 0; b < nblocks; ++b, x += kQk) {
    float amax = 0.0f;
    for (int j = 0; j < kQk; ++j) amax = std::fmax(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    BlockQ8_0 blk;
    blk.d = f32_to_f16(d);
    for (int j = 0; j < kQk; ++j) blk.qs[j] = round_half_away(x[j] * id);
    std::memcpy(out + b * sizeof(BlockQ8_0), &blk, sizeof blk);
  }
}

void dequant_q8_0_ref(const uint8_t* blocks, int64_t nblocks, float* out) {
  for (int64_t b = 0; b < nblocks; ++b, out += kQk) {
    BlockQ8_0 blk;
    std::memcpy(&blk, blocks + b * sizeof blk, sizeof blk);
    const float d = f16_to_f32(blk.d);
    for (int j = 0; j < kQk; ++j) out[j] = static_cast<float>(blk.qs[j]) * d;
  }
}

}  // namespace loom::quant
