// Reading a Hugging Face PEFT LoRA adapter directory (made by export_peft_adapter or by peft
// itself) onto a loaded base model: adapter_config.json -> LoraConfig, then the tensors of
// adapter_model.safetensors into the adapters (any of F32 / BF16 / F16; kept as f32).
//
// Supported: peft_type LORA, task_type CAUSAL_LM (or null), target_modules as a list, a regex
// string or "all-linear", layers_to_transform (layers_pattern null or "layers"), rank_pattern,
// alpha_pattern, use_rslora, use_dora, lora_dropout, init_lora_weights true / false /
// "gaussian" / "pissa" (PiSSA recomputes the residual base from the loaded weights, as PEFT
// does when it loads such an adapter). Anything else that changes what the adapter computes
// (bias other than "none", modules_to_save, fan_in_fan_out, lora_bias, exclude_modules,
// trainable_token_indices, layer_replication, megatron_config, other inits, other PEFT types,
// an unknown key with a non-empty value) is an error naming the key. adapter_model.bin (a
// pickle) is refused: convert it to safetensors first.
//
// For a GGUF-loaded llama the q/k lora_B rows and DoRA magnitudes are permuted from Hugging Face
// order into the model's (export/qk_rows.h). Tensor names must be exactly the adapter's
// parameters (one of each), with the shapes the config gives on this model.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "lora/lora_model.h"

namespace loom {

struct PeftAdapterConfig {
  LoraConfig lora;                      // what to attach
  std::string base_model_name_or_path;  // as the file says ("" when null)
};

// From adapter_config.json's parsed content (an ordered object keeps pattern order as PEFT
// sees it); `source` names the file in errors.
PeftAdapterConfig peft_config_from_json(const nlohmann::ordered_json& j, const std::string& source);
// dir/adapter_config.json.
PeftAdapterConfig read_peft_adapter_config(const std::string& dir);

// Attaches the adapter in `dir` to `model` (LoraModel(model, config) with base_dtype as given:
// Keep, or NF4 for QLoRA) and sets its tensors. The LoraModel starts in train mode like any
// other (dropout on): call set_training(false) to evaluate. On an error the adapters are
// detached again (a base conversion or PiSSA residual already made stays).
LoraModel load_peft_adapter(const std::string& dir, LlamaModel& model,
                            BaseDType base_dtype = BaseDType::Keep);

// Sets the tensors of an already attached `lora` (made from this folder's config, perhaps with
// another base dtype, dropout or seed) from dir/adapter_model.safetensors, as load_peft_adapter.
void load_peft_tensors(const std::string& dir, LoraModel& lora, const LlamaModel& model);

}  // namespace loom
