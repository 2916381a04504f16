// GGUF Q4_0 and Q4_1: blocks of 32 weights as 16 bytes of nibbles (element j in the low nibble of
// byte j, element j+16 in the high nibble) plus f16 scale(s).
//   Q4_0: value (q - 8) * d, d = -(the signed value of largest magnitude) / 8.
//   Q4_1: value q * d + m, d = (max - min) / 15, m = min.
//
// The quantizers reproduce gguf-py's rounding byte for byte (gguf.quants.Q4_0 / Q4_1):
//   Q4_0: q = trunc(f32(x * id + 8.5)) with x * id + 8.5 formed in double (the exact product),
//         i.e. one rounding of the exact value to f32 -- what ggml's reference quantizer computes
//         when the compiler fuses it into an FMA (x86 release builds). A non-FMA ggml build rounds
//         x * id first and can differ by one step on rare ties.
//   Q4_1: q = trunc((x - min) * id + 0.5) in f32, each operation rounded separately.
// Both clamp q to [0, 15]. The block's first largest-magnitude element sets Q4_0's sign.
#include <cfloat>
#include <cmath>

#include "autograd/quant/ggml_blocks.h"
#include "autograd/quant/quant_kernels.h"

// Last: applies to the code below only (see the header).
#include "autograd/quant/fp_contract_off.h"

namespace loom::quant {
namespace {

uint8_t clamp_nibble(float t) {
  if (!(t > 0.0f)) return 0;  // also catches NaN (only from non-finite scales)
  if (t >= 15.0f) return 15;
  return static_cast<uint8_t>(t);  // truncation
}

uint8_t q4_0_code(float x, float id) {
  const double exact = static_cast<double>(x) * static_cast<double>(id) + 8.5;
  return clamp_nibble(static_cast<float>(exact));
}

uint8_t q4_1_code(float x, float mn, float id) {
  const float scaled = (x - mn) * id;
  return clamp_nibble(scaled + 0.5f);
}

}  // namespace

void quantize_q4_0(const float* x, int64_t nblocks, uint8_t* out) {
  for (int64_t b = 0; b < nblocks; ++b, x += kQk) {
    float amax = 0.0f;
    float signed_max = 0.0f;
    for (int j = 0; j < kQk; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        signed_max = x[j];
      }
    }
    const float d = signed_max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    BlockQ4_0 blk;
    blk.d = f32_to_f16(d);
    for (int j = 0; j < kQk / 2; ++j)
      blk.qs[j] = static_cast<uint8_t>(q4_0_code(x[j], id) | (q4_0_code(x[j + kQk / 2], id) << 4));
    std::memcpy(out + b * sizeof blk, &blk, sizeof blk);
  }
}

void quantize_q4_1(const float* x, int64_t nblocks, uint8_t* out) {
  for (int64_t b = 0; b < nblocks; ++b, x += kQk) {
    float mn = FLT_MAX;
    float mx = -FLT_MAX;
    for (int j = 0; j < kQk; ++j) {
      if (x[j] < mn) mn = x[j];
      if (x[j] > mx) mx = x[j];
    }
    const float d = (mx - mn) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    BlockQ4_1 blk;
    blk.d = f32_to_f16(d);
    blk.m = f32_to_f16(mn);
    for (int j = 0; j < kQk / 2; ++j)
      blk.qs[j] =
          static_cast<uint8_t>(q4_1_code(x[j], mn, id) | (q4_1_code(x[j + kQk / 2], mn, id) << 4));
    std::memcpy(out + b * sizeof blk, &blk, sizeof blk);
  }
}

void dequant_q4_0_ref(const uint8_t* blocks, int64_t nblocks, float* out) {
  for (int64_t b = 0; b < nblocks; ++b, out += kQk) {
    BlockQ4_0 blk;
    std::memcpy(&blk, blocks + b * sizeof blk, sizeof blk);
    const float d = f16_to_f32(blk.d);
    for (int j = 0; j < kQk / 2; ++j) {
      out[j] = static_cast<float>((blk.qs[j] & 0x0F) - 8) * d;
      out[j + kQk / 2] = static_cast<float>((blk.qs[j] >> 4) - 8) * d;
    }
  }
}

void dequant_q4_1_ref(const uint8_t* blocks, int64_t nblocks, float* out) {
  for (int64_t b = 0; b < nblocks; ++b, out += kQk) {
    BlockQ4_1 blk;
    std::memcpy(&blk, blocks + b * sizeof blk, sizeof blk);
    const float d = f16_to_f32(blk.d);
    const float m = f16_to_f32(blk.m);
    for (int j = 0; j < kQk / 2; ++j) {
      out[j] = static_cast<float>(blk.qs[j] & 0x0F) * d + m;
      out[j + kQk / 2] = static_cast<float>(blk.qs[j] >> 4) * d + m;
    }
  }
}

}  // namespace loom::quant
