// AVX2 products of one activation row with GGUF Q8_0 / Q4_0 / Q4_1 weight rows, read straight
// from the blocks: y[r] = sum_k W[r, k] x[k] for a range of rows. What decoding (one token, M = 1)
// needs: dequantizing every weight to f32 and then running sgemv over it wrote and read each
// weight twice more than this. Per block of 32, sum_i q_i x_i is formed in f32 (8 lanes, fused
// multiply-adds) and scaled by the block's d once; Q4_1's offset m adds m * sum_i x_i, with the
// block sums of x formed once per call. The result equals sum_k W[r, k] x[k] with W as the
// dequantizers give it, up to the order of the f32 additions (tested against the dequantized
// product in tests/test_quant.cpp).
//
// Only called after quant::use_avx2() (AVX2 + FMA + F16C at run time).
#include <immintrin.h>

#include <cstdint>
#include <vector>

#include "autograd/quant/ggml_blocks.h"
#include "autograd/quant/quant_kernels.h"

namespace loom::quant::avx2 {
namespace {

inline float f16_value(const uint8_t* p) {
  uint16_t h;
  __builtin_memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

inline __m256 i8x8(__m128i b) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)); }
inline __m256 u8x8(__m128i b) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)); }
inline __m128i high8(__m128i b) { return _mm_srli_si128(b, 8); }

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

// sum over 16 quantized values (as f32, two halves of 8) times x[0..15].
inline __m256 dot16(__m256 a, __m256 b, const float* x, __m256 acc) {
  acc = _mm256_fmadd_ps(a, _mm256_loadu_ps(x), acc);
  return _mm256_fmadd_ps(b, _mm256_loadu_ps(x + 8), acc);
}

float row_q8_0(const uint8_t* row, int64_t nblocks, const float* x) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nblocks; ++b, x += kQk) {
    const uint8_t* p = row + b * sizeof(BlockQ8_0);
    const __m128i q0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2));
    const __m128i q1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 18));
    __m256 s = dot16(i8x8(q0), i8x8(high8(q0)), x, _mm256_setzero_ps());
    s = dot16(i8x8(q1), i8x8(high8(q1)), x + 16, s);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_value(p)), s, acc);
  }
  return hsum(acc);
}

float row_q4_0(const uint8_t* row, int64_t nblocks, const float* x) {
  const __m128i low4 = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nblocks; ++b, x += kQk) {
    const uint8_t* p = row + b * sizeof(BlockQ4_0);
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2));
    const __m128i lo = _mm_sub_epi8(_mm_and_si128(raw, low4), eight);  // elements 0..15
    const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), low4), eight);
    __m256 s = dot16(i8x8(lo), i8x8(high8(lo)), x, _mm256_setzero_ps());
    s = dot16(i8x8(hi), i8x8(high8(hi)), x + 16, s);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_value(p)), s, acc);
  }
  return hsum(acc);
}

// xsum[b] = sum of x over block b.
float row_q4_1(const uint8_t* row, int64_t nblocks, const float* x, const float* xsum) {
  const __m128i low4 = _mm_set1_epi8(0x0F);
  __m256 acc = _mm256_setzero_ps();
  float offsets = 0.0f;
  for (int64_t b = 0; b < nblocks; ++b, x += kQk) {
    const uint8_t* p = row + b * sizeof(BlockQ4_1);
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 4));
    const __m128i lo = _mm_and_si128(raw, low4);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), low4);
    __m256 s = dot16(u8x8(lo), u8x8(high8(lo)), x, _mm256_setzero_ps());
    s = dot16(u8x8(hi), u8x8(high8(hi)), x + 16, s);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_value(p)), s, acc);
    offsets += f16_value(p + 2) * xsum[b];
  }
  return hsum(acc) + offsets;
}

}  // namespace

bool gemv_rows(DType t, const uint8_t* data, int64_t cols, int64_t row_begin, int64_t row_end,
               const float* x, float* y, bool accumulate) {
  if (t != DType::Q8_0 && t != DType::Q4_0 && t != DType::Q4_1) return false;
  const int64_t nblocks = cols / kQk;
  const size_t block_bytes = t == DType::Q8_0   ? sizeof(BlockQ8_0)
                             : t == DType::Q4_0 ? sizeof(BlockQ4_0)
                                                : sizeof(BlockQ4_1);
  const size_t row_bytes = static_cast<size_t>(nblocks) * block_bytes;
  std::vector<float> xsum;
  if (t == DType::Q4_1) {
    xsum.resize(static_cast<size_t>(nblocks));
    for (int64_t b = 0; b < nblocks; ++b) {
      __m256 s = _mm256_add_ps(_mm256_loadu_ps(x + b * kQk), _mm256_loadu_ps(x + b * kQk + 8));
      s = _mm256_add_ps(s, _mm256_add_ps(_mm256_loadu_ps(x + b * kQk + 16),
                                         _mm256_loadu_ps(x + b * kQk + 24)));
      xsum[static_cast<size_t>(b)] = hsum(s);
    }
  }
  for (int64_t r = row_begin; r < row_end; ++r) {
    const uint8_t* row = data + static_cast<size_t>(r) * row_bytes;
    const float v = t == DType::Q8_0   ? row_q8_0(row, nblocks, x)
                    : t == DType::Q4_0 ? row_q4_0(row, nblocks, x)
                                       : row_q4_1(row, nblocks, x, xsum.data());
    y[r] = accumulate ? y[r] + v : v;
  }
  return true;
}

}  // namespace loom::quant::avx2
