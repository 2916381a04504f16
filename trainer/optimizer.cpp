// AdamW (optimizer.h). The element loop mirrors torch's single-tensor AdamW op by op in f32,
// so a few steps agree with PyTorch to float rounding.
#include "trainer/optimizer.h"

#include <cmath>
#include <set>

#include "autograd/check.h"

namespace loom {

AdamW::AdamW(NamedTensors params, AdamWConfig config, std::vector<std::string> no_decay)
    : params_(std::move(params)), config_(config) {
  LOOM_CHECK(config.beta1 >= 0 && config.beta1 < 1 && config.beta2 >= 0 && config.beta2 < 1,
             "AdamW: betas must be in [0, 1), found {} and {}", config.beta1, config.beta2);
  LOOM_CHECK(config.eps > 0, "AdamW: eps must be positive, found {}", config.eps);
  LOOM_CHECK(config.weight_decay >= 0, "AdamW: weight_decay must be >= 0, found {}",
             config.weight_decay);
  std::set<std::string> names;
  const std::set<std::string> skip_decay(no_decay.begin(), no_decay.end());
  for (const NamedTensor& p : params_) {
    LOOM_CHECK(p.tensor.defined(), "AdamW: parameter {} is an undefined tensor", p.name);
    LOOM_CHECK(p.tensor.dtype() == DType::F32 && p.tensor.is_contiguous(),
               "AdamW: parameter {} must be a contiguous f32 tensor", p.name);
    LOOM_CHECK(names.insert(p.name).second, "AdamW: parameter name {} appears twice", p.name);
    decay_.push_back(skip_decay.count(p.name) == 0);
    AdamWParamState slot;
    slot.name = p.name;
    slot.shape = p.tensor.shape();
    slot.exp_avg.assign(static_cast<size_t>(p.tensor.numel()), 0.0f);
    slot.exp_avg_sq.assign(static_cast<size_t>(p.tensor.numel()), 0.0f);
    slots_.push_back(std::move(slot));
  }
  for (const std::string& name : no_decay)
    LOOM_CHECK(names.count(name), "AdamW: no_decay names {}, which is not a parameter", name);
}

void AdamW::step(double lr) {
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& param = params_[i].tensor;
    const Tensor grad = param.grad();
    if (!grad.defined()) continue;
    LOOM_CHECK(grad.shape() == param.shape() && grad.dtype() == DType::F32 && grad.is_contiguous(),
               "AdamW: gradient of {} has shape {}, expected contiguous f32 {}", params_[i].name,
               shape_str(grad.shape()), shape_str(param.shape()));
    AdamWParamState& s = slots_[i];
    s.step += 1;
    const double t = static_cast<double>(s.step);
    const double weight_decay = decay_[i] ? config_.weight_decay : 0.0;
    const float decay_factor = static_cast<float>(1.0 - lr * weight_decay);
    const float beta1 = static_cast<float>(config_.beta1);
    const float beta2 = static_cast<float>(config_.beta2);
    const float one_minus_beta1 = static_cast<float>(1.0 - config_.beta1);
    const float one_minus_beta2 = static_cast<float>(1.0 - config_.beta2);
    const double bias_correction1 = 1.0 - std::pow(config_.beta1, t);
    const double bias_correction2 = 1.0 - std::pow(config_.beta2, t);
    const float neg_step_size = static_cast<float>(-(lr / bias_correction1));
    const float bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
    const float eps = static_cast<float>(config_.eps);

    float* p = param.data_f32();
    const float* g = grad.data_f32();
    float* m = s.exp_avg.data();
    float* v = s.exp_avg_sq.data();
    const int64_t n = param.numel();
    for (int64_t j = 0; j < n; ++j) {
      p[j] = p[j] * decay_factor;
      m[j] = m[j] * beta1 + one_minus_beta1 * g[j];
      v[j] = v[j] * beta2 + one_minus_beta2 * g[j] * g[j];
      const float denom = std::sqrt(v[j]) / bias_correction2_sqrt + eps;
      p[j] = p[j] + neg_step_size * m[j] / denom;
    }
  }
  ++steps_taken_;
}

AdamWState AdamW::state() const {
  return AdamWState{steps_taken_, slots_};
}

void AdamW::load_state(const AdamWState& state) {
  LOOM_CHECK(state.params.size() == slots_.size(),
             "AdamW state holds {} parameters, the optimizer has {}: the checkpoint was made "
             "with different LoRA targets or layers",
             state.params.size(), slots_.size());
  for (size_t i = 0; i < slots_.size(); ++i) {
    const AdamWParamState& in = state.params[i];
    const AdamWParamState& mine = slots_[i];
    LOOM_CHECK(in.name == mine.name, "AdamW state: parameter {} is {} in the state, expected {}", i,
               in.name, mine.name);
    LOOM_CHECK(in.shape == mine.shape, "AdamW state: {} has shape {} in the state, expected {}",
               in.name, shape_str(in.shape), shape_str(mine.shape));
    const size_t n = static_cast<size_t>(shape_numel(mine.shape));
    LOOM_CHECK(in.exp_avg.size() == n && in.exp_avg_sq.size() == n,
               "AdamW state: {} has {} / {} moment values, expected {}", in.name, in.exp_avg.size(),
               in.exp_avg_sq.size(), n);
    LOOM_CHECK(in.step >= 0, "AdamW state: {} has step count {}", in.name, in.step);
  }
  slots_ = state.params;
  steps_taken_ = state.steps_taken;
}

}  // namespace loom
