// Scalar references of linear_forward / linear_backward_input: W dequantized with the scalar
// dequantizer, products accumulated in double. Slow on purpose; the parity tests use them.
#include <algorithm>
#include <vector>

#include "autograd/check.h"
#include "autograd/kernels/gemm.h"
#include "autograd/quant/quant.h"

namespace loom::ref {
namespace {

std::vector<float> dequantize_all(const char* op, const WeightView& W) {
  LOOM_CHECK(W.rows >= 0 && W.cols >= 0 && (W.data != nullptr || W.rows * W.cols == 0),
             "ref::{}: bad {} weight view [{} x {}]", op, dtype_name(W.dtype), W.rows, W.cols);
  std::vector<float> w(static_cast<size_t>(W.rows * W.cols));
  if (!w.empty()) ref::dequantize(W.dtype, W.data, W.rows * W.cols, 0, W.rows * W.cols, w.data());
  return w;
}

}  // namespace

void linear_forward(const float* X, int64_t M, int64_t ldx, const WeightView& W, float* Y,
                    int64_t ldy, bool accumulate) {
  LOOM_CHECK(ldx >= W.cols && ldy >= W.rows, "ref::linear_forward: ldx={} < K={} or ldy={} < N={}",
             ldx, W.cols, ldy, W.rows);
  const std::vector<float> w = dequantize_all("linear_forward", W);
  const int64_t N = W.rows, K = W.cols;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0.0;
      for (int64_t k = 0; k < K; ++k) acc += double(X[m * ldx + k]) * double(w[n * K + k]);
      float& y = Y[m * ldy + n];
      y = static_cast<float>(accumulate ? double(y) + acc : acc);
    }
}

void linear_backward_input(const float* dY, int64_t M, int64_t lddy, const WeightView& W,
                           float* dX, int64_t lddx, bool accumulate) {
  LOOM_CHECK(lddy >= W.rows && lddx >= W.cols,
             "ref::linear_backward_input: lddy={} < N={} or lddx={} < K={}", lddy, W.rows, lddx,
             W.cols);
  const std::vector<float> w = dequantize_all("linear_backward_input", W);
  const int64_t N = W.rows, K = W.cols;
  std::vector<double> row(static_cast<size_t>(K));
  for (int64_t m = 0; m < M; ++m) {
    std::fill(row.begin(), row.end(), 0.0);
    for (int64_t n = 0; n < N; ++n) {
      const double g = dY[m * lddy + n];
      for (int64_t k = 0; k < K; ++k) row[k] += g * double(w[n * K + k]);
    }
    for (int64_t k = 0; k < K; ++k) {
      float& x = dX[m * lddx + k];
      x = static_cast<float>(accumulate ? double(x) + row[k] : row[k]);
    }
  }
}

void gemm_bf16(int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A,
               int64_t a_stride_m, int64_t a_stride_k, const uint16_t* B, int64_t b_stride_k,
               int64_t b_stride_n, float* C, int64_t ldc, bool accumulate) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0.0;
      for (int64_t k = 0; k < K; ++k)
        acc += double(bf16_to_f32(A[m * a_stride_m + k * a_stride_k])) *
               double(bf16_to_f32(B[k * b_stride_k + n * b_stride_n]));
      float& c = C[m * ldc + n];
      c = static_cast<float>(accumulate ? double(c) + alpha * acc : alpha * acc);
    }
}

}  // namespace loom::ref
