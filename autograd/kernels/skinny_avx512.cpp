// The skinny LoRA products (skinny.h) with AVX-512 intrinsics: each output row's R values (or
// each reduced row's) are one or two zmm accumulators per row, the large operand is read once
// in place, one float broadcast at a time. Every output element is one thread's sequential sum
// over the reduction, so results do not depend on the thread count.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "autograd/kernels/skinny.h"

namespace loom::detail {
namespace {

// Lanes [0, n) of a 16-float vector (n >= 16: all).
inline __mmask16 lane_mask(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1);
}

// Columns [r0, r0 + 16 * NC) of a result in NC vectors, the last one masked to `last`.
template <int NC>
inline __mmask16 chunk_mask(int j, __mmask16 last) {
  return j == NC - 1 ? last : static_cast<__mmask16>(0xFFFF);
}

// out rows [m0, m0 + MB), columns [r0, r0 + 16 NC) of alpha * X . F.
template <int MB, int NC>
void product_block(int64_t m0, int64_t K, int64_t R, int64_t r0, __mmask16 last, float alpha,
                   const float* X, int64_t ldx, const float* F, float* out, int64_t ldo) {
  __m512 acc[MB][NC];
#pragma GCC unroll 16
  for (int i = 0; i < MB; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NC; ++j) acc[i][j] = _mm512_setzero_ps();
  const float* x = X + m0 * ldx;
  for (int64_t k = 0; k < K; ++k) {
    __m512 f[NC];
#pragma GCC unroll 4
    for (int j = 0; j < NC; ++j)
      f[j] = _mm512_maskz_loadu_ps(chunk_mask<NC>(j, last), F + k * R + r0 + 16 * j);
#pragma GCC unroll 16
    for (int i = 0; i < MB; ++i) {
      const __m512 xv = _mm512_set1_ps(x[i * ldx + k]);
#pragma GCC unroll 4
      for (int j = 0; j < NC; ++j) acc[i][j] = _mm512_fmadd_ps(xv, f[j], acc[i][j]);
    }
  }
  const __m512 a = _mm512_set1_ps(alpha);
#pragma GCC unroll 16
  for (int i = 0; i < MB; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NC; ++j)
      _mm512_mask_storeu_ps(out + (m0 + i) * ldo + r0 + 16 * j, chunk_mask<NC>(j, last),
                            _mm512_mul_ps(acc[i][j], a));
}

template <int MB, int NC>
void product_rows(int64_t m_begin, int64_t m_end, int64_t K, int64_t R, int64_t r0, __mmask16 last,
                  float alpha, const float* X, int64_t ldx, const float* F, float* out,
                  int64_t ldo) {
  int64_t m = m_begin;
  for (; m + MB <= m_end; m += MB)
    product_block<MB, NC>(m, K, R, r0, last, alpha, X, ldx, F, out, ldo);
  for (; m < m_end; ++m) product_block<1, NC>(m, K, R, r0, last, alpha, X, ldx, F, out, ldo);
}

// out rows [k0, k0 + KB), columns [r0, r0 + 16 NC) of X^T . G over rows [m0, m1) of X and G,
// added to what out holds unless `fresh`, then scaled by out_scale.
template <int KB, int NC>
void reduce_block(int64_t m0, int64_t m1, bool fresh, float out_scale, int64_t k0, int64_t R,
                  int64_t r0, __mmask16 last, const float* X, int64_t ldx, const float* G,
                  int64_t ldg, float* out) {
  __m512 acc[KB][NC];
#pragma GCC unroll 16
  for (int i = 0; i < KB; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NC; ++j)
      acc[i][j] =
          fresh ? _mm512_setzero_ps()
                : _mm512_maskz_loadu_ps(chunk_mask<NC>(j, last), out + (k0 + i) * R + r0 + 16 * j);
  for (int64_t m = m0; m < m1; ++m) {
    __m512 g[NC];
#pragma GCC unroll 4
    for (int j = 0; j < NC; ++j)
      g[j] = _mm512_maskz_loadu_ps(chunk_mask<NC>(j, last), G + m * ldg + r0 + 16 * j);
    const float* x = X + m * ldx + k0;
#pragma GCC unroll 16
    for (int i = 0; i < KB; ++i) {
      const __m512 xv = _mm512_set1_ps(x[i]);
#pragma GCC unroll 4
      for (int j = 0; j < NC; ++j) acc[i][j] = _mm512_fmadd_ps(xv, g[j], acc[i][j]);
    }
  }
  const __m512 a = _mm512_set1_ps(out_scale);
#pragma GCC unroll 16
  for (int i = 0; i < KB; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NC; ++j)
      _mm512_mask_storeu_ps(out + (k0 + i) * R + r0 + 16 * j, chunk_mask<NC>(j, last),
                            _mm512_mul_ps(acc[i][j], a));
}

// Rows of X are taken kRowChunk at a time, each chunk swept over all of this thread's columns
// (and all column chunks of the result) while it sits in L2: sweeping one 64-byte column strip
// down all M rows (thousands of pages) ran at a third of the speed. Each block of a chunk reads
// one line of every row, a stream per row for the hardware prefetcher; at 64 rows a wide X
// (K = 3072: dB of gate/up) ran at 3.4-4.1 ms for M = 2048, R = 16, at 32 rows 1.6-1.8 ms (K =
// 1536: 1.7-2.1 -> 0.9-1.0 ms; K = 576 within noise of 64).
constexpr int64_t kRowChunk = kSkinnyRowChunk;

// Result rows [k_begin, k_end), columns [r0, r0 + 16 NC), over X's rows [m0, m1) (reduce_block).
template <int KB, int NC>
void reduce_cols(int64_t k_begin, int64_t k_end, int64_t m0, int64_t m1, bool fresh,
                 float out_scale, int64_t R, int64_t r0, __mmask16 last, const float* X,
                 int64_t ldx, const float* G, int64_t ldg, float* out) {
  int64_t k = k_begin;
  for (; k + KB <= k_end; k += KB)
    reduce_block<KB, NC>(m0, m1, fresh, out_scale, k, R, r0, last, X, ldx, G, ldg, out);
  for (; k < k_end; ++k)
    reduce_block<1, NC>(m0, m1, fresh, out_scale, k, R, r0, last, X, ldx, G, ldg, out);
}

// All R columns of result rows [k_begin, k_end) over X's rows [m0, m1): 8 reduced rows of two
// vectors or 16 of one (16 accumulators, 64-byte runs of each X row).
void reduce_all_columns(int64_t k_begin, int64_t k_end, int64_t m0, int64_t m1, bool fresh,
                        float out_scale, int64_t R, const float* X, int64_t ldx, const float* G,
                        int64_t ldg, float* out) {
  for (int64_t r0 = 0; r0 < R; r0 += 32) {
    const int64_t rem = R - r0;
    if (rem > 16)
      reduce_cols<8, 2>(k_begin, k_end, m0, m1, fresh, out_scale, R, r0, lane_mask(rem - 16), X,
                        ldx, G, ldg, out);
    else
      reduce_cols<16, 1>(k_begin, k_end, m0, m1, fresh, out_scale, R, r0, lane_mask(rem), X, ldx, G,
                         ldg, out);
  }
}

// All R columns of output rows [m0, m1): chunks of 32 columns (two vectors: 12 accumulators for
// 6 rows) or a last one of <= 16 (8 rows of one vector).
void product_all_columns(int64_t m0, int64_t m1, int64_t K, int64_t R, float alpha, const float* X,
                         int64_t ldx, const float* F, float* out, int64_t ldo) {
  for (int64_t r0 = 0; r0 < R; r0 += 32) {
    const int64_t rem = R - r0;
    if (rem > 16)
      product_rows<6, 2>(m0, m1, K, R, r0, lane_mask(rem - 16), alpha, X, ldx, F, out, ldo);
    else
      product_rows<8, 1>(m0, m1, K, R, r0, lane_mask(rem), alpha, X, ldx, F, out, ldo);
  }
}

// Runs fn(begin, end) over thread shares of [0, n), each share a multiple of `unit` but the
// last.
template <typename Fn>
void split(int64_t n, int64_t unit, int threads, Fn&& fn) {
  const int64_t units = (n + unit - 1) / unit;
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t begin = std::min(n, units * t / nt * unit);
    const int64_t end = std::min(n, units * (t + 1) / nt * unit);
    if (end > begin) fn(begin, end);
  }
}

}  // namespace

void skinny_product_avx512(int64_t M, int64_t K, int64_t R, float alpha, const float* X,
                           int64_t ldx, const float* F, float* out, int64_t ldo, int threads) {
  split(M, 8, threads, [&](int64_t m_begin, int64_t m_end) {
    // Every column chunk of a 24-row band before the next band, so a rank above 32 reads X
    // once from memory.
    for (int64_t m0 = m_begin; m0 < m_end; m0 += 24)
      product_all_columns(m0, std::min(m_end, m0 + 24), K, R, alpha, X, ldx, F, out, ldo);
  });
}

void skinny_product_rows_avx512(int64_t m_begin, int64_t m_end, int64_t K, int64_t R, float alpha,
                                const float* X, int64_t ldx, const float* F, float* out,
                                int64_t ldo) {
  product_all_columns(m_begin, m_end, K, R, alpha, X, ldx, F, out, ldo);
}

void skinny_reduce_avx512(int64_t M, int64_t K, int64_t R, float alpha, const float* X, int64_t ldx,
                          const float* G, int64_t ldg, float* out, int threads) {
  split(K, 16, threads, [&](int64_t k0, int64_t k1) {
    // M = 0 takes one empty chunk (the result is zeros).
    for (int64_t m0 = 0; m0 < std::max<int64_t>(M, 1); m0 += kRowChunk) {
      const int64_t m1 = std::min(M, m0 + kRowChunk);
      reduce_all_columns(k0, k1, m0, m1, m0 == 0, m1 == M ? alpha : 1.0f, R, X, ldx, G, ldg, out);
    }
  });
}

void skinny_product_reduce_rows_avx512(int64_t m_begin, int64_t m_end, int64_t K, int64_t R,
                                       const float* X, int64_t ldx, float alpha_t, const float* F,
                                       float* t, int64_t ldt, const float* G, int64_t ldg,
                                       float* part, void (*after_chunk)(void*, int64_t, int64_t),
                                       void* ctx) {
  if (m_end == m_begin) std::fill_n(part, K * R, 0.0f);
  // Each chunk of rows: its rows of t, then its share of the reduction while it sits in L2.
  for (int64_t m0 = m_begin; m0 < m_end; m0 += kRowChunk) {
    const int64_t m1 = std::min(m_end, m0 + kRowChunk);
    product_all_columns(m0, m1, K, R, alpha_t, X, ldx, F, t, ldt);
    reduce_all_columns(0, K, m0, m1, m0 == m_begin, 1.0f, R, X, ldx, G, ldg, part);
    if (after_chunk) after_chunk(ctx, m0, m1);
  }
}

void skinny_product_reduce_avx512(int64_t M, int64_t K, int64_t R, const float* X, int64_t ldx,
                                  float alpha_t, const float* F, float* t, int64_t ldt,
                                  float alpha_r, const float* G, int64_t ldg, float* out,
                                  int threads) {
  // Thread i takes rows in whole chunks; its part of the reduction goes to out (thread 0) or to
  // its own partial, added to out in thread order at the end.
  std::vector<float> partials(static_cast<size_t>(std::max(threads - 1, 0) * K * R));
#pragma omp parallel num_threads(threads)
  {
    const int i = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t chunks = (M + kRowChunk - 1) / kRowChunk;
    const int64_t m_begin = std::min(M, chunks * i / nt * kRowChunk);
    const int64_t m_end = std::min(M, chunks * (i + 1) / nt * kRowChunk);
    float* part = i == 0 ? out : partials.data() + (i - 1) * K * R;
    skinny_product_reduce_rows_avx512(m_begin, m_end, K, R, X, ldx, alpha_t, F, t, ldt, G, ldg,
                                      part, nullptr, nullptr);
#pragma omp barrier
    // The partials added into out and scaled, a share of its elements per thread.
    const int64_t n = K * R, e0 = n * i / nt, e1 = n * (i + 1) / nt;
    for (int64_t e = e0; e < e1; ++e) {
      float sum = out[e];
      for (int j = 1; j < nt; ++j) sum += partials[static_cast<size_t>((j - 1) * n + e)];
      out[e] = alpha_r * sum;
    }
  }
}

}  // namespace loom::detail
