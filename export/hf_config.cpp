// config.json / generation_config.json for merged Hugging Face exports (hf_config.h).
#include "export/hf_config.h"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "autograd/check.h"

namespace loom {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

// The float as its shortest decimal (1e-05, not 9.999999747378752e-06).
double shortest(float f) {
  return std::stod(fmt::format("{}", f));
}

void put_ids(ojson& j, const HfSpecialIds& ids) {
  if (ids.bos >= 0) j["bos_token_id"] = ids.bos;
  if (ids.eos >= 0) j["eos_token_id"] = ids.eos;
  if (ids.pad >= 0) j["pad_token_id"] = ids.pad;
}

ojson rope_scaling(const ModelConfig& c) {
  if (c.rope.llama3_scaling) {
    const Llama3RopeScaling& s = *c.rope.llama3_scaling;
    return {{"factor", shortest(s.factor)},
            {"high_freq_factor", shortest(s.high_freq_factor)},
            {"low_freq_factor", shortest(s.low_freq_factor)},
            {"original_max_position_embeddings", s.original_max_position_embeddings},
            {"rope_type", "llama3"}};
  }
  if (c.rope_linear_factor != 1.0f)
    return {{"factor", shortest(c.rope_linear_factor)}, {"rope_type", "linear"}};
  return nullptr;
}

// What a config.json cannot describe about a model loaded from GGUF.
void check_expressible(const LlamaModel& model) {
  const ModelConfig& c = model.config();
  if (!model.weights().rope_freq_factors.empty())
    throw Error(fmt::format(
        "{}: the model scales its rope by a rope_freqs.weight tensor (how llama.cpp stores "
        "Llama-3.1 rope scaling); config.json needs the rope_scaling parameters, which the GGUF "
        "does not keep, so a Hugging Face export of it is not supported -- export from the "
        "original Hugging Face folder instead",
        c.source));
  if (c.rope.rotary_dim != 0 && c.rope.rotary_dim != c.head_dim)
    throw Error(fmt::format(
        "{}: rope rotates {} of {} head dims; transformers' {} rotates whole "
        "heads, so a Hugging Face export is not supported",
        c.source, c.rope.rotary_dim, c.head_dim, hf_architecture_class(c.architecture)));
}

}  // namespace

std::string hf_architecture_class(const std::string& architecture) {
  if (architecture == "llama") return "LlamaForCausalLM";
  if (architecture == "mistral") return "MistralForCausalLM";
  if (architecture == "qwen2") return "Qwen2ForCausalLM";
  throw Error(
      fmt::format("hf export: architecture '{}' has no Hugging Face class here; "
                  "supported: llama, mistral, qwen2",
                  architecture));
}

std::string hf_torch_dtype(MergeDType dtype) {
  return dtype == MergeDType::F32 ? "float32" : "bfloat16";
}

HfAttentionBiases hf_attention_biases(const LlamaModel& model) {
  const ModelConfig& c = model.config();
  if (c.architecture == "llama") {
    const bool any = c.attention_qkv_bias || c.attention_out_bias;  // attention_bias: all four
    return {any, any};
  }
  if (c.architecture == "qwen2") {
    if (c.attention_out_bias)
      throw Error(
          fmt::format("{}: the o projection has a bias, which transformers' "
                      "Qwen2ForCausalLM has no parameter for",
                      c.source));
    return {true, false};  // Qwen2 always has q/k/v biases
  }
  if (c.attention_qkv_bias || c.attention_out_bias)
    throw Error(
        fmt::format("{}: attention biases in a {} model, which transformers' {} has no "
                    "parameters for",
                    c.source, c.architecture, hf_architecture_class(c.architecture)));
  return {false, false};
}

ojson hf_config_from_model(const LlamaModel& model, const HfSpecialIds& ids, MergeDType dtype) {
  check_expressible(model);
  const ModelConfig& c = model.config();
  const HfAttentionBiases biases = hf_attention_biases(model);
  ojson j;
  j["architectures"] = {hf_architecture_class(c.architecture)};
  j["model_type"] = c.architecture;
  j["attention_dropout"] = 0.0;
  put_ids(j, ids);
  j["head_dim"] = c.head_dim;
  j["hidden_act"] = "silu";
  j["hidden_size"] = c.hidden_size;
  j["initializer_range"] = 0.02;
  j["intermediate_size"] = c.intermediate_size;
  if (c.max_position_embeddings > 0) j["max_position_embeddings"] = c.max_position_embeddings;
  j["num_attention_heads"] = c.n_heads;
  j["num_hidden_layers"] = c.n_layers;
  j["num_key_value_heads"] = c.n_kv_heads;
  j["rms_norm_eps"] = shortest(c.rms_norm_eps);
  j["rope_scaling"] = rope_scaling(c);
  j["rope_theta"] = shortest(c.rope.theta);
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["torch_dtype"] = hf_torch_dtype(dtype);
  j["use_cache"] = true;
  j["vocab_size"] = c.vocab_size;
  if (c.architecture == "llama") {
    j["attention_bias"] = biases.qkv;
    j["mlp_bias"] = false;
    j["pretraining_tp"] = 1;
  } else if (c.architecture == "mistral") {
    j["sliding_window"] = c.sliding_window > 0 ? ojson(c.sliding_window) : ojson(nullptr);
  } else {  // qwen2
    j["use_sliding_window"] = c.sliding_window > 0;
    j["sliding_window"] = c.sliding_window > 0 ? ojson(c.sliding_window) : ojson(nullptr);
    j["max_window_layers"] = c.n_layers;
  }
  return j;
}

ojson hf_config_from_source(const std::string& source_dir, const LlamaModel& model,
                            MergeDType dtype) {
  const std::string path = (fs::path(source_dir) / "config.json").string();
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open the source model's config", path));
  std::stringstream text;
  text << in.rdbuf();
  ojson j;
  try {
    j = ojson::parse(text.str());
  } catch (const ojson::exception& e) {
    throw Error(fmt::format("{}: not valid JSON: {}", path, e.what()));
  }
  const ModelConfig source = config_from_hf_json_text(text.str(), path);
  const ModelConfig& c = model.config();
  const bool same = source.architecture == c.architecture && source.vocab_size == c.vocab_size &&
                    source.hidden_size == c.hidden_size && source.n_layers == c.n_layers &&
                    source.n_heads == c.n_heads && source.n_kv_heads == c.n_kv_heads &&
                    source.intermediate_size == c.intermediate_size &&
                    source.tie_word_embeddings == c.tie_word_embeddings &&
                    source.rope.style == c.rope.style;
  if (!same)
    throw Error(
        fmt::format("hf export: {} does not describe the model given (loaded from {}): "
                    "export with the folder the model was loaded from",
                    path, c.source));
  hf_attention_biases(model);  // refuses biases the class has no parameters for
  j["torch_dtype"] = hf_torch_dtype(dtype);
  return j;
}

ojson hf_generation_config(const HfSpecialIds& ids) {
  ojson j;
  j["_from_model_config"] = true;
  put_ids(j, ids);
  return j;
}

}  // namespace loom
