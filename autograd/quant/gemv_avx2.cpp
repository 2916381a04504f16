// AVX2 products of one activation row with NF4 and GGUF Q8_0 / Q4_0 / Q4_1 / Q4_K / Q6_K weight
// rows, read straight from the blocks: y[r] = sum_k W[r, k] x[k] for a range of rows. What
// decoding (one token, M = 1) needs: dequantizing every weight to f32 and then running sgemv over
// it wrote and read each weight twice more than this. Per block of 32 (NF4: 64), sum_i q_i x_i
// is formed in f32 (8 lanes, fused multiply-adds) and scaled by the block's d once (K-quants: per
// sub-block, d times its scale; NF4: the code values times the block's absmax); the offsets of
// Q4_1 and Q4_K add m * sum_i x_i, with the 32-element sums of x formed once per call. The result
// equals sum_k W[r, k] x[k] with W as the dequantizers give it, up to the order of the f32
// additions (tested against the dequantized product in tests/test_quant.cpp).
//
// Only called after quant::use_avx2() (AVX2 + FMA + F16C at run time). Unlike the dequantizers
// this file does not include fp_contract_off.h: it defines no storage format, and its products
// are fused multiply-adds on purpose.
#include <immintrin.h>

#include <cstdint>
#include <vector>

#include "autograd/quant/avx2_util.h"
#include "autograd/quant/ggml_blocks.h"
#include "autograd/quant/nf4.h"
#include "autograd/quant/quant_kernels.h"

namespace loom::quant::avx2 {
namespace {

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
    __m256 s = dot16(i8x8_to_f32(q0), i8x8_to_f32(high8(q0)), x, _mm256_setzero_ps());
    s = dot16(i8x8_to_f32(q1), i8x8_to_f32(high8(q1)), x + 16, s);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_scalar(p)), s, acc);
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
    __m256 s = dot16(i8x8_to_f32(lo), i8x8_to_f32(high8(lo)), x, _mm256_setzero_ps());
    s = dot16(i8x8_to_f32(hi), i8x8_to_f32(high8(hi)), x + 16, s);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_scalar(p)), s, acc);
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
    __m256 s = dot16(u8x8_to_f32(lo), u8x8_to_f32(high8(lo)), x, _mm256_setzero_ps());
    s = dot16(u8x8_to_f32(hi), u8x8_to_f32(high8(hi)), x + 16, s);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_scalar(p)), s, acc);
    offsets += f16_scalar(p + 2) * xsum[b];
  }
  return hsum(acc) + offsets;
}

// Q4_K: per 64-element chunk c of a 256-block, sub-block 2c in the low nibbles (scale d*sc,
// offset -dmin*m) and 2c+1 in the high ones; xsum holds x's sums over 32-element sub-blocks.
float row_q4_k(const uint8_t* row, int64_t nblocks, const float* x, const float* xsum) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  __m256 acc = _mm256_setzero_ps();
  float offsets = 0.0f;
  for (int64_t b = 0; b < nblocks; ++b, x += kQkK, xsum += kQkK / kQk) {
    const uint8_t* p = row + b * sizeof(BlockQ4_K);
    const float d = f16_scalar(p), dmin = f16_scalar(p + 2);
    const uint8_t* scales = p + 4;
    const uint8_t* qs = p + 16;
    for (int c = 0; c < 4; ++c) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * c));
      const __m256i lo = _mm256_and_si256(raw, low4);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
      const __m256i sub[2] = {lo, hi};
      for (int k = 0; k < 2; ++k) {
        uint8_t sc, m;
        k4_scale_min(scales, 2 * c + k, sc, m);
        const float* xs = x + 64 * c + 32 * k;
        const __m128i q0 = _mm256_castsi256_si128(sub[k]), q1 = _mm256_extracti128_si256(sub[k], 1);
        __m256 t = dot16(u8x8_to_f32(q0), u8x8_to_f32(high8(q0)), xs, _mm256_setzero_ps());
        t = dot16(u8x8_to_f32(q1), u8x8_to_f32(high8(q1)), xs + 16, t);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * sc), t, acc);
        offsets -= dmin * m * xsum[2 * c + k];
      }
    }
  }
  return hsum(acc) + offsets;
}

// Q6_K: halves of 128 (ql 64 bytes, qh 32 bytes), quarters of 32 values centered by 32, a
// scale d*scales[s] per 16.
float row_q6_k(const uint8_t* row, int64_t nblocks, const float* x) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nblocks; ++b, x += kQkK) {
    const uint8_t* p = row + b * sizeof(BlockQ6_K);
    const auto* scales = reinterpret_cast<const int8_t*>(p + 192);
    const float d = f16_scalar(p + 208);
    for (int h = 0; h < 2; ++h) {
      const Q6kHalf half(p, h);
      for (int r = 0; r < 4; ++r) {
        const __m256i centered = half.centered(r);
        const int s = 8 * h + 2 * r;
        const float* xs = x + 128 * h + 32 * r;
        const __m128i c0 = _mm256_castsi256_si128(centered);
        const __m128i c1 = _mm256_extracti128_si256(centered, 1);
        const __m256 t0 = dot16(i8x8_to_f32(c0), i8x8_to_f32(high8(c0)), xs, _mm256_setzero_ps());
        const __m256 t1 =
            dot16(i8x8_to_f32(c1), i8x8_to_f32(high8(c1)), xs + 16, _mm256_setzero_ps());
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * scales[s]), t0, acc);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * scales[s + 1]), t1, acc);
      }
    }
  }
  return hsum(acc);
}

// NF4: per block of 64, the codes' table values (looked up 8 lanes at a time) times x, scaled
// by the block's absmax. Codes: element 2i in the high nibble of byte i, 2i + 1 in the low one.
float row_nf4(const Nf4Layout& layout, int64_t first_block, int64_t nblocks, const float* x) {
  const __m256 table_lo = nf4_table_lo(), table_hi = nf4_table_hi();
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = first_block; b < first_block + nblocks; ++b) {
    const uint8_t* codes = layout.codes + b * (kNf4BlockSize / 2);
    __m256 s = _mm256_setzero_ps();
    for (int half = 0; half < 2; ++half, x += 32) {
      __m128i in_order[2];
      nf4_codes_in_order(codes + 16 * half, in_order);
      for (int k = 0; k < 4; ++k) {
        const __m128i bytes = k % 2 ? high8(in_order[k / 2]) : in_order[k / 2];
        s = _mm256_fmadd_ps(nf4_lookup(bytes, table_lo, table_hi), _mm256_loadu_ps(x + 8 * k), s);
      }
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(nf4_block_absmax(layout, b)), s, acc);
  }
  return hsum(acc);
}

}  // namespace

bool gemv_rows(DType t, const uint8_t* data, int64_t rows, int64_t cols, int64_t row_begin,
               int64_t row_end, const float* x, float* y, bool accumulate) {
  if (t == DType::NF4) {
    const Nf4Layout layout = nf4_layout(data, rows * cols);
    const int64_t per_row = cols / kNf4BlockSize;
    for (int64_t r = row_begin; r < row_end; ++r) {
      const float v = row_nf4(layout, r * per_row, per_row, x);
      y[r] = accumulate ? y[r] + v : v;
    }
    return true;
  }
  size_t block_bytes = 0;
  int64_t block_elems = kQk;
  switch (t) {
    case DType::Q8_0:
      block_bytes = sizeof(BlockQ8_0);
      break;
    case DType::Q4_0:
      block_bytes = sizeof(BlockQ4_0);
      break;
    case DType::Q4_1:
      block_bytes = sizeof(BlockQ4_1);
      break;
    case DType::Q4_K:
      block_bytes = sizeof(BlockQ4_K);
      block_elems = kQkK;
      break;
    case DType::Q6_K:
      block_bytes = sizeof(BlockQ6_K);
      block_elems = kQkK;
      break;
    default:
      return false;
  }
  const int64_t nblocks = cols / block_elems;
  const size_t row_bytes = static_cast<size_t>(nblocks) * block_bytes;
  // Sums of x over each 32 elements, for the formats with a per-block offset.
  std::vector<float> xsum;
  if (t == DType::Q4_1 || t == DType::Q4_K) {
    xsum.resize(static_cast<size_t>(cols / kQk));
    for (int64_t b = 0; b < cols / kQk; ++b) {
      const float* xb = x + b * kQk;
      const __m256 s =
          _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(xb), _mm256_loadu_ps(xb + 8)),
                        _mm256_add_ps(_mm256_loadu_ps(xb + 16), _mm256_loadu_ps(xb + 24)));
      xsum[static_cast<size_t>(b)] = hsum(s);
    }
  }
  for (int64_t r = row_begin; r < row_end; ++r) {
    const uint8_t* row = data + static_cast<size_t>(r) * row_bytes;
    float v = 0.0f;
    switch (t) {
      case DType::Q8_0:
        v = row_q8_0(row, nblocks, x);
        break;
      case DType::Q4_0:
        v = row_q4_0(row, nblocks, x);
        break;
      case DType::Q4_1:
        v = row_q4_1(row, nblocks, x, xsum.data());
        break;
      case DType::Q4_K:
        v = row_q4_k(row, nblocks, x, xsum.data());
        break;
      default:
        v = row_q6_k(row, nblocks, x);
        break;
    }
    y[r] = accumulate ? y[r] + v : v;
  }
  return true;
}

}  // namespace loom::quant::avx2
