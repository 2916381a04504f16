// Exporting a trained adapter as a Hugging Face PEFT LoRA adapter directory:
//
//   adapter_config.json        exactly the keys peft 0.15.2's LoraConfig.to_dict() has (so
//                              PeftModel.from_pretrained loads it without "unexpected keyword"
//                              warnings): peft_type LORA, task_type CAUSAL_LM, r, lora_alpha,
//                              target_modules, layers_to_transform, rank_pattern, alpha_pattern,
//                              use_rslora, use_dora, lora_dropout, init_lora_weights, bias "none",
//                              fan_in_fan_out false, base_model_name_or_path, inference_mode
//                              true...
//   adapter_model.safetensors  f32, PEFT's names and shapes:
//                              base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight [r,
//                              in]
//                              ...lora_B.weight [out, r], DoRA ...lora_magnitude_vector [out];
//                              metadata format "pt" + loom's scale convention
//
// The config is derived from the adapters actually attached, not from the recipe's spelling of
// them (a recipe may name GGUF stems like "attn_q" that PEFT would not know): target_modules is
// the list of projection names with layers_to_transform when the adapted modules are every
// (projection, layer) pair of two sets, else a regex naming each module; ranks and alphas that
// differ from r / lora_alpha go into rank_pattern / alpha_pattern (by projection name when all
// its modules agree, else by module).
//
// For a GGUF-loaded llama (q/k rows in llama.cpp's order, export/qk_rows.h) the q_proj / k_proj
// lora_B rows and DoRA magnitudes are put back into Hugging Face order, so the adapter applies to
// the original Hugging Face model. The directory is written through a StagingDir (all or nothing).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "autograd/tensor.h"
#include "export/export_dir.h"
#include "lora/lora_model.h"

namespace loom {

inline constexpr const char* kPeftConfigFile = "adapter_config.json";
inline constexpr const char* kPeftTensorsFile = "adapter_model.safetensors";

struct PeftExportOptions {
  // What adapter_config.json names as the base (a hub id or a folder PEFT can load); empty: the
  // source path the model was loaded from.
  std::string base_model_name_or_path;
  bool replace_existing = false;  // replace an existing output directory
};

struct PeftTensor {
  std::string name;  // PEFT's key in adapter_model.safetensors
  Shape shape;
  std::vector<float> values;  // f32, row-major, Hugging Face row order
};

// The adapter's tensors as PEFT stores them, in LoraModel::parameters() order.
std::vector<PeftTensor> peft_adapter_tensors(const LoraModel& lora, const LlamaModel& model);

// adapter_config.json's content (see above). n_layers bounds layers_to_transform.
nlohmann::json peft_adapter_config(const LoraModel& lora, int64_t n_layers,
                                   const std::string& base_model_name_or_path);

// Writes out_dir/{adapter_config.json, adapter_model.safetensors}. source_path is the model's
// GGUF file or Hugging Face folder (the default base_model_name_or_path). The report's notes say
// when the base named is a GGUF file, which PEFT cannot load.
ExportReport export_peft_adapter(const std::string& out_dir, const LoraModel& lora,
                                 const LlamaModel& model, const std::string& source_path,
                                 const PeftExportOptions& options = {});

}  // namespace loom
