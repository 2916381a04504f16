// Public entry points of the linear-layer GEMM: argument checks, precision resolution and the
// choice between the f32 route (gemm_f32.cpp) and the bf16 route (gemm_bf16.cpp); plus sgemm.
#include "autograd/kernels/gemm.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <climits>

#include "autograd/check.h"
#include "autograd/kernels/cpu.h"
#include "autograd/kernels/gemm_internal.h"
#include "autograd/kernels/skinny.h"

namespace loom {

Precision resolve_precision(Precision p) {
  // BF16 is a request for speed: a CPU without AVX512_BF16 runs the (more exact) f32 route.
  if (p == Precision::F32) return Precision::F32;
  return cpu_has_avx512_bf16() ? Precision::BF16 : Precision::F32;
}

namespace {

void check_weight(const char* op, const WeightView& W) {
  const DTypeInfo& info = dtype_info(W.dtype);
  LOOM_CHECK(W.rows >= 0 && W.cols >= 0, "{}: weight has negative shape [{} x {}]", op, W.rows,
             W.cols);
  LOOM_CHECK(W.data != nullptr || W.rows * W.cols == 0, "{}: {} weight [{} x {}] has no data",
             op, info.name, W.rows, W.cols);
  // W is a flat run of blocks; a block may straddle two rows (tiles then start every
  // detail::row_granularity rows), but the run must be whole blocks.
  LOOM_CHECK((W.rows * W.cols) % info.block_elems == 0,
             "{}: {} weight [{} x {}] holds {} elements, not a multiple of the {}-element {} "
             "block",
             op, info.name, W.rows, W.cols, W.rows * W.cols, info.block_elems, info.name);
}

// Activation [M x width] with leading dimension ld: ld >= width, and a pointer when non-empty.
void check_activation(const char* op, const char* name, const void* p, int64_t M, int64_t width,
                      int64_t ld, const WeightView& W) {
  LOOM_CHECK(M >= 0, "{}: {} has M={} rows; expected M >= 0", op, name, M);
  LOOM_CHECK(ld >= std::max<int64_t>(width, 1),
             "{}: {} has leading dimension {} but W[{} x {}] ({}) needs rows of {} elements, so "
             "at least {}",
             op, name, ld, W.rows, W.cols, dtype_name(W.dtype), width, std::max<int64_t>(width, 1));
  LOOM_CHECK(p != nullptr || M == 0, "{}: {} is null with M={} rows", op, name, M);
}

// A low-rank term's operands: rank >= 0, and pointers and a row stride that fit it.
void check_low_rank(const char* op, const detail::LowRank* lr, int64_t M) {
  if (lr == nullptr) return;
  LOOM_CHECK(lr->rank >= 0, "{}: low-rank term has rank {}; expected >= 0", op, lr->rank);
  if (lr->rank == 0) return;
  LOOM_CHECK(lr->ld_act >= lr->rank,
             "{}: low-rank activations have row stride {} but rank {} needs at least {}", op,
             lr->ld_act, lr->rank, lr->rank);
  LOOM_CHECK((lr->act != nullptr || M == 0) && lr->factor != nullptr,
             "{}: low-rank term of rank {} has a null {}", op, lr->rank,
             lr->factor == nullptr ? "factor" : "activation matrix");
}

// Empty products: C (M x width, ldc) is zeroed unless accumulating.
void zero_unless_accumulate(float* C, int64_t M, int64_t width, int64_t ldc, bool accumulate) {
  if (accumulate) return;
  for (int64_t m = 0; m < M; ++m) std::fill_n(C + m * ldc, width, 0.0f);
}

}  // namespace

namespace detail {

void linear_forward_tiled(const float* X, int64_t M, int64_t ldx, const WeightView& W, float* Y,
                          int64_t ldy, bool accumulate, Precision precision, int64_t tile_rows,
                          const LowRank* lr) {
  const char* op = "linear_forward";
  check_weight(op, W);
  check_activation(op, "X", X, M, W.cols, ldx, W);
  check_activation(op, "Y", Y, M, W.rows, ldy, W);
  check_low_rank(op, lr, M);
  LOOM_CHECK(tile_rows >= 0, "{}: tile_rows={} must be >= 0", op, tile_rows);
  if (M == 0 || W.rows == 0) return;
  const bool term = lr != nullptr && lr->rank > 0;
  // scale * U . B^T into Y, as its own sgemm (the f32 route and the degenerate shapes).
  auto add_term = [&] {
    if (term)
      sgemm(false, true, M, W.rows, lr->rank, lr->scale, lr->act, lr->ld_act, lr->factor, lr->rank,
            1.0f, Y, ldy);
  };
  if (W.cols == 0) {
    zero_unless_accumulate(Y, M, W.rows, ldy, accumulate);
    return add_term();
  }
  const Precision p = resolve_precision(precision);
  tile_rows = effective_tile_rows(W, tile_rows);
  // One row (a decoded token) on a block format with a row kernel takes the f32 route whatever
  // the precision: the kernel reads the blocks once, where the bf16 route would first dequantize
  // a tile to bf16 scratch for a one-row matmul; and it is the more exact of the two.
  const bool row_kernel = M == 1 && row_kernel_fits(W);
  if (p == Precision::BF16 && !row_kernel)
    return forward_bf16(X, M, ldx, W, Y, ldy, accumulate, tile_rows, term ? lr : nullptr);
  forward_f32(X, M, ldx, W, Y, ldy, accumulate, tile_rows);
  add_term();
}

void linear_backward_input_tiled(const float* dY, int64_t M, int64_t lddy, const WeightView& W,
                                 float* dX, int64_t lddx, bool accumulate, Precision precision,
                                 int64_t tile_rows, const LowRank* lr) {
  const char* op = "linear_backward_input";
  check_weight(op, W);
  check_activation(op, "dY", dY, M, W.rows, lddy, W);
  check_activation(op, "dX", dX, M, W.cols, lddx, W);
  check_low_rank(op, lr, M);
  LOOM_CHECK(tile_rows >= 0, "{}: tile_rows={} must be >= 0", op, tile_rows);
  if (M == 0 || W.cols == 0) return;
  const bool term = lr != nullptr && lr->rank > 0;
  // scale * T . A into dX, as its own sgemm.
  auto add_term = [&] {
    if (term)
      sgemm(false, false, M, W.cols, lr->rank, lr->scale, lr->act, lr->ld_act, lr->factor, W.cols,
            1.0f, dX, lddx);
  };
  if (W.rows == 0) {
    zero_unless_accumulate(dX, M, W.cols, lddx, accumulate);
    return add_term();
  }
  const Precision p = resolve_precision(precision);
  tile_rows = effective_tile_rows(W, tile_rows);
  if (p == Precision::BF16)
    return backward_input_bf16(dY, M, lddy, W, dX, lddx, accumulate, tile_rows,
                               term ? lr : nullptr);
  backward_input_f32(dY, M, lddy, W, dX, lddx, accumulate, tile_rows);
  add_term();
}

}  // namespace detail

void linear_forward(const float* X, int64_t M, int64_t ldx, const WeightView& W, float* Y,
                    int64_t ldy, bool accumulate, Precision precision) {
  detail::linear_forward_tiled(X, M, ldx, W, Y, ldy, accumulate, precision, 0);
}

void linear_backward_input(const float* dY, int64_t M, int64_t lddy, const WeightView& W,
                           float* dX, int64_t lddx, bool accumulate, Precision precision) {
  detail::linear_backward_input_tiled(dY, M, lddy, W, dX, lddx, accumulate, precision, 0);
}

void linear_forward_low_rank(const float* X, int64_t M, int64_t ldx, const WeightView& W,
                             const float* U, int64_t ldu, const float* B, int64_t R, float scale,
                             float* Y, int64_t ldy, bool accumulate, Precision precision) {
  const detail::LowRank lr{U, ldu, B, R, scale};
  detail::linear_forward_tiled(X, M, ldx, W, Y, ldy, accumulate, precision, 0, &lr);
}

void linear_backward_input_low_rank(const float* dY, int64_t M, int64_t lddy, const WeightView& W,
                                    const float* T, int64_t ldt, const float* A, int64_t R,
                                    float scale, float* dX, int64_t lddx, bool accumulate,
                                    Precision precision) {
  const detail::LowRank lr{T, ldt, A, R, scale};
  detail::linear_backward_input_tiled(dY, M, lddy, W, dX, lddx, accumulate, precision, 0, &lr);
}

void linear_backward_low_rank(const float* dY, int64_t M, int64_t lddy, const WeightView& W,
                              const float* A, const float* B, int64_t R, float scale,
                              const float* U, int64_t ldu, float* T, int64_t ldt, float* dB,
                              float* dX, int64_t lddx, bool accumulate, Precision precision) {
  const char* op = "linear_backward_low_rank";
  check_weight(op, W);
  check_activation(op, "dY", dY, M, W.rows, lddy, W);
  check_activation(op, "dX", dX, M, W.cols, lddx, W);
  LOOM_CHECK(R > 0 && A != nullptr && B != nullptr && dB != nullptr && ldu >= R && ldt >= R &&
                 ((U != nullptr && T != nullptr) || M == 0),
             "{}: a rank-{} term needs A, B, dB and U, T with row strides >= {} (got {} / {})", op,
             R, R, ldu, ldt);
  const int64_t N = W.rows, K = W.cols;
  const int threads = omp_in_parallel() || M * N * R < (int64_t{1} << 16) ? 1 : num_threads();
  if (resolve_precision(precision) == Precision::BF16 && M > 0 && N > 0 && K > 0 &&
      cpu_features().avx512f && detail::effective_tile_rows(W, 0) >= N)
    return detail::backward_input_bf16_lora(dY, M, lddy, W, A, B, R, scale, U, ldu, T, ldt, dB, dX,
                                            lddx, accumulate, threads);
  skinny_product_reduce(M, N, R, dY, lddy, 1.0f, B, T, ldt, scale, U, ldu, dB);
  linear_backward_input_low_rank(dY, M, lddy, W, T, ldt, A, R, scale, dX, lddx, accumulate,
                                 precision);
}

namespace {

// linear_forward_group's arguments (outputs not empty), each output's Y too with check_y.
void check_group(const char* op, const float* X, int64_t M, int64_t ldx, const float* U,
                 int64_t ldu, int64_t u_cols, std::span<const GroupProduct> outputs,
                 const MadeColumns& made, bool check_y) {
  const int64_t K = outputs.front().W.cols;
  LOOM_CHECK(u_cols >= 0 && (u_cols == 0 || M == 0 || (U != nullptr && ldu >= u_cols)),
             "{}: low-rank activations of {} columns have row stride {}{}", op, u_cols, ldu,
             U == nullptr ? " and are null" : "");
  LOOM_CHECK(
      made.cols == 0 || (made.cols > 0 && made.cols <= u_cols && made.U == U && made.F != nullptr),
      "{}: {} columns to make must lie in U's {} (same buffer, with a factor)", op, made.cols,
      u_cols);
  for (size_t i = 0; i < outputs.size(); ++i) {
    const GroupProduct& o = outputs[i];
    check_weight(op, o.W);
    LOOM_CHECK(o.W.cols == K,
               "{}: output {}'s weight [{} x {}] does not read the group's {} input columns", op, i,
               o.W.rows, o.W.cols, K);
    if (check_y) check_activation(op, "Y", o.Y, M, o.W.rows, o.ldy, o.W);
    LOOM_CHECK(o.rank >= 0 && o.u_col >= 0 && o.u_col + o.rank <= u_cols &&
                   (o.rank == 0 || o.B != nullptr),
               "{}: output {}'s term (rank {} at column {}{}) does not fit {} low-rank columns", op,
               i, o.rank, o.u_col, o.rank > 0 && o.B == nullptr ? ", null B" : "", u_cols);
  }
  check_activation(op, "X", X, M, K, ldx, outputs.front().W);
}

}  // namespace

void linear_forward_group(const float* X, int64_t M, int64_t ldx, const float* U, int64_t ldu,
                          int64_t u_cols, std::span<const GroupProduct> outputs,
                          Precision precision, const MadeColumns& made) {
  if (outputs.empty()) return;
  check_group("linear_forward_group", X, M, ldx, U, ldu, u_cols, outputs, made, true);
  const int64_t K = outputs.front().W.cols;
  if (M == 0) return;
  bool bf16 = resolve_precision(precision) == Precision::BF16 && M > 1 && K > 0;
  for (const GroupProduct& o : outputs) bf16 = bf16 && o.W.rows > 0;
  if (bf16) return detail::forward_bf16_group(X, M, ldx, U, ldu, u_cols, outputs, made);
  if (made.cols > 0) skinny_product(M, K, made.cols, 1.0f, X, ldx, made.F, made.U, ldu);
  for (const GroupProduct& o : outputs) {
    const detail::LowRank lr{U + o.u_col, ldu, o.B, o.rank, o.scale};
    detail::linear_forward_tiled(X, M, ldx, o.W, o.Y, o.ldy, false, precision, 0,
                                 o.rank > 0 ? &lr : nullptr);
  }
}

bool linear_forward_group_combined(const float* X, int64_t M, int64_t ldx, const float* U,
                                   int64_t ldu, int64_t u_cols,
                                   std::span<const GroupProduct> outputs, Precision precision,
                                   const MadeColumns& made, CombineRows combine, float* Y,
                                   int64_t ldy) {
  const char* op = "linear_forward_group_combined";
  if (resolve_precision(precision) != Precision::BF16 || outputs.size() != 2 ||
      !detail::group_combined_fits(M, u_cols, outputs))
    return false;
  const int64_t N = outputs[0].W.rows;
  LOOM_CHECK(combine != nullptr && Y != nullptr && ldy >= N,
             "{}: the combined output needs a combine function and Y with row stride >= {} (got "
             "{})",
             op, N, ldy);
  check_group(op, X, M, ldx, U, ldu, u_cols, outputs, made, false);
  detail::forward_bf16_group_combined(X, M, ldx, U, ldu, u_cols, outputs, made, combine, Y, ldy);
  return true;
}

void gemm_bf16(int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A,
               int64_t a_stride_m, int64_t a_stride_k, const uint16_t* B, int64_t b_stride_k,
               int64_t b_stride_n, float* C, int64_t ldc, bool accumulate) {
  LOOM_CHECK(cpu_has_avx512_bf16(), "gemm_bf16: this CPU has no AVX512_BF16");
  LOOM_CHECK(M >= 0 && N >= 0 && K >= 0 && ldc >= std::max<int64_t>(N, 1),
             "gemm_bf16: bad shape M={} N={} K={} ldc={}", M, N, K, ldc);
  if (M == 0 || N == 0) return;
  if (K == 0) return zero_unless_accumulate(C, M, N, ldc, accumulate);
  detail::dnnl_matmul_bf16_strided(M, N, K, alpha, A, a_stride_m, a_stride_k, B, b_stride_k,
                                   b_stride_n, C, ldc, accumulate);
}

// OpenBLAS runs single-threaded, inside our OpenMP threads. With its own pthreads it competes
// with the OpenMP workers that keep spinning after each OpenMP region (oneDNN, our loops):
// measured on 2 cores, sgemm [256 x 576] . [576 x 1536] alternating with oneDNN matmuls ran at
// 280-385 GFLOP/s instead of 478 alone (422 vs 472 at M=2048). Split over the OpenMP threads it
// runs at 450-470 either way, as fast as OpenBLAS' own threading.
void detail::use_single_threaded_blas() {
  static const bool done = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)done;
}

namespace {

// Below this many flops one call on the calling thread is faster than waking the team.
constexpr double kParallelSgemmFlops = 4e6;

}  // namespace

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
           int64_t ldc) {
  LOOM_CHECK(M >= 0 && N >= 0 && K >= 0, "sgemm: negative shape M={} N={} K={}", M, N, K);
  // Row-major: op(A) is M x K, op(B) is K x N; a stored row holds the second index.
  const int64_t a_width = trans_a ? M : K, b_width = trans_b ? K : N;
  LOOM_CHECK(lda >= std::max<int64_t>(a_width, 1), "sgemm: lda={} < {} (A is {}{} x {})", lda,
             std::max<int64_t>(a_width, 1), trans_a ? "transposed, " : "", M, K);
  LOOM_CHECK(ldb >= std::max<int64_t>(b_width, 1), "sgemm: ldb={} < {} (B is {}{} x {})", ldb,
             std::max<int64_t>(b_width, 1), trans_b ? "transposed, " : "", K, N);
  LOOM_CHECK(ldc >= std::max<int64_t>(N, 1), "sgemm: ldc={} < N={}", ldc, N);
  for (int64_t v : {M, N, K, lda, ldb, ldc})
    LOOM_CHECK(v <= INT_MAX, "sgemm: dimension {} exceeds OpenBLAS' 32-bit int (M={} N={} K={})",
               v, M, N, K);
  if (M == 0 || N == 0) return;
  detail::use_single_threaded_blas();
  // C[m0:m1, n0:n1] from rows m0..m1 of op(A) and columns n0..n1 of op(B).
  auto block = [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    const float* a = trans_a ? A + m0 : A + m0 * lda;
    const float* b = trans_b ? B + n0 * ldb : B + n0;
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(m1 - m0),
                static_cast<int>(n1 - n0), static_cast<int>(K), alpha, a, static_cast<int>(lda),
                b, static_cast<int>(ldb), beta, C + m0 * ldc + n0, static_cast<int>(ldc));
  };
  const int threads = omp_in_parallel() ? 1 : num_threads();
  const bool small = 2.0 * double(M) * double(N) * double(K) < kParallelSgemmFlops;
  // Split the longer side of C; each part should keep at least a few register-tile rows.
  const bool split_m = M >= N || N < 32 * threads;
  if (threads <= 1 || small || (split_m ? M : N) < 8 * threads) return block(0, M, 0, N);
  detail::parallel_run(threads, [&](int t, int nt) {
    if (split_m) {
      const int64_t m0 = M * t / nt, m1 = M * (t + 1) / nt;
      if (m1 > m0) block(m0, m1, 0, N);
    } else {
      const int64_t n0 = N * t / nt / 16 * 16, n1 = t + 1 == nt ? N : N * (t + 1) / nt / 16 * 16;
      if (n1 > n0) block(0, M, n0, n1);
    }
  });
}

}  // namespace loom
