// f32 <-> bf16 / f16 conversion: the scalar definitions (the reference every fast path must match
// bit for bit) and the bulk entry points, which use the AVX-512 versions when the CPU has them.
//
// Rules (the same as ggml, PyTorch and the F16C / AVX-512 hardware conversions):
//   - narrowing rounds to nearest, ties to even, with correct subnormals (no flush to zero);
//     finite values that round past the largest finite value become +-inf;
//   - a NaN stays a NaN of the same sign with its top payload bits kept and the quiet bit set;
//   - widening is exact (an f16 signalling NaN comes back quiet, as vcvtph2ps does).
#include <cmath>
#include <cstring>

#include "autograd/quant/quant.h"
#include "autograd/quant/quant_kernels.h"

// Last: applies to the code below only (see the header).
#include "autograd/quant/fp_contract_off.h"

namespace loom {
namespace {

uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

float bits_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

}  // namespace

float bf16_to_f32(bf16_t x) {
  return bits_float(static_cast<uint32_t>(x) << 16);
}

bf16_t f32_to_bf16(float x) {
  const uint32_t u = float_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<bf16_t>((u >> 16) | 0x40u);  // quiet NaN
  const uint32_t lsb = (u >> 16) & 1u;
  return static_cast<bf16_t>((u + 0x7fffu + lsb) >> 16);
}

float f16_to_f32(f16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24 is exact in f32.
    const float mag = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -mag : mag;
  }
  if (exp == 31) {
    if (mant == 0) return bits_float(sign | 0x7f800000u);
    return bits_float(sign | 0x7fc00000u | (mant << 13));
  }
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

f16_t f32_to_f16(float x) {
  const uint32_t u = float_bits(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t mag = u & 0x7fffffffu;
  if (mag > 0x7f800000u) return static_cast<f16_t>(sign | 0x7e00u | ((mag >> 13) & 0x3ffu));
  // 65520 is halfway between 65504 (largest finite, odd mantissa) and 65536: ties-to-even -> inf.
  if (mag >= 0x477ff000u) return static_cast<f16_t>(sign | 0x7c00u);
  if (mag < 0x38800000u) {
    // Below the smallest normal half (2^-14): result is a subnormal count of 2^-24 units.
    const uint32_t e = mag >> 23;
    if (e < 102) return static_cast<f16_t>(sign);  // < 2^-25: rounds to zero
    const uint32_t m = (mag & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14..24
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;  // may carry into the smallest normal
    return static_cast<f16_t>(sign | q);
  }
  const uint32_t r = mag - 0x38000000u;  // rebias the exponent from 127 to 15
  return static_cast<f16_t>(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));
}

void convert_f32_to_bf16(const float* src, bf16_t* dst, int64_t n) {
  if (quant::use_avx512()) return quant::avx512::convert_f32_to_bf16(src, dst, n);
  for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
}

void convert_bf16_to_f32(const bf16_t* src, float* dst, int64_t n) {
  if (quant::use_avx512()) return quant::avx512::convert_bf16_to_f32(src, dst, n);
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
}

void convert_f32_to_f16(const float* src, f16_t* dst, int64_t n) {
  if (quant::use_avx512()) return quant::avx512::convert_f32_to_f16(src, dst, n);
  for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_f16(src[i]);
}

void convert_f16_to_f32(const f16_t* src, float* dst, int64_t n) {
  if (quant::use_avx512()) return quant::avx512::convert_f16_to_f32(src, dst, n);
  for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(src[i]);
}

}  // namespace loom
