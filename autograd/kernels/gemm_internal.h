// Internals of the linear-layer GEMM (gemm.h): the two compute routes, the oneDNN bf16 matmul and
// the weight tiling. Only autograd/kernels/gemm*.cpp and the parity tests include this.
//
// Tiling: an f16 / quantized weight (or any weight whose storage differs from the compute type)
// is dequantized `tile_rows` rows at a time into a thread-local scratch buffer, and each tile
// goes through the GEMM on its own. Tests pass a small tile_rows to cover the tile edges with
// small matrices; 0 means "pick for this shape" (default_tile_rows).
#pragma once

#include <omp.h>

#include <cstdint>
#include <exception>

#include "autograd/kernels/gemm.h"
#include "autograd/quant/quant.h"

namespace loom::detail {

// Tiles and their per-thread shares start every row_granularity(W) rows: the smallest row count
// whose elements are whole blocks (1 when K is a multiple of the block; 4 for Q4_K at K = 576,
// whose 256-element blocks straddle rows).
int64_t row_granularity(const WeightView& W);
// Rows of W per dequantized tile when the caller passes tile_rows = 0.
int64_t default_tile_rows(const WeightView& W);
// dst[r * ld + c] (+)= src[r * cols + c] for r < rows, c < cols: a dense result put into a
// strided output (on the calling thread).
void store_rows(const float* src, int64_t rows, int64_t cols, float* dst, int64_t ld,
                bool accumulate);
// Whether oneDNN's matmul may use AMX on this CPU (then default_tile_rows keeps small weights
// whole).
bool onednn_uses_amx();
// Whether one activation row (M = 1) can go through gemv_rows straight from W's blocks: a row
// kernel exists for the dtype and every row is whole blocks (not Q4_K at K = 576, say).
bool row_kernel_fits(const WeightView& W);
// tile_rows rounded up to a multiple of row_granularity(W) (0 = default_tile_rows).
int64_t effective_tile_rows(const WeightView& W, int64_t tile_rows);
// First row of thread t's share of `rows` rows, on a row_granularity boundary; thread t takes
// [row_share_begin(.., t, ..), row_share_begin(.., t + 1, ..)), and t = threads gives rows.
int64_t row_share_begin(const WeightView& W, int64_t rows, int t, int threads);

// A low-rank term added to a product (gemm.h, linear_*_low_rank): `act` [M x rank] (row stride
// ld_act) times `factor` -- forward: scale * act . B^T with factor = B [N x rank]; input
// gradient: scale * act . A with factor = A [rank x K].
struct LowRank {
  const float* act = nullptr;
  int64_t ld_act = 0;
  const float* factor = nullptr;
  int64_t rank = 0;
  float scale = 1.0f;
};

// Validating entry points behind linear_forward / linear_backward_input (and their low_rank
// forms when lr is non-null), with the tile height exposed (0 = default_tile_rows).
void linear_forward_tiled(const float* X, int64_t M, int64_t ldx, const WeightView& W, float* Y,
                          int64_t ldy, bool accumulate, Precision precision, int64_t tile_rows,
                          const LowRank* lr = nullptr);
void linear_backward_input_tiled(const float* dY, int64_t M, int64_t lddy, const WeightView& W,
                                 float* dX, int64_t lddx, bool accumulate, Precision precision,
                                 int64_t tile_rows, const LowRank* lr = nullptr);

// The routes, called with validated, non-empty arguments (M, N, K > 0).
// f32 route (gemm_f32.cpp): OpenBLAS sgemm; non-f32 weights dequantized to f32 tiles.
void forward_f32(const float* X, int64_t M, int64_t ldx, const WeightView& W, float* Y,
                 int64_t ldy, bool accumulate, int64_t tile_rows);
void backward_input_f32(const float* dY, int64_t M, int64_t lddy, const WeightView& W, float* dX,
                        int64_t lddx, bool accumulate, int64_t tile_rows);
// bf16 route (gemm_bf16.cpp): activations rounded to bf16, non-bf16 weights dequantized to bf16
// tiles, oneDNN matmul with f32 accumulation. Needs cpu_has_avx512_bf16(). A low-rank term
// (lr non-null, rank > 0) is folded into the reduction.
void forward_bf16(const float* X, int64_t M, int64_t ldx, const WeightView& W, float* Y,
                  int64_t ldy, bool accumulate, int64_t tile_rows, const LowRank* lr = nullptr);
void backward_input_bf16(const float* dY, int64_t M, int64_t lddy, const WeightView& W, float* dX,
                         int64_t lddx, bool accumulate, int64_t tile_rows,
                         const LowRank* lr = nullptr);
// linear_backward_low_rank's bf16 route, W in one tile: t = dY B into T, dB = scale dY^T U, and
// dX (+)= [dY | T] . [W ; scale A], dY read once for all three (the row chunks and per-thread
// sums of skinny_product_reduce on `threads` threads, so its t and dB bits).
void backward_input_bf16_lora(const float* dY, int64_t M, int64_t lddy, const WeightView& W,
                              const float* A, const float* B, int64_t R, float scale,
                              const float* U, int64_t ldu, float* T, int64_t ldt, float* dB,
                              float* dX, int64_t lddx, bool accumulate, int threads);
// linear_forward_group's bf16 route: [X | U | zeros] rounded once (U may be null with u_cols 0),
// U's `made` columns made from X's rows just before they are rounded, then each output's
// tiles, the output's term in its U columns.
void forward_bf16_group(const float* X, int64_t M, int64_t ldx, const float* U, int64_t ldu,
                        int64_t u_cols, std::span<const GroupProduct> outputs,
                        const MadeColumns& made);

// How many products have run on loom's AMX tile kernel (gemm_bf16.cpp) in this process: tests
// check that their shapes take that route.
int64_t tile_kernel_products();

// linear_forward_group_combined's route (gemm_bf16.cpp): whether it runs for these shapes (two
// weights of one shape, each one tile, on the AMX tile kernel), and the route itself.
bool group_combined_fits(int64_t M, int64_t u_cols, std::span<const GroupProduct> outputs);
void forward_bf16_group_combined(const float* X, int64_t M, int64_t ldx, const float* U,
                                 int64_t ldu, int64_t u_cols, std::span<const GroupProduct> outputs,
                                 const MadeColumns& made, CombineRows combine, float* Y,
                                 int64_t ldy);

// oneDNN matmul (gemm_dnnl.cpp): C[M x N] (f32, row stride ldc) = A . B  (+ C if accumulate),
// A [M x K] bf16 with row stride lda, B [K x N] bf16 with element (k, n) at
// B[k * b_stride_k + n * b_stride_n] (b_stride_k = 1, b_stride_n = K reads a row-major [N x K]
// weight as its transpose). Primitives are cached per thread, keyed by shape and strides.
void dnnl_matmul_bf16(int64_t M, int64_t N, int64_t K, const bf16_t* A, int64_t lda,
                      const bf16_t* B, int64_t b_stride_k, int64_t b_stride_n, float* C,
                      int64_t ldc, bool accumulate);
// The same with A given by element strides (a_stride_m = 1, a_stride_k = M reads a row-major
// [K x M] matrix as its transpose) and C = alpha * A . B (+ C).
void dnnl_matmul_bf16_strided(int64_t M, int64_t N, int64_t K, float alpha, const bf16_t* A,
                              int64_t a_stride_m, int64_t a_stride_k, const bf16_t* B,
                              int64_t b_stride_k, int64_t b_stride_n, float* C, int64_t ldc,
                              bool accumulate);

// Below this many elements a tile is dequantized on the calling thread: waking the team costs
// more than it saves.
inline constexpr int64_t kParallelDequantMin = 1 << 14;

// Sets OpenBLAS to one thread (once): loom calls it from inside its own OpenMP threads.
void use_single_threaded_blas();

// Rows [row0, row0 + rows) of W dequantized into out (rows x W.cols, contiguous), split over the
// OpenMP threads. row0 must be a multiple of row_granularity(W), and so must rows unless the
// range ends at the last row.
void dequantize_rows_f32(const WeightView& W, int64_t row0, int64_t rows, float* out);
void dequantize_rows_bf16(const WeightView& W, int64_t row0, int64_t rows, bf16_t* out);

// Runs fn(thread, threads) on `threads` OpenMP threads. An exception escaping a parallel region
// would terminate the program, so the first one thrown is carried out and rethrown here.
template <typename Fn>
void parallel_run(int threads, Fn&& fn) {
  std::exception_ptr error;
#pragma omp parallel num_threads(threads)
  {
    try {
      fn(omp_get_thread_num(), omp_get_num_threads());
    } catch (...) {
#pragma omp critical(loom_gemm_parallel_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

// A thread-local scratch buffer of at least `count` elements, reused across calls (slot picks
// one of a few independent buffers so a route can hold two at once).
float* scratch_f32(int slot, int64_t count);
bf16_t* scratch_bf16(int slot, int64_t count);

}  // namespace loom::detail
