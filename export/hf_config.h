// config.json and generation_config.json of a merged Hugging Face export (export/hf_export.h).
//
// From a Hugging Face source folder, config.json is the folder's own (every field it had), with
// torch_dtype set to what the export writes. From a GGUF file it is synthesized from the model's
// hyper-parameters and the tokenizer's special token ids, with the class transformers needs for
// the architecture (llama -> LlamaForCausalLM, mistral -> MistralForCausalLM, qwen2 ->
// Qwen2ForCausalLM): hidden_size, intermediate_size, num_attention_heads, num_key_value_heads,
// head_dim, num_hidden_layers, rms_norm_eps, rope_theta, rope_scaling, max_position_embeddings,
// vocab_size, tie_word_embeddings, attention_bias, bos / eos / pad ids, torch_dtype, ...
// What config.json cannot say is refused with the reason: Llama-3 rope scaling stored as a
// GGUF rope_freqs.weight tensor (its parameters are not in the file), partial rotary dims,
// biases the architecture's transformers class has no parameter for.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "layers/llama.h"
#include "lora/merge.h"

namespace loom {

struct HfSpecialIds {
  int32_t bos = -1, eos = -1, pad = -1;  // -1: none
};

// "LlamaForCausalLM", "MistralForCausalLM" or "Qwen2ForCausalLM".
std::string hf_architecture_class(const std::string& architecture);
// "float32" / "bfloat16".
std::string hf_torch_dtype(MergeDType dtype);

// Which attention projections have biases in the transformers model the config describes
// (it creates those parameters, so a model without them gets zeros written). Throws when the
// model has a bias the class has no parameter for.
struct HfAttentionBiases {
  bool qkv = false;
  bool out = false;
};
HfAttentionBiases hf_attention_biases(const LlamaModel& model);

// Synthesized config.json (see above); throws for what it cannot express.
nlohmann::ordered_json hf_config_from_model(const LlamaModel& model, const HfSpecialIds& ids,
                                            MergeDType dtype);
// The source folder's config.json with torch_dtype set; throws when it does not describe
// `model` (another model's folder).
nlohmann::ordered_json hf_config_from_source(const std::string& source_dir, const LlamaModel& model,
                                             MergeDType dtype);
// generation_config.json with the special token ids.
nlohmann::ordered_json hf_generation_config(const HfSpecialIds& ids);

}  // namespace loom
