// AdamW with f32 moments, step for step the update of torch.optim.AdamW (single-tensor path,
// amsgrad off, maximize off):
//   p  <- p * (1 - lr * weight_decay)                      (decoupled weight decay)
//   m  <- beta1 * m + (1 - beta1) * g
//   v  <- beta2 * v + (1 - beta2) * g * g
//   p  <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// with t the parameter's own step count (1 on its first update) and eps outside the square
// root. Scalars are formed in double and applied in f32, as PyTorch does. A parameter whose
// grad() is undefined is skipped and its step count does not advance (torch skips p.grad None).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "trainer/named_tensor.h"

namespace loom {

struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

// What a checkpoint keeps of the optimizer: per parameter, its step count and both moments.
struct AdamWParamState {
  std::string name;
  Shape shape;
  int64_t step = 0;
  std::vector<float> exp_avg;     // m
  std::vector<float> exp_avg_sq;  // v
  bool operator==(const AdamWParamState&) const = default;
};

struct AdamWState {
  int64_t steps_taken = 0;              // calls to AdamW::step()
  std::vector<AdamWParamState> params;  // in the optimizer's parameter order
  bool operator==(const AdamWState&) const = default;
};

class AdamW {
 public:
  // `params` are f32 contiguous leaves; names must be unique. `no_decay` lists parameter names
  // that get no weight decay (e.g. DoRA magnitudes); empty = all decay.
  AdamW(NamedTensors params, AdamWConfig config, std::vector<std::string> no_decay = {});

  // One update with learning rate `lr` from each parameter's grad().
  void step(double lr);
  // Optimizer steps taken (calls to step()).
  int64_t steps_taken() const { return steps_taken_; }

  const NamedTensors& params() const { return params_; }
  const AdamWConfig& config() const { return config_; }

  AdamWState state() const;
  // Restores moments and step counts; names, order and shapes must match this optimizer's
  // parameters (messages name the parameter and what differs).
  void load_state(const AdamWState& state);

 private:
  NamedTensors params_;
  AdamWConfig config_;
  std::vector<bool> decay_;
  std::vector<AdamWParamState> slots_;
  int64_t steps_taken_ = 0;
};

}  // namespace loom
