// Matrix products for the transformer's linear layers, dispatched by the weight's storage dtype.
//
// A frozen weight W is [N x K] row-major (out_features x in_features, as GGUF and PyTorch store
// it) in any storage dtype. Two products are needed with it:
//   forward         Y[M x N]  = X[M x K] . W^T      (linear_forward)
//   input gradient  dX[M x K] = dY[M x N] . W       (linear_backward_input)
// The base never needs dW. Dispatch:
//   f32 W           -> OpenBLAS sgemm (or the bf16 path if the precision says so)
//   bf16 W          -> oneDNN bf16 matmul with f32 accumulation (AVX512_BF16; on CPUs with AMX,
//                      products of >= 1024 rows on loom's tile kernel), else f32 via BLAS
//   f16 / quantized -> tiles of W rows dequantized on the fly into bf16 (or f32) scratch, then the
//                      same GEMM per tile; never a whole dequantized copy of W.
// Activations X, dY, Y, dX are f32. With Precision::BF16 they are rounded to bf16 for the GEMM.
#pragma once

#include <cstdint>
#include <span>

#include "autograd/dtype.h"
#include "autograd/kernels/tile_gemm.h"  // CombineRows

namespace loom {

enum class Precision : uint8_t {
  Auto,  // bf16 compute where the CPU has AVX512_BF16, else f32
  F32,
  BF16,
};
Precision resolve_precision(Precision p);  // Auto -> BF16 or F32 for this CPU

// A read-only view of a frozen weight matrix stored in `dtype`: rows x cols elements, row-major,
// `data` pointing at the first element of a flat run of rows*cols elements.
struct WeightView {
  DType dtype = DType::F32;
  const void* data = nullptr;
  int64_t rows = 0;  // N, out_features
  int64_t cols = 0;  // K, in_features
};

// Y (+)= X . W^T.  X: [M x K] with leading dimension ldx; Y: [M x N] with leading dimension ldy.
void linear_forward(const float* X, int64_t M, int64_t ldx, const WeightView& W, float* Y,
                    int64_t ldy, bool accumulate, Precision precision = Precision::Auto);

// dX (+)= dY . W.  dY: [M x N] (lddy); dX: [M x K] (lddx).
void linear_backward_input(const float* dY, int64_t M, int64_t lddy, const WeightView& W,
                           float* dX, int64_t lddx, bool accumulate,
                           Precision precision = Precision::Auto);

// A LoRA projection's two frozen-weight products with their low-rank terms (linear_low_rank):
//   forward         Y[M x N]  (+)= X . W^T + scale * U[M x R] . B[N x R]^T
//   input gradient  dX[M x K] (+)= dY . W  + scale * T[M x R] . A[R x K]
// U and T have row stride ldu / ldt; A and B are contiguous, f32. On the bf16 route the term's
// operands are rounded to bf16 and ride along the product's reduction (R more columns of X and
// of the weight tile, so Y or dX is written once); on the f32 route the term is an sgemm into
// the result.
void linear_forward_low_rank(const float* X, int64_t M, int64_t ldx, const WeightView& W,
                             const float* U, int64_t ldu, const float* B, int64_t R, float scale,
                             float* Y, int64_t ldy, bool accumulate,
                             Precision precision = Precision::Auto);
void linear_backward_input_low_rank(const float* dY, int64_t M, int64_t lddy, const WeightView& W,
                                    const float* T, int64_t ldt, const float* A, int64_t R,
                                    float scale, float* dX, int64_t lddx, bool accumulate,
                                    Precision precision = Precision::Auto);

// A LoRA projection's backward through its input and B: t = dY B [M x R] into T (row stride
// ldt), dB [N x R] = scale dY^T U (U [M x R], row stride ldu) and dX (+)= dY . W + scale t A. On
// the bf16 route with W in one tile, dY is read once for all three (its rows rounded for the
// product while they are in cache); elsewhere it is skinny_product_reduce, then
// linear_backward_input_low_rank. The same bits either way.
void linear_backward_low_rank(const float* dY, int64_t M, int64_t lddy, const WeightView& W,
                              const float* A, const float* B, int64_t R, float scale,
                              const float* U, int64_t ldu, float* T, int64_t ldt, float* dB,
                              float* dX, int64_t lddx, bool accumulate,
                              Precision precision = Precision::Auto);

// One output of linear_forward_group: Y[M x N] = X . W^T + scale * U[:, u_col : u_col + rank] .
// B^T, with B [N x rank] contiguous f32 (null with rank 0).
struct GroupProduct {
  WeightView W;
  float* Y = nullptr;
  int64_t ldy = 0;
  const float* B = nullptr;
  int64_t rank = 0;
  int64_t u_col = 0;
  float scale = 1.0f;
};

// Columns of linear_forward_group's U that the call makes itself: U[:, 0 : cols] = X . F, F
// [K x cols] contiguous f32 (the terms reading X itself: u = x A^T), with skinny_product's bits.
// U is the call's U, writable.
struct MadeColumns {
  float* U = nullptr;
  const float* F = nullptr;
  int64_t cols = 0;
};

// Several weights reading the same X (a block's q/k/v, gate/up), each output overwritten with
// its product and low-rank term, the terms' activations being columns of U [M x u_cols] (row
// stride ldu). On the bf16 route [X | U] is rounded once for all of them and every term rides
// along its weight's reduction (the weight's tile gets scale * B in its own U columns, zeros in
// the others'); elsewhere (f32, one row) each output is linear_forward_low_rank. With `made`,
// U's first columns are made first: on the bf16 route while X's rows are rounded (X is read
// from memory once for both), elsewhere by skinny_product.
void linear_forward_group(const float* X, int64_t M, int64_t ldx, const float* U, int64_t ldu,
                          int64_t u_cols, std::span<const GroupProduct> outputs,
                          Precision precision = Precision::Auto, const MadeColumns& made = {});

// Two outputs of a group combined row by row: Y [M x N] (row stride ldy) = combine(Y0, Y1),
// Y0 and Y1 what linear_forward_group would write for outputs[0] and [1] (their Y and ldy
// unused), which are never written out (a Llama MLP's silu(gate) * up in a forward that keeps
// neither). Only on the AMX tile route (two weights of one [N x K] shape, each in one tile,
// M >= 1024 rows), where it returns true; elsewhere it returns false having done nothing, and the
// caller runs linear_forward_group and combines.
bool linear_forward_group_combined(const float* X, int64_t M, int64_t ldx, const float* U,
                                   int64_t ldu, int64_t u_cols,
                                   std::span<const GroupProduct> outputs, Precision precision,
                                   const MadeColumns& made, CombineRows combine, float* Y,
                                   int64_t ldy);

// Plain f32 GEMM for trainable weights and activations (row-major, cblas conventions):
// C = alpha * op(A) . op(B) + beta * C.
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
           int64_t ldc);

// bf16 GEMM with f32 accumulation (oneDNN; needs cpu_has_avx512_bf16()): C [M x N] f32, row
// stride ldc, = alpha * A . B (+ C when accumulate), A [M x K] and B [K x N] raw bf16 bits given
// by element strides: A(m, k) = A[m * a_stride_m + k * a_stride_k], B(k, n) = B[k * b_stride_k +
// n * b_stride_n], so either operand may be read transposed. Runs on the calling thread's oneDNN
// context (single-threaded when called inside an OpenMP parallel region).
void gemm_bf16(int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A,
               int64_t a_stride_m, int64_t a_stride_k, const uint16_t* B, int64_t b_stride_k,
               int64_t b_stride_n, float* C, int64_t ldc, bool accumulate);

namespace ref {
// Scalar references in double accumulation, for parity tests.
void linear_forward(const float* X, int64_t M, int64_t ldx, const WeightView& W, float* Y,
                    int64_t ldy, bool accumulate);
void linear_backward_input(const float* dY, int64_t M, int64_t lddy, const WeightView& W,
                           float* dX, int64_t lddx, bool accumulate);
void gemm_bf16(int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A,
               int64_t a_stride_m, int64_t a_stride_k, const uint16_t* B, int64_t b_stride_k,
               int64_t b_stride_n, float* C, int64_t ldc, bool accumulate);
}  // namespace ref

}  // namespace loom
