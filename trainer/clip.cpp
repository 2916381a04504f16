// Gradient norm and clipping (clip.h).
#include "trainer/clip.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "autograd/check.h"

namespace loom {

std::string NonFiniteGrad::describe() const {
  return fmt::format("gradient of {} is {} at element {}", tensor, value, index);
}

GradNorm grad_global_norm(const NamedTensors& params) {
  GradNorm result;
  double sum_sq = 0;
  for (const NamedTensor& p : params) {
    const Tensor grad = p.tensor.grad();
    if (!grad.defined()) continue;
    LOOM_CHECK(grad.dtype() == DType::F32 && grad.is_contiguous(),
               "gradient of {} must be contiguous f32", p.name);
    const float* g = grad.data_f32();
    const int64_t n = grad.numel();
    for (int64_t i = 0; i < n; ++i) {
      if (!std::isfinite(g[i])) {
        result.nonfinite = NonFiniteGrad{p.name, i, g[i]};
        result.norm = std::numeric_limits<double>::quiet_NaN();
        return result;
      }
      sum_sq += static_cast<double>(g[i]) * static_cast<double>(g[i]);
    }
  }
  result.norm = std::sqrt(sum_sq);
  return result;
}

GradNorm clip_grad_norm(const NamedTensors& params, double max_norm) {
  LOOM_CHECK(max_norm >= 0, "clip_grad_norm: max_norm must be >= 0, found {}", max_norm);
  GradNorm result = grad_global_norm(params);
  if (!result.finite() || max_norm == 0) return result;
  // As torch: the coefficient is formed in f32 and clamped at 1; multiplying by 1 is skipped.
  const float coef =
      std::min(1.0f, static_cast<float>(max_norm) / (static_cast<float>(result.norm) + 1e-6f));
  if (coef >= 1.0f) return result;
  for (const NamedTensor& p : params) {
    const Tensor grad = p.tensor.grad();
    if (!grad.defined()) continue;
    float* g = grad.data_f32();
    const int64_t n = grad.numel();
    for (int64_t i = 0; i < n; ++i) g[i] *= coef;
  }
  return result;
}

}  // namespace loom
