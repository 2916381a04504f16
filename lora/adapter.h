// LoRA on one projection (layers/llama.h Linear), as PEFT's lora.Linear computes it:
//
//   y = base(x) + s * B (A dropout(x))        A [rank, in], B [out, rank], both f32, trainable
//   s = alpha / rank                          (LoRA)
//   s = alpha / sqrt(rank)                    (rsLoRA, `rslora`)
//
// A and B use PyTorch's nn.Linear layout ([out_features, in_features] each), so A is r x in and
// B is out x r, exactly as PEFT stores lora_A.weight / lora_B.weight. The adapter's two products
// always run in f32 (Precision::F32), whatever precision the base GEMMs use: LoRA is small next to
// the base (rank << in, out), and its parameters and their gradients stay f32.
//
// Dropout (PEFT's lora_dropout) is applied to the adapter's input only. Its mask is a hash of
// (seed, dropout step, layer, projection), never of a running RNG, so the recompute of a
// checkpointed block draws the same mask; the caller advances the step (LoraRuntime) once per
// forward/backward pass. Dropout is on when the runtime says `training`, independent of grad mode
// (checkpoint() runs its first forward with grad mode off, and the recompute must match it).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "layers/llama.h"

namespace loom {

// The LoRA scale s: alpha / rank, or alpha / sqrt(rank) with rsLoRA. Computed in double.
double lora_scale(double alpha, int64_t rank, bool rslora);

// State every adapter of one LoraModel reads at each apply(): train/eval mode and the dropout
// step. Change it between passes, never between a forward and its backward.
struct LoraRuntime {
  std::atomic<bool> training{true};
  std::atomic<uint64_t> dropout_step{0};
};

// The seed of one module's dropout mask: a hash of (seed, step, layer, projection).
uint64_t lora_dropout_seed(uint64_t seed, uint64_t step, int64_t layer, Projection kind);

// PEFT's parameter name for a module of the model: "base_model.model." + hf_name + "." + suffix,
// e.g. "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".
std::string peft_parameter_name(std::string_view hf_name, std::string_view suffix);

struct LoraModuleOptions {
  int64_t rank = 8;      // r
  double alpha = 8.0;    // lora_alpha
  bool rslora = false;   // s = alpha / sqrt(r) instead of alpha / r
  float dropout = 0.0f;  // lora_dropout, on the adapter input
  uint64_t seed = 0;     // of the dropout masks and of the random inits
};

class LoraAdapter : public LinearAdapter {
 public:
  // A and B are zero until an init_* or set_* call. The runtime may be null (always eval mode,
  // no dropout). `base` is read for its shape and names only.
  LoraAdapter(const Linear& base, const LoraModuleOptions& options,
              std::shared_ptr<const LoraRuntime> runtime);

  Tensor apply(const Linear& base, const Tensor& x, const Tensor& base_out,
               Precision precision) const override;
  // The same output as apply() on the base output, as one linear_low_rank op (the training path).
  Tensor forward(const Linear& base, const Tensor& x, Precision precision,
                 OutputUse use = OutputUse::Read) const override;
  // {dropout(x), A, B, s} (nullopt while merged): the LM head's term in the chunked loss.
  std::optional<LowRankTerm> low_rank_term(const Linear& base, const Tensor& x) const override;
  bool is_low_rank_term() const override { return !is_dora(); }

  // PEFT's default init (init_lora_weights=True): A Kaiming-uniform with a = sqrt(5), i.e.
  // U(-1/sqrt(in), 1/sqrt(in)), and B = 0, so the adapted model starts equal to the base.
  // Values come from a counter-based hash of (seed, layer, projection, element): the same seed
  // gives the same A on any machine and in any attach order (not torch's RNG stream).
  void init_kaiming_uniform(uint64_t seed);
  // PEFT's init_lora_weights="gaussian": A ~ N(0, 1/rank^2) (std 1/rank), B = 0.
  void init_gaussian(uint64_t seed);
  // Sets A [rank, in] / B [out, rank] from f32 values in row-major order; throws naming the module
  // on a size mismatch. Keeps the tensors (and their identity for an optimizer).
  void set_lora_a(const std::vector<float>& values);
  void set_lora_b(const std::vector<float>& values);

  const Tensor& lora_a() const { return a_; }  // [rank, in], f32, requires_grad
  const Tensor& lora_b() const { return b_; }  // [out, rank], f32, requires_grad
  int64_t rank() const { return options_.rank; }
  double alpha() const { return options_.alpha; }
  bool rslora() const { return options_.rslora; }
  float dropout() const { return options_.dropout; }
  uint64_t seed() const { return options_.seed; }
  double scale() const { return scale_; }  // s, see lora_scale
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  int64_t layer() const { return layer_; }
  Projection kind() const { return kind_; }
  const std::string& hf_name() const { return hf_name_; }  // of the projection it was made for
  virtual bool is_dora() const { return false; }

  // Merge bookkeeping (lora/merge.h): while merged, apply() returns the base output unchanged,
  // the projection's weight holds W + s B A and unmerged_weight() the original tensor.
  bool merged() const { return merged_weight_.defined(); }
  const Tensor& unmerged_weight() const { return merged_weight_; }
  void set_merged(Tensor original_weight) { merged_weight_ = std::move(original_weight); }

 protected:
  // Throws unless base / x have the shapes this adapter was made for.
  void check_call(const Linear& base, const Tensor& x) const;
  bool dropout_active() const;
  // dropout(x) with this module's mask for the current step when dropout_active(), else x.
  Tensor dropped_input(const Tensor& x) const;
  // B (A x), unscaled, [..., out]: both products in f32.
  Tensor lora_product(const Tensor& x) const;

  LoraModuleOptions options_;
  double scale_ = 0.0;
  int64_t in_ = 0, out_ = 0, layer_ = 0;
  Projection kind_ = Projection::Q;
  std::string hf_name_;
  Tensor a_, b_;
  std::shared_ptr<const LoraRuntime> runtime_;
  Tensor merged_weight_;  // the original base weight while merged
};

}  // namespace loom
