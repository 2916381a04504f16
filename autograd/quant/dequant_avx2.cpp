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

#include "autograd/quant/ggml_blocks.h"
#include "autograd/quant/nf4.h"
#include "autograd/quant/quant_kernels.h"

// Last: applies to the code below only (see the header).
#include "autograd/quant/fp_contract_off.h"

namespace loom::quant::avx2 {
namespace {

// Exact f16 -> f32 of one value (F16C), as loom::f16_to_f32.
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
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i low2 = _mm256_set1_epi8(0x03);
  const __m256i bias = _mm256_set1_epi8(32);
  for (int64_t b = 0; b < nblocks; ++b, out += kQkK) {
    const uint8_t* p = blocks + b * sizeof(BlockQ6_K);
    const auto* scales = reinterpret_cast<const int8_t*>(p + 192);
    const float d = f16_scalar(p + 208);
    for (int h = 0; h < 2; ++h) {  // halves of 128: ql 64 bytes, qh 32 bytes
      const __m256i ql_a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 64 * h));
      const __m256i ql_b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 64 * h + 32));
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 128 + 32 * h));
      // Quarter r of the half: low nibble source (ql_a low, ql_b low, ql_a high, ql_b high) and
      // high 2 bits from bits 2r..2r+1 of qh.
      const __m256i lo_src[4] = {ql_a, ql_b, _mm256_srli_epi16(ql_a, 4), _mm256_srli_epi16(ql_b, 4)};
      for (int r = 0; r < 4; ++r) {
        const __m256i high2 = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * r), low2);
        const __m256i q =
            _mm256_or_si256(_mm256_and_si256(lo_src[r], low4), _mm256_slli_epi16(high2, 4));
        const __m256i centered = _mm256_sub_epi8(q, bias);
        const int s = 8 * h + 2 * r;  // scale index of the first 16 of these 32 weights
        float* o = out + 128 * h + 32 * r;
        i8x16_times(_mm256_castsi256_si128(centered), _mm256_set1_ps(d * scales[s]), o);
        i8x16_times(_mm256_extracti128_si256(centered, 1), _mm256_set1_ps(d * scales[s + 1]),
                    o + 16);
      }
    }
  }
}

// The 16-entry code table looked up 8 lanes at a time: codes 0..7 from one register, 8..15 from
// the other (permutevar8x32 reads the low 3 bits of each index), picked by bit 3.
inline __m256 nf4_lookup(__m256i idx, __m256 table_lo, __m256 table_hi) {
  const __m256 lo = _mm256_permutevar8x32_ps(table_lo, idx);
  const __m256 hi = _mm256_permutevar8x32_ps(table_hi, idx);
  return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

void nf4_range(const uint8_t* data, int64_t n_total, int64_t first, int64_t count, float* out) {
  const Nf4Layout layout = nf4_layout(data, n_total);
  const __m256 table_lo = _mm256_loadu_ps(kNf4Codes.data());
  const __m256 table_hi = _mm256_loadu_ps(kNf4Codes.data() + 8);
  const __m128i low4 = _mm_set1_epi8(0x0F);
  for (int64_t b = first / kNf4BlockSize; b < (first + count) / kNf4BlockSize; ++b) {
    const __m256 absmax = _mm256_set1_ps(nf4_block_absmax(layout, b));
    const uint8_t* codes = layout.codes + b * (kNf4BlockSize / 2);
    for (int half = 0; half < 2; ++half, out += 32) {
      // 16 bytes = 32 codes, element 2i in the high nibble of byte i, 2i+1 in the low nibble.
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + 16 * half));
      const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), low4);
      const __m128i lo = _mm_and_si128(raw, low4);
      const __m128i in_order[2] = {_mm_unpacklo_epi8(hi, lo), _mm_unpackhi_epi8(hi, lo)};
      for (int k = 0; k < 4; ++k) {
        const __m128i bytes = k % 2 ? high8(in_order[k / 2]) : in_order[k / 2];
        const __m256 v = nf4_lookup(_mm256_cvtepu8_epi32(bytes), table_lo, table_hi);
        _mm256_storeu_ps(out + 8 * k, _mm256_mul_ps(v, absmax));
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
