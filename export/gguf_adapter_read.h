// Reading llama.cpp LoRA adapter GGUFs -- loom's own (export/gguf_export.h) and those made by
// llama.cpp's convert_lora_to_gguf.py -- back into a LoraModel, to evaluate, merge or keep
// training them.
//
// The file must say general.type "adapter" and adapter.type "lora", and name the model's
// architecture (general.architecture; Mistral is "llama"). Each adapted projection has
// `<base tensor>.lora_a` (ne [in, r], any dtype loom reads) and `.lora_b` (ne [r, out]); the
// rank of each module is lora_b's ne[0]. llama.cpp scales every module by
// adapter.lora.alpha / rank, or by 1 when the file has no alpha (or 0): the LoraConfig made
// here reproduces that -- alpha = the file's alpha, rank = the most common rank, and
// rank_pattern (and alpha_pattern for the alpha-less case) for the modules that differ, keyed by
// their full module names; no rsLoRA, no DoRA. q/k lora_b rows are brought from llama.cpp's order
// into the model's (layers/model_config.h).
//
// Tensors llama.cpp's loader skips (`*_norm.weight`, which mergekit adds) are skipped here too
// and listed in `ignored`. Adapters on the token embedding or the output projection (which loom
// never adapts) and any other tensor are refused with an error naming it.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "lora/lora_model.h"

namespace loom {

struct GgufAdapterContents {
  std::string path;
  std::string architecture;  // general.architecture
  double alpha = 0.0;        // adapter.lora.alpha; 0 when absent (llama.cpp then uses scale 1)
  LoraConfig config;         // targets, ranks and alphas as above; other fields at defaults
  // (PEFT parameter name, f32 values) for LoraModel::load_parameters, q/k rows in the model's
  // order.
  std::vector<std::pair<std::string, std::vector<float>>> values;
  std::vector<std::string> ignored;  // tensors skipped, as llama.cpp skips them
};

// Reads and checks `path` against `model` (names, shapes, architecture); attaches nothing.
// Errors name the file and the tensor or key, what was expected and what was found.
GgufAdapterContents read_gguf_adapter(const std::string& path, const LlamaModel& model);

// read_gguf_adapter, then a LoraModel on `model` with its values, in eval mode. To keep training
// with other settings (dropout, seed, a QLoRA base), read, edit contents.config, construct the
// LoraModel and call load_parameters(contents.values) instead.
LoraModel load_gguf_adapter(const std::string& path, LlamaModel& model,
                            GgufAdapterContents* contents = nullptr);

}  // namespace loom
