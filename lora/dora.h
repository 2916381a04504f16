// DoRA (weight-decomposed LoRA, arXiv 2402.09353) on one projection, as PEFT's
// DoraLinearLayer computes it:
//
//   n      = || W + s B A ||_row        [out], the L2 norm of each output row, TREATED AS A
//                                       CONSTANT in backward (detached), as PEFT does after
//                                       section 4.3 of the paper: it follows B and A in the
//                                       forward but sends them no gradient
//   c      = m / n                      [out], m the trainable magnitude vector
//   y      = base(x) + (c - 1) * (W xd) + c * (B (A xd)) * s
//
// where base(x) = W x + bias is the model's own projection output and xd = dropout(x). Without
// dropout (or in eval mode) W xd is base(x) - bias, as PEFT reuses the base result; with dropout
// active W xd is computed again on the dropped input (PEFT's base_result=None path). Overall,
// without dropout, y = bias + (m / n) * (W + s B A) x.
//
// m starts as the row norms of W + s B A at attach time (B = 0 gives ||W||_row; with PiSSA it is
// the norm of residual + s B A, i.e. of the original W). W is read in its storage dtype, row
// blocks dequantized on the fly, at every forward: n follows the current A and B.
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "lora/adapter.h"

namespace loom {

// || W + scale * B A ||_row for each of W's [out] rows (sums of squares in double), W in any
// storage dtype. With B undefined: the row norms of W.
std::vector<float> dora_weight_norms(const Tensor& weight, const Tensor& a, const Tensor& b,
                                     float scale);

class DoraAdapter : public LoraAdapter {
 public:
  // The magnitude starts at zero: call init_magnitude() once A, B and the base weight are final.
  DoraAdapter(const Linear& base, const LoraModuleOptions& options,
              std::shared_ptr<const LoraRuntime> runtime);

  Tensor apply(const Linear& base, const Tensor& x, const Tensor& base_out,
               Precision precision) const override;
  // DoRA rescales the base output: apply() on it, not LoRA's fused op (and computes the output
  // whatever `use` says).
  Tensor forward(const Linear& base, const Tensor& x, Precision precision,
                 OutputUse use = OutputUse::Read) const override {
    return LinearAdapter::forward(base, x, precision, use);
  }
  bool is_dora() const override { return true; }

  // m = || W + s B A ||_row of base's weight and the current A, B (PEFT's dora_init).
  void init_magnitude(const Linear& base);
  // m [out] from f32 values; throws naming the module on a size mismatch.
  void set_magnitude(const std::vector<float>& values);
  // [out], f32, requires_grad. PEFT name: ...<module>.lora_magnitude_vector
  const Tensor& magnitude() const { return magnitude_; }

 private:
  // 1 / n for base's weight and the current A, B; cached while all three are unchanged (the
  // weight by identity -- loom replaces weight tensors, it never writes them in place -- and A,
  // B by value).
  std::vector<float> inverse_norms(const Linear& base) const;

  struct NormCache {
    std::mutex mutex;
    std::weak_ptr<TensorImpl> weight;
    std::vector<float> a, b, inv_norms;
  };
  Tensor magnitude_;
  std::unique_ptr<NormCache> cache_ = std::make_unique<NormCache>();
};

}  // namespace loom
