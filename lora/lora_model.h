// Attaching LoRA / DoRA adapters to a LlamaModel from one config value, and the adapters'
// trainable parameters under PEFT's names -- what the trainer, checkpoints and exports use.
//
// LoraModel(model, config) does, projection by projection (one matrix at a time):
//   1. select the targets (lora/targets.h) and each one's rank / alpha (rank_pattern,
//      alpha_pattern);
//   2. PiSSA (init pissa): SVD of the loaded weight, A/B from it, the weight replaced by the
//      residual, stored as base_dtype (lora/pissa.h); otherwise the weight is converted to
//      base_dtype (lora/qlora.h) -- non-targeted projections are converted too;
//   3. Kaiming-uniform A / zero B (init kaiming, PEFT's default) or Gaussian A / zero B;
//   4. DoRA: the magnitude vector from the final base weight and A, B.
//
// Parameter names (PEFT's adapter_model.safetensors keys), in a stable order -- by layer, then
// q, k, v, o, gate, up, down, the LM head last, then lora_A, lora_B, lora_magnitude_vector:
//   base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight   [r, in]
//   base_model.model.model.layers.N.self_attn.q_proj.lora_B.weight   [out, r]
//   base_model.model.model.layers.N.self_attn.q_proj.lora_magnitude_vector   [out] (DoRA)
//   base_model.model.lm_head.lora_A.weight / lora_B.weight   [r, D] / [V, r] (target lm_head)
// For a GGUF-loaded llama the q/k rows (B's rows, the magnitude) are in llama.cpp's permuted
// order (layers/model_config.h): an export for Hugging Face must un-permute them.
//
// An adapter on the LM head of a model with tied embeddings adapts the output only: merging
// and merged exports give the LM head its own weight (tie_word_embeddings false), the token
// embedding stays as it was.
//
// The model must outlive the LoraModel and not move: LoraModel keeps pointers to its Linear
// slots. Destroying the LoraModel leaves the adapters attached (call detach() to remove them).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "layers/llama.h"
#include "lora/adapter.h"
#include "lora/dora.h"
#include "lora/merge.h"
#include "lora/qlora.h"
#include "lora/targets.h"

namespace loom {

enum class LoraInit : uint8_t {
  Kaiming,   // PEFT init_lora_weights=True: A Kaiming-uniform(a=sqrt(5)), B = 0
  Gaussian,  // PEFT "gaussian": A ~ N(0, (1/r)^2), B = 0
  Pissa,     // PEFT "pissa": A, B from the top-r SVD of W, W replaced by the residual
};
std::string_view lora_init_name(LoraInit init);   // "kaiming", "gaussian", "pissa"
LoraInit parse_lora_init(std::string_view name);  // throws listing the valid names

struct LoraConfig {
  int64_t rank = 8;      // PEFT r
  double alpha = 8.0;    // PEFT lora_alpha
  float dropout = 0.0f;  // PEFT lora_dropout, on each adapter's input, in [0, 1)
  LoraTargets targets;   // PEFT target_modules / layers_to_transform
  bool rslora = false;   // PEFT use_rslora: scale alpha / sqrt(r) instead of alpha / r
  bool dora = false;     // PEFT use_dora
  LoraInit init = LoraInit::Kaiming;
  NamePatterns<int64_t> rank_pattern;      // PEFT rank_pattern
  NamePatterns<double> alpha_pattern;      // PEFT alpha_pattern
  BaseDType base_dtype = BaseDType::Keep;  // storage of the frozen projections (nf4: QLoRA)
  uint64_t seed = 0;                       // of the inits and the dropout masks

  // Throws naming the field on a bad value (rank <= 0, alpha <= 0, dropout outside [0, 1),
  // a regex that does not compile, ...).
  void validate() const;
  // "key: value" lines of every field, as a run prints them at its start.
  std::string describe() const;
  // One line: "LoRA r=16 alpha=32 (scale alpha/r = 2) on [q_proj, v_proj] in every layer".
  std::string summary() const;
};

// Throws unless `config` can go on the LM head (plain LoRA with a Kaiming or Gaussian init).
void check_lm_head_options(const LoraConfig& config);

struct LoraModule {
  Linear* linear = nullptr;
  std::shared_ptr<LoraAdapter> adapter;  // a DoraAdapter when config.dora
  // PiSSA only: the adapter's initial A [r, in] and B [out, r], whose s B0 A0 was taken out of
  // the base weight. An export that is applied to the ORIGINAL base (a llama.cpp adapter) needs
  // them to take that part out again. Empty for the other inits.
  std::vector<float> pissa_a0, pissa_b0;
};

struct LoraParameter {
  std::string name;  // PEFT name
  Tensor tensor;     // f32 leaf with requires_grad, the adapter's own tensor
};

class LoraModel {
 public:
  // Converts the base, initializes and attaches the adapters (see above). Throws when a
  // targeted projection already has an adapter.
  LoraModel(LlamaModel& model, LoraConfig config);
  LoraModel(const LoraModel&) = delete;
  LoraModel& operator=(const LoraModel&) = delete;
  LoraModel(LoraModel&&) = default;
  LoraModel& operator=(LoraModel&&) = default;

  const LoraConfig& config() const { return config_; }
  const std::vector<LoraModule>& modules() const { return modules_; }
  // The LM head's module when lm_head is targeted, else null.
  const LoraModule* head_module() const;
  const BaseConversion& base_conversion() const { return conversion_; }

  // Every trainable tensor with its PEFT name, in the stable order above.
  std::vector<LoraParameter> parameters() const;
  int64_t trainable_parameter_count() const;
  // The tensor named so; throws naming it (and the closest name) when there is none.
  Tensor parameter(std::string_view name) const;
  // Copies values into the named parameter; throws on an unknown name or a size mismatch.
  void set_parameter(std::string_view name, const std::vector<float>& values);
  // Sets parameters from (name, values) pairs: unknown names, wrong sizes and repeated names
  // throw; strict (checkpoint resume) also requires every parameter. All is checked before any
  // value is written; non-strict leaves the parameters not given as they are.
  void load_parameters(const std::vector<std::pair<std::string, std::vector<float>>>& values,
                       bool strict = true);
  void zero_grad();

  // Train mode (dropout on) or eval mode. Attach starts in train mode.
  void set_training(bool training);
  bool training() const { return runtime_->training.load(); }
  // The dropout step of the next pass(es): set it once per forward/backward pass (e.g.
  // step * accumulation + micro_batch), never between a forward and its backward.
  void set_dropout_step(uint64_t step);

  // Merges every adapter into an f32 / bf16 copy of its base weight (lora/merge.h), or undoes it.
  void merge(MergeDType dtype);
  void unmerge();
  bool merged() const;
  // Removes the adapters from the model's projections (merged weights stay merged).
  void detach();

  // "lora: 14 modules, 12,345 trainable parameters" and per-module rank / alpha / scale lines.
  std::string summary() const;

 private:
  LlamaModel* model_ = nullptr;
  LoraConfig config_;
  std::shared_ptr<LoraRuntime> runtime_;
  std::vector<LoraModule> modules_;
  BaseConversion conversion_;
};

}  // namespace loom
