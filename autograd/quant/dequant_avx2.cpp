// AVX2 dequantization of NF4, Q8_0, Q4_0, Q4_1, Q4_K and Q6_K to f32: the fast path of CPUs
// without AVX-512 (Zen 2/3, most laptops), where the GEMM dequantizes tiles of weight rows to f32.
// Each kernel does the same f32 operations in the same order as its scalar reference
// (k_quants.cpp, q4.cpp, q8_0.cpp, nf4.cpp) and as the AVX-512 kernels (dequant_avx512.cpp), 8
// lanes at a time, so the output is bit-identical. No bf16 output: only CPUs with AVX512_BF16
// compute in bf16, and they take the AVX-512 kernels.
//
// Only called after quant::use_avx2() (AVX2 + FMA + F16C at run time).
#include <immintrin.h>

#include <cstdint>

#include "autograd/quant/avx2_util.h"
#include "autograd/quant/ggml_blocks.h"
#include "autograd/quant/nf4.h"
#include "autograd/quant/quant_kernels.h"

// Last: applies to the code below only (see the header).
#include "autograd/quant/fp_contract_off.h"

namespace loom::quant::avx2 {
namespace {

// 16 signed bytes times d: out[0..15].
inline void i8x16_times(__m128i q, __m256 d, float* out) {
  _mm256_storeu_ps(out, _mm256_mul_ps(i8x8_to_f32(q), d));
  _mm256_storeu_ps(out + 8, _mm256_mul_ps(i8x8_to_f32(high8(q)), d));
}

// 16 unsigned bytes: q * d - m (Q4_K) into out[0..15].
inline void u8x16_times_minus(__m128i q, __m256 d, __m256 m, float* out) {
  _mm256_storeu_ps(out, _mm256_sub_ps(_mm256_mul_ps(u8x8_to_f32(q), d), m));
  _mm256_storeu_ps(out + 8, _mm256_sub_ps(_mm256_mul_ps(u8x8_to_f32(high8(q)), d), m));
}

void q8_0_blocks(const uint8_t* blocks, int64_t nblocks, float* out) {
  for (int64_t b = 0; b < nblocks; ++b, out += kQk) {
    const uint8_t* p = blocks + b * sizeof(BlockQ8_0);
    const __m256 d = _mm256_set1_ps(f16_scalar(p));
    i8x16_times(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2)), d, out);
    i8x16_times(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 18)), d, out + 16);
  }
}

void q4_0_blocks(const uint8_t* blocks, int64_t nblocks, float* out) {
  const __m128i low4 = _mm_set1_epi8(0x0F);
  const __m128i eight = _mm_set1_epi8(8);
  for (int64_t b = 0; b < nblocks; ++b, out += kQk) {
    const uint8_t* p = blocks + b * sizeof(BlockQ4_0);
    const __m256 d = _mm256_set1_ps(f16_scalar(p));
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2));
    i8x16_times(_mm_sub_epi8(_mm_and_si128(raw, low4), eight), d, out);
    i8x16_times(_mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), low4), eight), d, out + 16);
  }
}

void q4_1_blocks(const uint8_t* blocks, int64_t nblocks, float* out) {
  const __m128i low4 = _mm_set1_epi8(0x0F);
  for (int64_t b = 0; b < nblocks; ++b, out += kQk) {
    const uint8_t* p = blocks + b * sizeof(BlockQ4_1);
    const __m256 d = _mm256_set1_ps(f16_scalar(p));
    const __m256 m = _mm256_set1_ps(f16_scalar(p + 2));
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 4));
    const __m128i halves[2] = {_mm_and_si128(raw, low4),
                               _mm_and_si128(_mm_srli_epi16(raw, 4), low4)};
    for (int h = 0; h < 2; ++h) {
      float* o = out + 16 * h;
      _mm256_storeu_ps(o, _mm256_add_ps(_mm256_mul_ps(u8x8_to_f32(halves[h]), d), m));
      _mm256_storeu_ps(o + 8, _mm256_add_ps(_mm256_mul_ps(u8x8_to_f32(high8(halves[h])), d), m));
    }
  }
}

void q4_k_blocks(const uint8_t* blocks, int64_t nblocks, float* out) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  for (int64_t b = 0; b < nblocks; ++b, out += kQkK) {
    const uint8_t* p = blocks + b * sizeof(BlockQ4_K);
    const float d = f16_scalar(p);
    const float dmin = f16_scalar(p + 2);
    const uint8_t* scales = p + 4;
    const uint8_t* qs = p + 16;
    for (int c = 0; c < 4; ++c) {  // 64 weights: sub-block 2c in low nibbles, 2c+1 in high
      uint8_t sc, m;
      k4_scale_min(scales, 2 * c, sc, m);
      const __m256 d_lo = _mm256_set1_ps(d * sc), m_lo = _mm256_set1_ps(dmin * m);
      k4_scale_min(scales, 2 * c + 1, sc, m);
      const __m256 d_hi = _mm256_set1_ps(d * sc), m_hi = _mm256_set1_ps(dmin * m);
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * c));
      const __m256i lo = _mm256_and_si256(raw, low4);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
      float* o = out + 64 * c;
      u8x16_times_minus(_mm256_castsi256_si128(lo), d_lo, m_lo, o);
      u8x16_times_minus(_mm256_extracti128_si256(lo, 1), d_lo, m_lo, o + 16);
      u8x16_times_minus(_mm256_castsi256_si128(hi), d_hi, m_hi, o + 32);
      u8x16_times_minus(_mm256_extracti128_si256(hi, 1), d_hi, m_hi, o + 48);
    }
  }
}

void q6_k_blocks(const uint8_t* blocks, int64_t nblocks, float* out) {
  for (int64_t b = 0; b < nblocks; ++b, out += kQkK) {
    const uint8_t* p = blocks + b * sizeof(BlockQ6_K);
    const auto* scales = reinterpret_cast<const int8_t*>(p + 192);
    const float d = f16_scalar(p + 208);
    for (int h = 0; h < 2; ++h) {  // halves of 128: ql 64 bytes, qh 32 bytes
      const Q6kHalf half(p, h);
      for (int r = 0; r < 4; ++r) {
        const __m256i centered = half.centered(r);
        const int s = 8 * h + 2 * r;  // scale index of the first 16 of these 32 weights
        float* o = out + 128 * h + 32 * r;
        i8x16_times(_mm256_castsi256_si128(centered), _mm256_set1_ps(d * scales[s]), o);
        i8x16_times(_mm256_extracti128_si256(centered, 1), _mm256_set1_ps(d * scales[s + 1]),
                    o + 16);
      }
    }
  }
}

void nf4_range(const uint8_t* data, int64_t n_total, int64_t first, int64_t count, float* out) {
  const Nf4Layout layout = nf4_layout(data, n_total);
  const __m256 table_lo = nf4_table_lo(), table_hi = nf4_table_hi();
  for (int64_t b = first / kNf4BlockSize; b < (first + count) / kNf4BlockSize; ++b) {
    const __m256 absmax = _mm256_set1_ps(nf4_block_absmax(layout, b));
    const uint8_t* codes = layout.codes + b * (kNf4BlockSize / 2);
    for (int half = 0; half < 2; ++half, out += 32) {
      __m128i in_order[2];
      nf4_codes_in_order(codes + 16 * half, in_order);
      for (int k = 0; k < 4; ++k) {
        const __m128i bytes = k % 2 ? high8(in_order[k / 2]) : in_order[k / 2];
        _mm256_storeu_ps(out + 8 * k, _mm256_mul_ps(nf4_lookup(bytes, table_lo, table_hi), absmax));
      }
    }
  }
}

}  // namespace

void dequant_q8_0(const uint8_t* blocks, int64_t nblocks, float* out) {
  q8_0_blocks(blocks, nblocks, out);
}
void dequant_q4_0(const uint8_t* blocks, int64_t nblocks, float* out) {
  q4_0_blocks(blocks, nblocks, out);
}
void dequant_q4_1(const uint8_t* blocks, int64_t nblocks, float* out) {
  q4_1_blocks(blocks, nblocks, out);
}
void dequant_q4_k(const uint8_t* blocks, int64_t nblocks, float* out) {
  q4_k_blocks(blocks, nblocks, out);
}
void dequant_q6_k(const uint8_t* blocks, int64_t nblocks, float* out) {
  q6_k_blocks(blocks, nblocks, out);
}
void dequant_nf4(const uint8_t* data, int64_t n_total, int64_t first, int64_t count, float* out) {
  nf4_range(data, n_total, first, count, out);
}

}  // namespace loom::quant::avx2
