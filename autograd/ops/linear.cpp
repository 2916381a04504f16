// linear (y = x W^T + b for a weight of any storage dtype) and f32 matmul.
//
// A frozen W is used only through linear_forward / linear_backward_input (autograd/kernels/
// gemm.h), which dequantize tiles on the fly; dW is computed only for an f32 W that requires
// grad (LoRA A/B), as dY^T . X with sgemm.
#include "autograd/kernels/gemm.h"
#include "autograd/ops.h"
#include "autograd/ops/common.h"

namespace loom {

using namespace ops_detail;

namespace {

WeightView weight_view(const Tensor& w) {
  return WeightView{w.dtype(), w.data_bytes(), w.shape()[0], w.shape()[1]};
}

}  // namespace

Tensor linear(const Tensor& x_in, const Tensor& weight_in, const Tensor& bias_in, Precision precision,
              OutputUse use) {
  check_f32("linear", "x", x_in);
  check_defined("linear", "weight", weight_in);
  LOOM_CHECK(weight_in.dim() == 2, "linear: weight '{}' must be 2-D [out, in], got {}",
             weight_in.name(), shape_str(weight_in.shape()));
  const int64_t N = weight_in.shape()[0], K = weight_in.shape()[1];
  LOOM_CHECK(x_in.dim() >= 1 && x_in.shape().back() == K,
             "linear: x {} does not match weight '{}' {}: expected x [..., {}]",
             shape_str(x_in.shape()), weight_in.name(), shape_str(weight_in.shape()), K);
  LOOM_CHECK(weight_in.dtype() == DType::F32 || !weight_in.requires_grad(),
             "linear: weight '{}' is {} and requires grad; only f32 weights can be trained",
             weight_in.name(), dtype_name(weight_in.dtype()));
  LOOM_CHECK(weight_in.dtype() == DType::F32 || weight_in.is_contiguous(),
             "linear: {} weight '{}' must be contiguous", dtype_name(weight_in.dtype()), weight_in.name());
  if (bias_in.defined()) {
    check_f32("linear", "bias", bias_in);
    LOOM_CHECK(bias_in.dim() == 1 && bias_in.shape()[0] == N,
               "linear: bias {} does not match weight '{}' {}: expected [{}]",
               shape_str(bias_in.shape()), weight_in.name(), shape_str(weight_in.shape()), N);
  }
  const Tensor x = contiguous(x_in);
  const Tensor weight = weight_in.dtype() == DType::F32 ? contiguous(weight_in) : weight_in;
  const Tensor bias = bias_in.defined() ? contiguous(bias_in) : Tensor();

  const int64_t M = K == 0 ? 0 : x.numel() / K;
  Shape out_shape = x.shape();
  out_shape.back() = N;
  const bool compute = use == OutputUse::Read;
  // Written whole when computed: M, N > 0 below, or no elements.
  Tensor y = compute ? empty_f32(out_shape) : graph_only_f32(out_shape);
  const WeightView wv = weight_view(weight);
  if (compute && M > 0 && N > 0)
    linear_forward(x.data_f32(), M, K, wv, y.data_f32(), N, false, precision);
  if (compute && bias.defined() && M > 0) add_to_rows(y.data_f32(), M, N, bias.data_f32());

  const bool need_x = x.requires_grad(), need_w = weight.requires_grad();
  const bool need_b = bias.defined() && bias.requires_grad();
  const Tensor saved_x = need_w ? x : Tensor();  // only dW needs the input
  return record(y, "linear", {x, weight, bias}, [=](const Tensor& g_in, const Tensor&) {
    const Tensor g = dense(g_in);
    const float* pg = g.data_f32();
    Tensor dx, dw, db;
    if (need_x) {
      dx = M > 0 && N > 0 && K > 0 ? empty_f32(x.shape()) : new_f32(x.shape());
      if (M > 0 && N > 0 && K > 0)
        linear_backward_input(pg, M, N, weight_view(weight), dx.data_f32(), K, false, precision);
    }
    if (need_w) {
      dw = M > 0 && N > 0 && K > 0 ? empty_f32({N, K}) : new_f32({N, K});
      // dW [N x K] = dY^T [N x M] . X [M x K]
      if (M > 0 && N > 0 && K > 0)
        sgemm(true, false, N, K, M, 1.0f, pg, N, saved_x.data_f32(), K, 0.0f, dw.data_f32(), K);
    }
    if (need_b) {
      db = new_f32({N});
      sum_rows(pg, M, N, db.data_f32(), false);
    }
    return std::vector<Tensor>{dx, dw, db};
  });
}

namespace {

// One operand's last two dims as a BLAS matrix: row-major with leading dim ld, or stored
// transposed (column-major) with leading dim ld. Other layouts need a copy first.
struct MatLayout {
  bool transposed = false;
  int64_t ld = 0;
};

bool blas_layout(const Tensor& t, MatLayout* layout) {
  const int64_t nd = t.dim();
  const int64_t rows = t.shape()[nd - 2], cols = t.shape()[nd - 1];
  const int64_t sr = t.strides()[nd - 2], sc = t.strides()[nd - 1];
  if (sc == 1 || cols == 1) {
    const int64_t ld = rows == 1 ? std::max<int64_t>(cols, 1) : sr;
    if (ld >= std::max<int64_t>(cols, 1)) {
      *layout = {false, ld};
      return true;
    }
  }
  if (sr == 1 || rows == 1) {
    const int64_t ld = cols == 1 ? std::max<int64_t>(rows, 1) : sc;
    if (ld >= std::max<int64_t>(rows, 1)) {
      *layout = {true, ld};
      return true;
    }
  }
  return false;
}

// Offsets (in elements) of each batch element of t over the broadcast batch shape; a 2-D
// operand gives offset 0 for all.
std::vector<int64_t> batch_offsets(const Tensor& t, const Shape& batch) {
  const int64_t nb = shape_numel(batch);
  std::vector<int64_t> offs(static_cast<size_t>(nb), 0);
  const int64_t tb = t.dim() - 2;
  if (tb == 0) return offs;
  for (int64_t i = 0; i < nb; ++i) {
    int64_t rem = i, off = 0;
    for (int64_t d = tb - 1; d >= 0; --d) {
      off += (rem % batch[d]) * t.strides()[d];
      rem /= batch[d];
    }
    offs[static_cast<size_t>(i)] = off;
  }
  return offs;
}

// C[i] (+)= op(A[i]) . op(B[i]) for every batch element; a/b given as (data, layout, offsets)
// with an extra logical transpose each (xor with their storage layout).
struct Operand {
  const float* data;
  MatLayout layout;
  const std::vector<int64_t>* offsets;
  bool logical_transpose;
};

void batched_gemm(int64_t nb, int64_t M, int64_t N, int64_t K, const Operand& a, const Operand& b,
                  float* c, int64_t c_batch_stride, float beta) {
  for (int64_t i = 0; i < nb; ++i) {
    sgemm(a.layout.transposed != a.logical_transpose, b.layout.transposed != b.logical_transpose,
          M, N, K, 1.0f, a.data + (*a.offsets)[i], a.layout.ld, b.data + (*b.offsets)[i],
          b.layout.ld, i > 0 && c_batch_stride == 0 ? 1.0f : beta, c + i * c_batch_stride, N);
  }
}

}  // namespace

Tensor matmul(const Tensor& a_in, const Tensor& b_in) {
  check_f32("matmul", "a", a_in);
  check_f32("matmul", "b", b_in);
  LOOM_CHECK(a_in.dim() >= 2 && b_in.dim() >= 2, "matmul: expected a [..., M, K] and b [..., K, N], got {} and {}",
             shape_str(a_in.shape()), shape_str(b_in.shape()));
  const int64_t M = a_in.size(-2), K = a_in.size(-1), N = b_in.size(-1);
  LOOM_CHECK(b_in.size(-2) == K, "matmul: inner dims differ: a {} and b {} (expected b [..., {}, N])",
             shape_str(a_in.shape()), shape_str(b_in.shape()), K);
  const Shape a_batch(a_in.shape().begin(), a_in.shape().end() - 2);
  const Shape b_batch(b_in.shape().begin(), b_in.shape().end() - 2);
  LOOM_CHECK(a_batch.empty() || b_batch.empty() || a_batch == b_batch,
             "matmul: batch dims differ: a {} and b {} (equal, or one operand 2-D)",
             shape_str(a_in.shape()), shape_str(b_in.shape()));
  MatLayout la, lb;
  const Tensor a = blas_layout(a_in, &la) ? a_in : contiguous(a_in);
  const Tensor b = blas_layout(b_in, &lb) ? b_in : contiguous(b_in);
  blas_layout(a, &la);
  blas_layout(b, &lb);
  const Shape batch = a_batch.empty() ? b_batch : a_batch;
  const int64_t nb = shape_numel(batch);
  Shape out_shape = batch;
  out_shape.push_back(M);
  out_shape.push_back(N);
  Tensor out = new_f32(out_shape);
  const auto offs_a = std::make_shared<std::vector<int64_t>>(batch_offsets(a, batch));
  const auto offs_b = std::make_shared<std::vector<int64_t>>(batch_offsets(b, batch));
  if (M > 0 && N > 0 && K > 0)
    batched_gemm(nb, M, N, K, {a.data_f32(), la, offs_a.get(), false},
                 {b.data_f32(), lb, offs_b.get(), false}, out.data_f32(), M * N, 0.0f);

  const bool need_a = a.requires_grad(), need_b = b.requires_grad();
  const Tensor saved_a = need_b ? a : Tensor();
  const Tensor saved_b = need_a ? b : Tensor();
  const bool a_shared = a.dim() == 2 && nb > 1, b_shared = b.dim() == 2 && nb > 1;
  return record(out, "matmul", {a, b}, [=](const Tensor& g_in, const Tensor&) {
    const Tensor g = dense(g_in);
    std::vector<int64_t> offs_g(static_cast<size_t>(nb));
    for (int64_t i = 0; i < nb; ++i) offs_g[static_cast<size_t>(i)] = i * M * N;
    const MatLayout lg{false, N};
    Tensor da, db;
    if (need_a && M > 0 && K > 0) {
      // dA [M x K] = dC [M x N] . B^T; summed over the batch when a is shared.
      da = new_f32(a.shape());
      if (N > 0)
        batched_gemm(nb, M, K, N, {g.data_f32(), lg, &offs_g, false},
                     {saved_b.data_f32(), lb, offs_b.get(), true}, da.data_f32(),
                     a_shared ? 0 : M * K, 0.0f);
    } else if (need_a) {
      da = new_f32(a.shape());
    }
    if (need_b && K > 0 && N > 0) {
      // dB [K x N] = A^T . dC.
      db = new_f32(b.shape());
      if (M > 0)
        batched_gemm(nb, K, N, M, {saved_a.data_f32(), la, offs_a.get(), true},
                     {g.data_f32(), lg, &offs_g, false}, db.data_f32(), b_shared ? 0 : K * N, 0.0f);
    } else if (need_b) {
      db = new_f32(b.shape());
    }
    return std::vector<Tensor>{da, db};
  });
}

}  // namespace loom
