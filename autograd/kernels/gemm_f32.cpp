// The f32 route of the linear-layer GEMM: OpenBLAS sgemm on f32 weights directly; other storage
// dtypes are dequantized a tile of rows at a time into f32 scratch and multiplied tile by tile.
// It is both Precision::F32 and the portable fallback for CPUs without AVX512_BF16.
#include <cblas.h>

#include <algorithm>

#include "autograd/kernels/gemm_internal.h"

namespace loom::detail {

void forward_f32(const float* X, int64_t M, int64_t ldx, const WeightView& W, float* Y,
                 int64_t ldy, bool accumulate, int64_t tile_rows) {
  const int64_t N = W.rows, K = W.cols;
  const float beta = accumulate ? 1.0f : 0.0f;
  if (W.dtype == DType::F32) {
    sgemm(false, true, M, N, K, 1.0f, X, ldx, static_cast<const float*>(W.data), K, beta, Y, ldy);
    return;
  }
  if (M == 1 && row_kernel_fits(W)) {
    // One row (a decoded token) on block formats with a direct kernel (rows of whole blocks):
    // each thread takes a share of the rows and multiplies them with x straight from their
    // blocks -- one OpenMP region for the whole matrix, no f32 copy of the weights.
    const int threads = N * K < kParallelDequantMin ? 1 : omp_get_max_threads();
    parallel_run(threads, [&](int t, int nt) {
      const int64_t begin = N * t / nt, end = N * (t + 1) / nt;
      if (end > begin) gemv_rows(W.dtype, W.data, N, K, begin, end, X, Y, accumulate);
    });
    return;
  }
  float* tile = scratch_f32(0, std::min(tile_rows, N) * K);
  if (M == 1) {
    // One row (a decoded token): each thread dequantizes its share of the tile's rows and
    // multiplies them with sgemv while they are in its cache -- one OpenMP region per tile, and
    // no packing of the tile, which sgemm would copy once more for a single row.
    use_single_threaded_blas();
    for (int64_t n0 = 0; n0 < N; n0 += tile_rows) {
      const int64_t rows = std::min(tile_rows, N - n0);
      const int threads = rows * K < kParallelDequantMin ? 1 : omp_get_max_threads();
      parallel_run(threads, [&](int t, int nt) {
        const int64_t begin = row_share_begin(W, rows, t, nt);
        const int64_t end = row_share_begin(W, rows, t + 1, nt);
        if (end <= begin) return;
        float* part = tile + begin * K;
        dequantize(W.dtype, W.data, N * K, (n0 + begin) * K, (end - begin) * K, part);
        cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(end - begin),
                    static_cast<int>(K), 1.0f, part, static_cast<int>(K), X, 1, beta,
                    Y + n0 + begin, 1);
      });
    }
    return;
  }
  for (int64_t n0 = 0; n0 < N; n0 += tile_rows) {
    const int64_t rows = std::min(tile_rows, N - n0);
    dequantize_rows_f32(W, n0, rows, tile);
    // Y[:, n0 : n0+rows] = X . tile^T
    sgemm(false, true, M, rows, K, 1.0f, X, ldx, tile, K, beta, Y + n0, ldy);
  }
}

void backward_input_f32(const float* dY, int64_t M, int64_t lddy, const WeightView& W, float* dX,
                        int64_t lddx, bool accumulate, int64_t tile_rows) {
  const int64_t N = W.rows, K = W.cols;
  if (W.dtype == DType::F32) {
    sgemm(false, false, M, K, N, 1.0f, dY, lddy, static_cast<const float*>(W.data), K,
          accumulate ? 1.0f : 0.0f, dX, lddx);
    return;
  }
  float* tile = scratch_f32(0, std::min(tile_rows, N) * K);
  for (int64_t n0 = 0; n0 < N; n0 += tile_rows) {
    const int64_t rows = std::min(tile_rows, N - n0);
    dequantize_rows_f32(W, n0, rows, tile);
    // dX (+)= dY[:, n0 : n0+rows] . tile; the first tile overwrites unless accumulating.
    const float beta = (n0 > 0 || accumulate) ? 1.0f : 0.0f;
    sgemm(false, false, M, K, rows, 1.0f, dY + n0, lddy, tile, K, beta, dX, lddx);
  }
}

}  // namespace loom::detail
