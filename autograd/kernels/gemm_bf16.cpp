// The bf16 route of the linear-layer GEMM (CPUs with AVX512_BF16): activations are rounded to
// bf16 once per call (forward) or per tile (input gradient), weights that are not bf16 are
// dequantized a tile of rows at a time into bf16 scratch, and oneDNN's bf16 matmul accumulates
// in f32 straight into the strided f32 output.
#include <omp.h>

#include <algorithm>

#include "autograd/kernels/gemm_internal.h"

namespace loom::detail {
namespace {

// Below this many elements of work a step runs on the calling thread.
constexpr int64_t kParallelMin = 1 << 14;

// Share [0, n) of thread t among nt threads.
inline int64_t share_begin(int64_t n, int t, int nt) { return n * t / nt; }

// One parallel step before a tile's matmul: rows [0, M) of src (width columns, row stride
// ld_src) rounded into dst (contiguous, width columns), and -- when wtile is non-null -- rows
// [n0, n0 + rows) of W dequantized into wtile. Each thread takes its share of both.
void prepare(const float* src, int64_t M, int64_t width, int64_t ld_src, bf16_t* dst,
             const WeightView& W, int64_t n0, int64_t rows, bf16_t* wtile) {
  const int64_t K = W.cols;
  const int64_t work = M * width + (wtile ? rows * K : 0);
  if (work == 0) return;
  const int threads = work < kParallelMin ? 1 : omp_get_max_threads();
  parallel_run(threads, [&](int t, int nt) {
    const int64_t m0 = share_begin(M, t, nt), m1 = share_begin(M, t + 1, nt);
    for (int64_t m = m0; m < m1; ++m) convert_f32_to_bf16(src + m * ld_src, dst + m * width, width);
    if (wtile) {
      const int64_t r0 = row_share_begin(W, rows, t, nt), r1 = row_share_begin(W, rows, t + 1, nt);
      if (r1 > r0)
        dequantize_bf16(W.dtype, W.data, W.rows * K, (n0 + r0) * K, (r1 - r0) * K,
                        wtile + r0 * K);
    }
  });
}

// Y[m, 0 : cols] (+)= src[m, :] for m in [0, M) (src dense [M x cols]), rows split over the
// threads.
void copy_columns(const float* src, int64_t M, int64_t cols, float* Y, int64_t ldy,
                  bool accumulate) {
  const int threads = M * cols < kParallelMin ? 1 : omp_get_max_threads();
  parallel_run(threads, [&](int t, int nt) {
    const int64_t m0 = share_begin(M, t, nt), m1 = share_begin(M, t + 1, nt);
    store_rows(src + m0 * cols, m1 - m0, cols, Y + m0 * ldy, ldy, accumulate);
  });
}

}  // namespace

void forward_bf16(const float* X, int64_t M, int64_t ldx, const WeightView& W, float* Y,
                  int64_t ldy, bool accumulate, int64_t tile_rows) {
  const int64_t N = W.rows, K = W.cols;
  bf16_t* xb = scratch_bf16(0, M * K);
  // A bf16 W is used in place, still a tile of rows at a time: measured faster than one matmul
  // over a large N (1017 vs 919 GFLOP/s at 576 -> 49152, M = 2048), the same for small N.
  const bool direct = W.dtype == DType::BF16;
  bf16_t* tile = direct ? nullptr : scratch_bf16(1, std::min(tile_rows, N) * K);
  const bool dense_out = onednn_uses_amx() && tile_rows < N;
  float* out = dense_out ? scratch_f32(2, M * std::min(tile_rows, N)) : nullptr;
  for (int64_t n0 = 0; n0 < N; n0 += tile_rows) {
    const int64_t rows = std::min(tile_rows, N - n0);
    // X is rounded together with the first tile's dequantization (one parallel region).
    prepare(X, n0 == 0 ? M : 0, K, ldx, xb, W, n0, rows, tile);
    const bf16_t* wt = direct ? static_cast<const bf16_t*>(W.data) + n0 * K : tile;
    // Y[:, n0 : n0+rows] (+)= X . W[n0 : n0+rows, :]^T; the tile [rows x K] row-major is read
    // as its transpose [K x rows]: strides (1, K).
    if (dense_out) {
      // On AMX a tile narrower than Y runs into dense scratch (oneDNN's AMX kernels want
      // ldc == N) and is copied into Y by all threads.
      dnnl_matmul_bf16(M, rows, K, xb, K, wt, 1, K, out, rows, false);
      copy_columns(out, M, rows, Y + n0, ldy, accumulate);
    } else {
      dnnl_matmul_bf16(M, rows, K, xb, K, wt, 1, K, Y + n0, ldy, accumulate);
    }
  }
}

void backward_input_bf16(const float* dY, int64_t M, int64_t lddy, const WeightView& W, float* dX,
                         int64_t lddx, bool accumulate, int64_t tile_rows) {
  const int64_t N = W.rows, K = W.cols;
  const int64_t max_rows = std::min(tile_rows, N);
  // dY is rounded a tile of columns at a time: an [M x N] bf16 copy of the lm_head gradient
  // would cost M * 49152 * 2 bytes.
  bf16_t* dyb = scratch_bf16(0, M * max_rows);
  const bool direct = W.dtype == DType::BF16;
  bf16_t* tile = direct ? nullptr : scratch_bf16(1, max_rows * K);
  for (int64_t n0 = 0; n0 < N; n0 += tile_rows) {
    const int64_t rows = std::min(tile_rows, N - n0);
    prepare(dY + n0, M, rows, lddy, dyb, W, n0, rows, tile);
    const bf16_t* wt = direct ? static_cast<const bf16_t*>(W.data) + n0 * K : tile;
    // dX (+)= dY[:, n0 : n0+rows] . W[n0 : n0+rows, :]; the first tile overwrites unless
    // accumulating. The tile is a plain row-major [rows x K] matrix: strides (K, 1).
    dnnl_matmul_bf16(M, K, rows, dyb, rows, wt, K, 1, dX, lddx, n0 > 0 || accumulate);
  }
}

}  // namespace loom::detail
