// Global gradient-norm clipping as torch.nn.utils.clip_grad_norm_ (norm_type 2): the L2 norm
// over all gradients, then every gradient times min(1, max_norm / (norm + 1e-6)). The norm is
// accumulated in double (torch sums per-tensor f32 norms; the two agree to float rounding).
// Non-finite gradients are found first and reported by tensor, so the trainer can skip the step
// and say which tensor went bad.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "trainer/named_tensor.h"

namespace loom {

// The first non-finite gradient value, in parameter order.
struct NonFiniteGrad {
  std::string tensor;
  int64_t index = 0;             // flat element index
  float value = 0;               // NaN or +-Inf
  std::string describe() const;  // "gradient of blk.3.attn_q.weight.lora_b is nan at element 17"
};

struct GradNorm {
  double norm = 0;                         // L2 over every defined gradient (0 if none)
  std::optional<NonFiniteGrad> nonfinite;  // set when some gradient holds NaN/Inf
  bool finite() const { return !nonfinite.has_value(); }
};

// Norm of the parameters' grad() (parameters without one are left out).
GradNorm grad_global_norm(const NamedTensors& params);

// Computes the norm and, when it is finite and max_norm > 0, scales every gradient by
// min(1, max_norm / (norm + 1e-6)). Returns the norm before clipping. Non-finite gradients are
// left as they are.
GradNorm clip_grad_norm(const NamedTensors& params, double max_norm);

}  // namespace loom
