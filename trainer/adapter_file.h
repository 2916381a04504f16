// loom's own adapter format, what a training run leaves in <run>/adapter/:
//
//   adapter_model.safetensors  every trainable tensor, f32, under its PEFT name
//                              (base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight
//                              [r, in], ...lora_B.weight [out, r], DoRA ...lora_magnitude_vector)
//   loom_adapter.json          what is needed to attach it again: format "loom-lora", version,
//                              base_model (path), architecture, base_dtype, rank, alpha, rslora,
//                              dora, init, scale and scale_convention ("alpha/rank" or
//                              "alpha/sqrt(rank)"), targets / target_regex / layers, rank_pattern,
//                              alpha_pattern, dropout, seed, q_k_row_order, step
//
// q_k_row_order is "gguf" when the base came from a GGUF file: llama.cpp permutes the q/k rows
// (layers/model_config.h), so q/k lora_B rows are in that order; "hf" otherwise. Both files are
// written through a temporary file and renamed. The header uses no lora/ or recipe types, so
// any file may include it (train_plan.h says why that matters).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "autograd/kernels/gemm.h"  // Precision
#include "autograd/tensor.h"

namespace loom {

class LoraModel;
class LlamaModel;

inline constexpr int kAdapterFormatVersion = 1;

struct AdapterTensor {
  std::string name;
  Shape shape;
  std::vector<float> values;
};

// Writes both files into `dir` (created if needed).
void save_adapter(const std::string& dir, const LoraModel& lora, const LlamaModel& model,
                  const std::string& model_path, int64_t step);

// loom_adapter.json, checked for format and version (errors name the file and the key).
nlohmann::json read_adapter_config(const std::string& dir);
// The tensors of adapter_model.safetensors, in file order.
std::vector<AdapterTensor> read_adapter_tensors(const std::string& dir);

// Loads the base model the adapter names, converts and adapts it as the config says, sets the
// adapter's tensors (from the file, or `tensors` when given -- e.g. a checkpoint's), and returns
// the logits [batch * seq_len, V] of `ids` in eval mode (no dropout). For checking that a saved
// adapter reproduces what training ended with.
std::vector<float> adapter_logits(const std::string& adapter_dir, std::span<const int32_t> ids,
                                  int64_t batch, int64_t seq_len, Precision precision,
                                  const std::vector<AdapterTensor>* tensors = nullptr);

}  // namespace loom
