// Small AVX2 helpers shared by the *_avx2.cpp files of autograd/quant (include only from files
// compiled with the AVX2 + FMA + F16C flags): the f16 scalar decode, byte -> f32 lane widening,
// and the unpacking of NF4 codes and Q6_K quarters that the dequantizers (dequant_avx2.cpp) and
// the decode row kernels (gemv_avx2.cpp) both read the blocks with. No floating-point arithmetic
// here, so fp_contract_off.h does not concern it.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "autograd/quant/nf4.h"

namespace loom::quant::avx2 {

// Exact f16 -> f32 of one stored value (F16C), as loom::f16_to_f32.
inline float f16_scalar(const uint8_t* p) {
  uint16_t h;
  __builtin_memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// The low 8 bytes of b as 8 signed / unsigned integers converted to f32.
inline __m256 i8x8_to_f32(__m128i b) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}
inline __m256 u8x8_to_f32(__m128i b) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
}
inline __m128i high8(__m128i b) {
  return _mm_srli_si128(b, 8);
}

// NF4: 16 code bytes (32 codes; element 2i in the high nibble of byte i, 2i + 1 in the low one)
// as two registers of 16 code indices in element order.
inline void nf4_codes_in_order(const uint8_t* bytes16, __m128i out[2]) {
  const __m128i low4 = _mm_set1_epi8(0x0F);
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes16));
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), low4);
  const __m128i lo = _mm_and_si128(raw, low4);
  out[0] = _mm_unpacklo_epi8(hi, lo);
  out[1] = _mm_unpackhi_epi8(hi, lo);
}

// The NF4 code values of 8 indices (the low 8 bytes of idx8): codes 0..7 from one register,
// 8..15 from the other (permutevar8x32 reads the low 3 bits of each index), picked by bit 3.
inline __m256 nf4_lookup(__m128i idx8, __m256 table_lo, __m256 table_hi) {
  const __m256i idx = _mm256_cvtepu8_epi32(idx8);
  const __m256 lo = _mm256_permutevar8x32_ps(table_lo, idx);
  const __m256 hi = _mm256_permutevar8x32_ps(table_hi, idx);
  return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}
inline __m256 nf4_table_lo() {
  return _mm256_loadu_ps(kNf4Codes.data());
}
inline __m256 nf4_table_hi() {
  return _mm256_loadu_ps(kNf4Codes.data() + 8);
}

// Q6_K: half h (128 weights) of the block at p, as four runs r of 32 signed values q - 32 holding
// elements 128h + 32r ... + 31: low 4 bits from ql (ql_a low, ql_b low, ql_a high, ql_b high
// nibbles), high 2 bits from bits 2r..2r+1 of qh. The scale of the first 16 of run r is
// scales[8h + 2r], of the second 16 scales[8h + 2r + 1].
class Q6kHalf {
 public:
  Q6kHalf(const uint8_t* p, int h) {
    const __m256i ql_a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 64 * h));
    const __m256i ql_b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 64 * h + 32));
    qh_ = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 128 + 32 * h));
    lo_src_[0] = ql_a;
    lo_src_[1] = ql_b;
    lo_src_[2] = _mm256_srli_epi16(ql_a, 4);
    lo_src_[3] = _mm256_srli_epi16(ql_b, 4);
  }
  __m256i centered(int r) const {
    const __m256i high2 = _mm256_and_si256(_mm256_srli_epi16(qh_, 2 * r), _mm256_set1_epi8(0x03));
    const __m256i q = _mm256_or_si256(_mm256_and_si256(lo_src_[r], _mm256_set1_epi8(0x0F)),
                                      _mm256_slli_epi16(high2, 4));
    return _mm256_sub_epi8(q, _mm256_set1_epi8(32));
  }

 private:
  __m256i lo_src_[4];
  __m256i qh_;
};

}  // namespace loom::quant::avx2
