// Attaching an adapter made anywhere to its base model: a loom training run (its directory, or
// its adapter/ folder), a Hugging Face PEFT adapter folder, or a llama.cpp LoRA adapter GGUF.
// `loom export`, `loom eval --adapter` and `loom generate --adapter` start here.
//
//   run dir / loom adapter   loom_adapter.json names the base (base_model) and how it was
//                            converted (base_dtype: a QLoRA base is NF4 again, as trained)
//   PEFT folder              adapter_config.json; the base is --base, else base_model_name_or_path
//                            when that is a local path
//   GGUF adapter             general.type "adapter"; the base must be given
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "lora/lora_model.h"
#include "trainer/train_internal.h"

namespace loom {

struct AdaptedModel {
  TrainingModel base;  // the model (heap) and its tokenizer
  std::unique_ptr<LoraModel> lora;
  std::string base_path;     // what the base was loaded from
  std::string adapter_path;  // as given
  std::string kind;          // "loom", "peft" or "gguf"
  std::string run_dir;       // a loom run's directory (recipe.yaml, held-out data); else ""
};

// The LoraConfig a loom_adapter.json describes.
LoraConfig lora_config_from_adapter_json(const nlohmann::json& j);

// Loads the base and attaches the adapter at `adapter_path`, in eval mode. base_override
// replaces the base the adapter names (required for GGUF adapters). Errors name the path and
// say which of the three layouts was expected.
AdaptedModel load_adapted_model(const std::string& adapter_path, const std::string& base_override);

// An adapter to keep training (a recipe's lora.init_from): any of the three layouts above, read
// against the model it will be attached to. `config` is the adapter's own structure (rank,
// alpha, targets, patterns, rsLoRA, DoRA, init); the caller sets the training's base dtype,
// dropout and seed, constructs the LoraModel and calls load_adapter_to_train.
struct AdapterToTrain {
  std::string path;
  std::string kind;  // "loom", "peft" or "gguf"
  LoraConfig config;
  std::vector<std::pair<std::string, std::vector<float>>>
      values;  // loom and gguf (PEFT: read later)
};
AdapterToTrain read_adapter_to_train(const std::string& path, const LlamaModel& model);
// Sets lora's tensors from the adapter (every tensor, strictly: names and shapes must match).
void load_adapter_to_train(const AdapterToTrain& adapter, LoraModel& lora, const LlamaModel& model);

}  // namespace loom
