// Reductions (sum, mean over all elements) and softmax / log_softmax along the last dim.
#include <cmath>

#include "autograd/ops.h"
#include "autograd/ops/common.h"
#include "autograd/ops/vec_kernels.h"

namespace loom {

using namespace ops_detail;

namespace {

Tensor reduce_all(const char* op, const Tensor& x, bool average) {
  check_f32(op, "x", x);
  Tensor xd = dense(x);
  const float* p = xd.data_f32();
  const int64_t n = x.numel();
  double total = 0.0;
#pragma omp parallel for reduction(+ : total) schedule(static) if (n >= kParallelMinElements)
  for (int64_t i = 0; i < n; ++i) total += p[i];
  const float factor = average ? (n > 0 ? 1.0f / static_cast<float>(n) : 0.0f) : 1.0f;
  if (average) total = n > 0 ? total / static_cast<double>(n) : 0.0;
  Tensor out = Tensor::full({}, static_cast<float>(total));
  const Shape shape = x.shape();
  return record(out, op, {x}, [shape, factor](const Tensor& g, const Tensor&) {
    return std::vector<Tensor>{Tensor::full(shape, g.data_f32()[0] * factor)};
  });
}

struct Rows {
  int64_t rows = 0, cols = 0;
};

Rows last_dim_rows(const char* op, const Tensor& x) {
  check_f32(op, "x", x);
  LOOM_CHECK(x.dim() >= 1, "{}: expected a tensor with at least 1 dim, got {}", op, shape_str(x.shape()));
  const int64_t cols = x.shape().back();
  return {cols == 0 ? 0 : x.numel() / cols, cols};
}

// Writes softmax (log = false) or log_softmax (log = true) of each row of x into y.
void softmax_rows(const float* x, float* y, Rows r, bool log) {
  const VecKernels& vk = vec_kernels();
#pragma omp parallel for schedule(static) if (r.rows * r.cols >= kParallelMinElements)
  for (int64_t i = 0; i < r.rows; ++i) {
    const float* xi = x + i * r.cols;
    float* yi = y + i * r.cols;
    const float m = vk.max(xi, r.cols);
    if (log) {
      const float lse = m + std::log(vk.sum_exp(xi, r.cols, m));
      for (int64_t j = 0; j < r.cols; ++j) yi[j] = xi[j] - lse;
    } else {
      const float s = vk.exp_sum(xi, yi, r.cols, m);
      vk.scale(yi, r.cols, 1.0f / s);
    }
  }
}

}  // namespace

Tensor sum(const Tensor& x) { return reduce_all("sum", x, false); }
Tensor mean(const Tensor& x) { return reduce_all("mean", x, true); }

Tensor softmax(const Tensor& x) {
  const Rows r = last_dim_rows("softmax", x);
  Tensor xd = dense(x);
  Tensor y = new_f32(x.shape());
  softmax_rows(xd.data_f32(), y.data_f32(), r, false);
  // dx = y * (g - sum(g * y)); y is the op's output, handed to the vjp by the tape.
  return record(y, "softmax", {x}, [r](const Tensor& g, const Tensor& out) {
    Tensor gd = dense(g);
    Tensor gx = new_f32(out.shape());
    const float* pg = gd.data_f32();
    const float* py = out.data_f32();
    float* px = gx.data_f32();
    const VecKernels& vk = vec_kernels();
#pragma omp parallel for schedule(static) if (r.rows * r.cols >= kParallelMinElements)
    for (int64_t i = 0; i < r.rows; ++i) {
      const int64_t o = i * r.cols;
      std::copy(pg + o, pg + o + r.cols, px + o);
      vk.softmax_grad(py + o, px + o, r.cols, vk.dot(pg + o, py + o, r.cols));
    }
    return std::vector<Tensor>{gx};
  });
}

Tensor log_softmax(const Tensor& x) {
  const Rows r = last_dim_rows("log_softmax", x);
  Tensor xd = dense(x);
  Tensor y = new_f32(x.shape());
  softmax_rows(xd.data_f32(), y.data_f32(), r, true);
  // dx = g - exp(y) * sum(g).
  return record(y, "log_softmax", {x}, [r](const Tensor& g, const Tensor& out) {
    Tensor gd = dense(g);
    Tensor gx = new_f32(out.shape());
    const float* pg = gd.data_f32();
    const float* py = out.data_f32();
    float* px = gx.data_f32();
    const VecKernels& vk = vec_kernels();
#pragma omp parallel for schedule(static) if (r.rows * r.cols >= kParallelMinElements)
    for (int64_t i = 0; i < r.rows; ++i) {
      const int64_t o = i * r.cols;
      float gsum = 0.0f;
      for (int64_t j = 0; j < r.cols; ++j) gsum += pg[o + j];
      vk.log_softmax_grad(py + o, pg + o, px + o, r.cols, gsum);
    }
    return std::vector<Tensor>{gx};
  });
}

}  // namespace loom
