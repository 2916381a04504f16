// Small AVX-512 helpers shared by the *_avx512.cpp files of autograd/quant (include first, and only
// from files compiled with the AVX-512 + BF16 flags): exact f32 -> bf16 rounding of 16 lanes,
// stores of 16 results as f32 or bf16, and the f16 scalar decode.
#pragma once

// GCC 12's AVX-512 intrinsics (e.g. _mm512_cvtepi8_epi32) trip a false -Wmaybe-uninitialized on
// their internal _mm512_undefined_*() placeholder (a GCC 12 bug, fixed in later releases). The
// diagnostic state is attached to the header's own lines, so only the header is silenced.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstdint>

#include "autograd/quant/quant.h"

namespace loom::quant::avx512 {

// Round-to-nearest-even f32 -> bf16 of 16 lanes, bit-identical to loom::f32_to_bf16.
// vcvtneps2bf16 rounds to nearest even and quiets NaNs the same way, but flushes f32 subnormal
// inputs to zero; lanes holding a subnormal are redone with the integer rounding.
inline __m256i f32x16_to_bf16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  __m256i r = (__m256i)_mm512_cvtneps_pbh(v);
  const __m512i mag_minus_1 =
      _mm512_sub_epi32(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(1));
  const __mmask16 subnormal = _mm512_cmplt_epu32_mask(mag_minus_1, _mm512_set1_epi32(0x7fffff));
  if (__builtin_expect(subnormal != 0, 0)) {
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb);
    r = _mm256_mask_mov_epi16(r, subnormal, _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16)));
  }
  return r;
}

inline void store16(float* p, __m512 v) {
  _mm512_storeu_ps(p, v);
}
inline void store16(bf16_t* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), f32x16_to_bf16(v));
}

// Exact f16 -> f32 of one value (F16C), identical to loom::f16_to_f32 (tested on all 65536).
inline float f16_scalar(const uint8_t* p) {
  uint16_t h;
  __builtin_memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// 16 bytes as 16 signed / unsigned integers converted to f32.
inline __m512 i8x16_to_f32(__m128i b) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
}
inline __m512 u8x16_to_f32(__m128i b) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b));
}

}  // namespace loom::quant::avx512
