// The f32 products of a LoRA projection with its rank-R side: one operand is an activation
// matrix [M x K] (M = tokens, K = features, both large), the other has only R columns (R = the
// rank, 4..64). OpenBLAS packs the large operand before each such product -- a full copy of the
// activations for a few flops per element -- so these run unpacked: the large operand is read
// once, straight from where it lies, and the R-wide results stay in registers.
#pragma once

#include <cstdint>

namespace loom {

// out[M x R] (row stride ldo) = alpha * X[M x K] (row stride ldx) . F[K x R] (contiguous).
// (LoRA: u = x A^T with F = A^T, t = dY B with F = B.)
void skinny_product(int64_t M, int64_t K, int64_t R, float alpha, const float* X, int64_t ldx,
                    const float* F, float* out, int64_t ldo);

// out[K x R] (contiguous) = alpha * X[M x K]^T (row stride ldx) . G[M x R] (row stride ldg):
// a sum over the M rows. (LoRA: dB = s dY^T u; dA^T = s x^T t.)
void skinny_reduce(int64_t M, int64_t K, int64_t R, float alpha, const float* X, int64_t ldx,
                   const float* G, int64_t ldg, float* out);

// Both over one X in a single pass: t[M x R] (row stride ldt) = alpha_t * X . F and
// out[K x R] = alpha_r * X^T . G (G [M x R], row stride ldg). (LoRA's backward: t = dY B and
// dB = s dY^T u read dY once.) The reduction is summed per thread over whole chunks of rows,
// then across threads in order: deterministic for a thread count.
void skinny_product_reduce(int64_t M, int64_t K, int64_t R, const float* X, int64_t ldx,
                           float alpha_t, const float* F, float* t, int64_t ldt, float alpha_r,
                           const float* G, int64_t ldg, float* out);

namespace detail {
// The AVX-512 kernels behind them (skinny_avx512.cpp; need AVX512F), on `threads` OpenMP
// threads; skinny_product / skinny_reduce choose them or sgemm.
void skinny_product_avx512(int64_t M, int64_t K, int64_t R, float alpha, const float* X,
                           int64_t ldx, const float* F, float* out, int64_t ldo, int threads);
void skinny_reduce_avx512(int64_t M, int64_t K, int64_t R, float alpha, const float* X, int64_t ldx,
                          const float* G, int64_t ldg, float* out, int threads);
// skinny_product_avx512's rows [m_begin, m_end) on the calling thread (the same bits: each
// output row is its own sequential sum).
void skinny_product_rows_avx512(int64_t m_begin, int64_t m_end, int64_t K, int64_t R, float alpha,
                                const float* X, int64_t ldx, const float* F, float* out,
                                int64_t ldo);
// skinny_product_reduce's work for rows [m_begin, m_end) on the calling thread, in the same
// 32-row chunks (kSkinnyRowChunk): t's rows, and X^T G over those rows into part [K x R]
// (overwritten, unscaled). Each chunk calls after_chunk(m0, m1) while its rows sit in L2.
constexpr int64_t kSkinnyRowChunk = 32;
void skinny_product_reduce_rows_avx512(int64_t m_begin, int64_t m_end, int64_t K, int64_t R,
                                       const float* X, int64_t ldx, float alpha_t, const float* F,
                                       float* t, int64_t ldt, const float* G, int64_t ldg,
                                       float* part, void (*after_chunk)(void*, int64_t, int64_t),
                                       void* ctx);
void skinny_product_reduce_avx512(int64_t M, int64_t K, int64_t R, const float* X, int64_t ldx,
                                  float alpha_t, const float* F, float* t, int64_t ldt,
                                  float alpha_r, const float* G, int64_t ldg, float* out,
                                  int threads);
}  // namespace detail

}  // namespace loom
