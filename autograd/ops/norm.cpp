// rms_norm (Llama's RMSNorm): y = x * r * w with r = rsqrt(mean(x^2) + eps) per row.
// Saves r per row; backward:
//   dx = r * (g*w - x * r^2 * mean(g*w*x)),   dw = sum over rows of g * x * r.
#include <cmath>

#include <omp.h>

#include "autograd/ops.h"
#include "autograd/ops/common.h"
#include "autograd/ops/vec_kernels.h"

namespace loom {

using namespace ops_detail;

Tensor rms_norm(const Tensor& x_in, const Tensor& weight, float eps) {
  check_f32("rms_norm", "x", x_in);
  check_defined("rms_norm", "weight", weight);
  LOOM_CHECK(x_in.dim() >= 1, "rms_norm: x must have at least 1 dim, got {}", shape_str(x_in.shape()));
  const int64_t D = x_in.shape().back();
  LOOM_CHECK(weight.dim() == 1 && weight.shape()[0] == D,
             "rms_norm: weight '{}' {} does not match x {}: expected [{}]", weight.name(),
             shape_str(weight.shape()), shape_str(x_in.shape()), D);
  LOOM_CHECK(!is_quantized(weight.dtype()), "rms_norm: weight '{}' is {}; expected f32, bf16 or f16",
             weight.name(), dtype_name(weight.dtype()));
  const Tensor x = contiguous(x_in);
  // A frozen bf16/f16 weight is widened once per call (D values).
  const Tensor w = weight.dtype() == DType::F32 ? contiguous(weight) : Tensor::from_vector({D}, weight.to_vector());
  const int64_t rows = D == 0 ? 0 : x.numel() / D;
  Tensor y = empty_f32(x.shape());
  auto rstd = std::make_shared<std::vector<float>>(static_cast<size_t>(rows));
  const float* px = x.data_f32();
  const float* pw = w.data_f32();
  float* py = y.data_f32();
  float* pr = rstd->data();
  const VecKernels& vk = vec_kernels();
#pragma omp parallel for schedule(static) if (rows * D >= kParallelMinElements)
  for (int64_t r = 0; r < rows; ++r) {
    const float rs = 1.0f / std::sqrt(vk.sum_squares(px + r * D, D) / static_cast<float>(D) + eps);
    pr[r] = rs;
    vk.rmsnorm_fwd(px + r * D, pw, rs, py + r * D, D);
  }

  const bool need_x = x.requires_grad(), need_w = w.requires_grad();
  return record(y, "rms_norm", {x, w}, [=](const Tensor& g_in, const Tensor&) {
    const Tensor g = dense(g_in);
    const float* pg = g.data_f32();
    const float* xs = x.data_f32();
    const float* ws = w.data_f32();
    const float* rs = rstd->data();
    Tensor dx = need_x ? empty_f32(x.shape()) : Tensor();
    float* pdx = need_x ? dx.data_f32() : nullptr;
    const VecKernels& vk = vec_kernels();
    const bool parallel = rows * D >= kParallelMinElements;
    const int n_threads = parallel ? omp_get_max_threads() : 1;
    // Per-thread partial sums of dw, reduced after the loop (deterministic for a thread count).
    std::vector<float> dw_part(need_w ? static_cast<size_t>(n_threads * D) : 0, 0.0f);
#pragma omp parallel num_threads(n_threads) if (parallel)
    {
      float* part = need_w ? dw_part.data() + static_cast<int64_t>(omp_get_thread_num()) * D : nullptr;
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        const float* gr = pg + r * D;
        const float* xr = xs + r * D;
        const float rr = rs[r];
        if (need_x) {
          const float c = rr * rr * vk.dot3(gr, ws, xr, D) / static_cast<float>(D);
          vk.rmsnorm_bwd(gr, ws, xr, rr, c, pdx + r * D, D);
        }
        if (need_w) vk.rmsnorm_dw(gr, xr, rr, part, D);
      }
    }
    Tensor dw;
    if (need_w) {
      dw = new_f32({D});
      float* pdw = dw.data_f32();
      for (int t = 0; t < n_threads; ++t)
        for (int64_t j = 0; j < D; ++j) pdw[j] += dw_part[static_cast<size_t>(t * D + j)];
    }
    return std::vector<Tensor>{dx, dw};
  });
}

}  // namespace loom
