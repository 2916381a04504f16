// DoRA adapter: magnitude vector, detached row norms, forward (lora/dora.h).
#include "lora/dora.h"

#include <fmt/format.h>

#include <cmath>

#include "autograd/check.h"
#include "lora/delta.h"

namespace loom {

std::vector<float> dora_weight_norms(const Tensor& weight, const Tensor& a, const Tensor& b,
                                     float scale) {
  LOOM_CHECK(weight.defined() && weight.dim() == 2, "dora: base weight must be 2-D");
  const int64_t in = weight.size(1);
  std::vector<float> norms(static_cast<size_t>(weight.size(0)));
  for_each_adapted_rows(weight, a, b, scale, [&](int64_t r0, int64_t nr, const float* rows) {
    for (int64_t r = 0; r < nr; ++r) {
      double sq = 0.0;
      const float* row = rows + r * in;
      for (int64_t j = 0; j < in; ++j) sq += static_cast<double>(row[j]) * row[j];
      norms[static_cast<size_t>(r0 + r)] = static_cast<float>(std::sqrt(sq));
    }
  });
  return norms;
}

DoraAdapter::DoraAdapter(const Linear& base, const LoraModuleOptions& options,
                         std::shared_ptr<const LoraRuntime> runtime)
    : LoraAdapter(base, options, std::move(runtime)) {
  magnitude_ = Tensor::zeros({out_});
  magnitude_.set_name(peft_parameter_name(hf_name_, "lora_magnitude_vector"))
      .set_requires_grad(true);
}

void DoraAdapter::init_magnitude(const Linear& base) {
  LOOM_CHECK(base.weight.defined() && base.out_features() == out_ && base.in_features() == in_,
             "dora: init_magnitude for '{}' [{} x {}] given '{}'", hf_name_, out_, in_,
             base.hf_name);
  set_magnitude(dora_weight_norms(base.weight, a_, b_, static_cast<float>(scale_)));
}

void DoraAdapter::set_magnitude(const std::vector<float>& values) {
  if (static_cast<int64_t>(values.size()) != out_)
    throw Error(fmt::format("dora: '{}': {} magnitude values given, expected out_features {}",
                            hf_name_, values.size(), out_));
  std::copy(values.begin(), values.end(), magnitude_.data_f32());
}

std::vector<float> DoraAdapter::inverse_norms(const Linear& base) const {
  // n = ||W + s B A||_row from the current values only: no tape node, so no gradient (detached).
  // A checkpointed block calls apply() twice per step with the same W, A and B: reuse n then.
  std::lock_guard<std::mutex> lock(cache_->mutex);
  NormCache& cache = *cache_;
  std::vector<float> a = a_.to_vector(), b = b_.to_vector();
  if (cache.weight.lock() == base.weight.impl_ptr() && cache.a == a && cache.b == b)
    return cache.inv_norms;
  const std::vector<float> norms =
      dora_weight_norms(base.weight, a_, b_, static_cast<float>(scale_));
  std::vector<float> inv(norms.size());
  for (size_t i = 0; i < norms.size(); ++i) {
    if (!(norms[i] > 0.0f) || !std::isfinite(norms[i]))
      throw Error(
          fmt::format("dora: '{}': row {} of W + s B A has norm {}; DoRA divides by it "
                      "(a zero or non-finite weight row cannot be adapted with DoRA)",
                      hf_name_, i, norms[i]));
    inv[i] = 1.0f / norms[i];
  }
  cache.weight = base.weight.impl_ptr();
  cache.a = std::move(a);
  cache.b = std::move(b);
  cache.inv_norms = inv;
  return inv;
}

Tensor DoraAdapter::apply(const Linear& base, const Tensor& x, const Tensor& base_out,
                          Precision precision) const {
  if (merged()) return base_out;
  check_call(base, x);
  const float s = static_cast<float>(scale_);
  const Tensor c = mul(magnitude_, Tensor::from_vector({out_}, inverse_norms(base)));  // m / n
  const bool drop = dropout_active();
  const Tensor xd = drop ? dropped_input(x) : x;
  // W xd: the base result without its bias, or recomputed on the dropped input (as PEFT).
  Tensor base_result;
  if (drop)
    base_result = linear(xd, base.weight, Tensor(), precision);
  else
    base_result = base.bias.defined() ? sub(base_out, base.bias) : base_out;
  // PEFT: (mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scaling
  const Tensor c_minus_1 = sub(c, Tensor::full({1}, 1.0f));
  const Tensor result_dora =
      add(mul(base_result, c_minus_1), loom::scale(mul(lora_product(xd), c), s));
  return add(base_out, result_dora);
}

}  // namespace loom
