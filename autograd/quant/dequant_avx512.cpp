// AVX-512 dequantization of NF4, Q8_0, Q4_0, Q4_1, Q4_K and Q6_K to f32 or bf16: the fast path
// the GEMM uses on tiles of weight rows. Each kernel does the same f32 operations in the same order
// as its scalar reference (k_quants.cpp, q4.cpp, q8_0.cpp, nf4.cpp), so the f32 output is
// bit-identical and the bf16 output is the round-to-nearest-even of it. Per-block scales are
// decoded with scalar code shared with, or proven equal to, the references.
//
// Only called after quant::use_avx512() (AVX512F/BW/VL + BF16 + F16C at run time).
#include "autograd/quant/avx512_util.h"  // first: it includes <immintrin.h>
#include "autograd/quant/ggml_blocks.h"
#include "autograd/quant/nf4.h"
#include "autograd/quant/quant_kernels.h"

// Last: applies to the code below only (see the header).
#include "autograd/quant/fp_contract_off.h"

namespace loom::quant::avx512 {
namespace {

template <class Out>
void q8_0_blocks(const uint8_t* blocks, int64_t nblocks, Out* out) {
  for (int64_t b = 0; b < nblocks; ++b, out += kQk) {
    const uint8_t* p = blocks + b * sizeof(BlockQ8_0);
    const __m512 d = _mm512_set1_ps(f16_scalar(p));
    const __m128i q0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2));
    const __m128i q1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 18));
    store16(out, _mm512_mul_ps(i8x16_to_f32(q0), d));
    store16(out + 16, _mm512_mul_ps(i8x16_to_f32(q1), d));
  }
}

template <class Out>
void q4_0_blocks(const uint8_t* blocks, int64_t nblocks, Out* out) {
  const __m128i low4 = _mm_set1_epi8(0x0F);
  const __m128i eight = _mm_set1_epi8(8);
  for (int64_t b = 0; b < nblocks; ++b, out += kQk) {
    const uint8_t* p = blocks + b * sizeof(BlockQ4_0);
    const __m512 d = _mm512_set1_ps(f16_scalar(p));
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2));
    const __m128i lo = _mm_sub_epi8(_mm_and_si128(raw, low4), eight);
    const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), low4), eight);
    store16(out, _mm512_mul_ps(i8x16_to_f32(lo), d));
    store16(out + 16, _mm512_mul_ps(i8x16_to_f32(hi), d));
  }
}

template <class Out>
void q4_1_blocks(const uint8_t* blocks, int64_t nblocks, Out* out) {
  const __m128i low4 = _mm_set1_epi8(0x0F);
  for (int64_t b = 0; b < nblocks; ++b, out += kQk) {
    const uint8_t* p = blocks + b * sizeof(BlockQ4_1);
    const __m512 d = _mm512_set1_ps(f16_scalar(p));
    const __m512 m = _mm512_set1_ps(f16_scalar(p + 2));
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 4));
    const __m128i lo = _mm_and_si128(raw, low4);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), low4);
    store16(out, _mm512_add_ps(_mm512_mul_ps(u8x16_to_f32(lo), d), m));
    store16(out + 16, _mm512_add_ps(_mm512_mul_ps(u8x16_to_f32(hi), d), m));
  }
}

template <class Out>
void q4_k_blocks(const uint8_t* blocks, int64_t nblocks, Out* out) {
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
      const __m512 d_lo = _mm512_set1_ps(d * sc), m_lo = _mm512_set1_ps(dmin * m);
      k4_scale_min(scales, 2 * c + 1, sc, m);
      const __m512 d_hi = _mm512_set1_ps(d * sc), m_hi = _mm512_set1_ps(dmin * m);
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * c));
      const __m256i lo = _mm256_and_si256(raw, low4);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
      Out* o = out + 64 * c;
      store16(o,
              _mm512_sub_ps(_mm512_mul_ps(u8x16_to_f32(_mm256_castsi256_si128(lo)), d_lo), m_lo));
      store16(
          o + 16,
          _mm512_sub_ps(_mm512_mul_ps(u8x16_to_f32(_mm256_extracti128_si256(lo, 1)), d_lo), m_lo));
      store16(o + 32,
              _mm512_sub_ps(_mm512_mul_ps(u8x16_to_f32(_mm256_castsi256_si128(hi)), d_hi), m_hi));
      store16(
          o + 48,
          _mm512_sub_ps(_mm512_mul_ps(u8x16_to_f32(_mm256_extracti128_si256(hi, 1)), d_hi), m_hi));
    }
  }
}

template <class Out>
void q6_k_blocks(const uint8_t* blocks, int64_t nblocks, Out* out) {
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
      __m256i q[4];
      q[0] = _mm256_or_si256(_mm256_and_si256(ql_a, low4),
                             _mm256_slli_epi16(_mm256_and_si256(qh, low2), 4));
      q[1] =
          _mm256_or_si256(_mm256_and_si256(ql_b, low4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), low2), 4));
      q[2] =
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql_a, 4), low4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), low2), 4));
      q[3] =
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql_b, 4), low4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), low2), 4));
      for (int r = 0; r < 4; ++r) {
        const __m256i centered = _mm256_sub_epi8(q[r], bias);
        const int s = 8 * h + 2 * r;  // scale index of the first 16 of these 32 weights
        const __m512 d0 = _mm512_set1_ps(d * scales[s]);
        const __m512 d1 = _mm512_set1_ps(d * scales[s + 1]);
        Out* o = out + 128 * h + 32 * r;
        store16(o, _mm512_mul_ps(i8x16_to_f32(_mm256_castsi256_si128(centered)), d0));
        store16(o + 16, _mm512_mul_ps(i8x16_to_f32(_mm256_extracti128_si256(centered, 1)), d1));
      }
    }
  }
}

template <class Out>
void nf4_range(const uint8_t* data, int64_t n_total, int64_t first, int64_t count, Out* out) {
  const Nf4Layout layout = nf4_layout(data, n_total);
  const __m512 table = _mm512_loadu_ps(kNf4Codes.data());
  const __m128i low4 = _mm_set1_epi8(0x0F);
  for (int64_t b = first / kNf4BlockSize; b < (first + count) / kNf4BlockSize; ++b) {
    const __m512 absmax = _mm512_set1_ps(nf4_block_absmax(layout, b));
    const uint8_t* codes = layout.codes + b * (kNf4BlockSize / 2);
    for (int half = 0; half < 2; ++half, out += 32) {
      // 16 bytes = 32 codes, element 2i in the high nibble of byte i, 2i+1 in the low nibble.
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + 16 * half));
      const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), low4);
      const __m128i lo = _mm_and_si128(raw, low4);
      const __m512i idx0 = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(hi, lo));
      const __m512i idx1 = _mm512_cvtepu8_epi32(_mm_unpackhi_epi8(hi, lo));
      store16(out, _mm512_mul_ps(_mm512_permutexvar_ps(idx0, table), absmax));
      store16(out + 16, _mm512_mul_ps(_mm512_permutexvar_ps(idx1, table), absmax));
    }
  }
}

}  // namespace

void dequant_q8_0(const uint8_t* blocks, int64_t nblocks, float* out) {
  q8_0_blocks(blocks, nblocks, out);
}
void dequant_q8_0(const uint8_t* blocks, int64_t nblocks, bf16_t* out) {
  q8_0_blocks(blocks, nblocks, out);
}
void dequant_q4_0(const uint8_t* blocks, int64_t nblocks, float* out) {
  q4_0_blocks(blocks, nblocks, out);
}
void dequant_q4_0(const uint8_t* blocks, int64_t nblocks, bf16_t* out) {
  q4_0_blocks(blocks, nblocks, out);
}
void dequant_q4_1(const uint8_t* blocks, int64_t nblocks, float* out) {
  q4_1_blocks(blocks, nblocks, out);
}
void dequant_q4_1(const uint8_t* blocks, int64_t nblocks, bf16_t* out) {
  q4_1_blocks(blocks, nblocks, out);
}
void dequant_q4_k(const uint8_t* blocks, int64_t nblocks, float* out) {
  q4_k_blocks(blocks, nblocks, out);
}
void dequant_q4_k(const uint8_t* blocks, int64_t nblocks, bf16_t* out) {
  q4_k_blocks(blocks, nblocks, out);
}
void dequant_q6_k(const uint8_t* blocks, int64_t nblocks, float* out) {
  q6_k_blocks(blocks, nblocks, out);
}
void dequant_q6_k(const uint8_t* blocks, int64_t nblocks, bf16_t* out) {
  q6_k_blocks(blocks, nblocks, out);
}

void dequant_nf4(const uint8_t* data, int64_t n_total, int64_t first, int64_t count, float* out) {
  nf4_range(data, n_total, first, count, out);
}
void dequant_nf4(const uint8_t* data, int64_t n_total, int64_t first, int64_t count, bf16_t* out) {
  nf4_range(data, n_total, first, count, out);
}

}  // namespace loom::quant::avx512
