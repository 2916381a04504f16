// Model hyper-parameters from GGUF metadata and from Hugging Face config.json (model_config.h).
#include "layers/model_config.h"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "autograd/check.h"
#include "layers/gguf.h"

namespace loom {

using nlohmann::json;

const std::vector<std::string>& supported_architectures() {
  static const std::vector<std::string> names = {"llama", "mistral", "qwen2"};
  return names;
}

const std::vector<std::string>& supported_gguf_architectures() {
  static const std::vector<std::string> names = {"llama", "qwen2"};
  return names;
}

void ModelConfig::validate() const {
  auto positive = [&](int64_t v, const char* what) {
    if (v <= 0) throw Error(fmt::format("{}: {} must be positive, found {}", source, what, v));
  };
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(intermediate_size, "intermediate_size");
  positive(n_layers, "the layer count");
  positive(n_heads, "the attention head count");
  positive(n_kv_heads, "the key/value head count");
  positive(head_dim, "head_dim");
  if (n_heads % n_kv_heads != 0)
    throw Error(fmt::format("{}: {} attention heads is not a multiple of {} key/value heads",
                            source, n_heads, n_kv_heads));
  const int64_t rotary = rope.rotary_dim == 0 ? head_dim : rope.rotary_dim;
  if (rotary % 2 != 0 || rotary > head_dim)
    throw Error(fmt::format("{}: rotary dims {} must be even and at most head_dim {}", source,
                            rotary, head_dim));
  if (!(rms_norm_eps > 0))
    throw Error(fmt::format("{}: rms_norm_eps must be positive, found {}", source, rms_norm_eps));
  if (!(rope.theta > 0))
    throw Error(fmt::format("{}: rope theta must be positive, found {}", source, rope.theta));
  if (!(rope_linear_factor > 0))
    throw Error(fmt::format("{}: linear rope factor must be positive, found {}", source,
                            rope_linear_factor));
}

std::string ModelConfig::describe() const {
  std::string rope_scaling = "none";
  if (rope.llama3_scaling) {
    const Llama3RopeScaling& s = *rope.llama3_scaling;
    rope_scaling = fmt::format(
        "llama3 (factor {}, low_freq_factor {}, high_freq_factor {}, "
        "original_max_position_embeddings {})",
        s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_position_embeddings);
  } else if (rope_linear_factor != 1.0f) {
    rope_scaling = fmt::format("linear (factor {})", rope_linear_factor);
  }
  std::string out;
  auto line = [&](std::string_view key, const auto& value) {
    std::string padded(key);
    padded.resize(std::max<size_t>(padded.size(), 24), ' ');
    out += fmt::format("{} {}\n", padded, value);
  };
  line("source", source);
  line("architecture", architecture);
  line("vocab_size", vocab_size);
  line("hidden_size", hidden_size);
  line("intermediate_size", intermediate_size);
  line("layers", n_layers);
  line("heads / kv heads", fmt::format("{} / {}", n_heads, n_kv_heads));
  line("head_dim", head_dim);
  line("rms_norm_eps", rms_norm_eps);
  line("rope theta", rope.theta);
  line("rope dims", rope.rotary_dim == 0 ? head_dim : rope.rotary_dim);
  line("rope layout", rope.style == RopeStyle::Half ? "half (rotate_half / NeoX)"
                                                    : "interleaved (llama.cpp GGUF llama)");
  line("rope scaling", rope_scaling);
  line("max_position_embeddings", max_position_embeddings);
  line("sliding_window",
       sliding_window == 0 ? std::string("none") : std::to_string(sliding_window));
  line("tied embeddings", tie_word_embeddings ? "yes" : "no");
  line("attention biases", fmt::format("q/k/v {}, o {}", attention_qkv_bias ? "yes" : "no",
                                       attention_out_bias ? "yes" : "no"));
  return out;
}

namespace {

std::string supported_list(const std::vector<std::string>& names) {
  std::string out;  // joined by hand: fmt::join's runtime spec parsing trips a GCC 12 warning
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

// ---- GGUF ------------------------------------------------------------------------------------

int64_t gguf_int_or(const GgufFile& f, const std::string& key, int64_t fallback) {
  return f.has(key) ? f.get_int(key) : fallback;
}
double gguf_float_or(const GgufFile& f, const std::string& key, double fallback) {
  return f.has(key) ? f.get_float(key) : fallback;
}

}  // namespace

ModelConfig config_from_gguf(const GgufFile& file) {
  ModelConfig c;
  c.source = file.path();
  if (!file.has("general.architecture"))
    throw Error(fmt::format("{}: no general.architecture key; not a model file?", file.path()));
  const std::string arch = file.architecture();
  const auto& gguf_archs = supported_gguf_architectures();
  if (std::find(gguf_archs.begin(), gguf_archs.end(), arch) == gguf_archs.end())
    throw Error(
        fmt::format("{}: architecture '{}' is not supported; supported GGUF architectures: "
                    "{} (llama.cpp writes Mistral models as 'llama')",
                    file.path(), arch, supported_list(gguf_archs)));
  c.architecture = arch;
  const std::string p = arch + ".";
  c.hidden_size = file.get_int(p + "embedding_length");
  c.intermediate_size = file.get_int(p + "feed_forward_length");
  c.n_layers = file.get_int(p + "block_count");
  c.n_heads = file.get_int(p + "attention.head_count");
  c.n_kv_heads = gguf_int_or(file, p + "attention.head_count_kv", c.n_heads);
  c.head_dim =
      gguf_int_or(file, p + "attention.key_length", c.n_heads > 0 ? c.hidden_size / c.n_heads : 0);
  const int64_t value_dim = gguf_int_or(file, p + "attention.value_length", c.head_dim);
  if (value_dim != c.head_dim)
    throw Error(
        fmt::format("{}: {}attention.value_length {} differs from the key length {}; loom "
                    "needs equal key and value head dims",
                    file.path(), p, value_dim, c.head_dim));
  c.rms_norm_eps = static_cast<float>(file.get_float(p + "attention.layer_norm_rms_epsilon"));
  c.rope.theta = static_cast<float>(gguf_float_or(file, p + "rope.freq_base", 10000.0));
  const int64_t rot = gguf_int_or(file, p + "rope.dimension_count", c.head_dim);
  c.rope.rotary_dim = rot == c.head_dim ? 0 : rot;
  c.rope.style = arch == "qwen2" ? RopeStyle::Half : RopeStyle::Interleaved;
  c.max_position_embeddings = gguf_int_or(file, p + "context_length", 0);

  const std::string scaling_key = p + "rope.scaling.type";
  const std::string scaling = file.has(scaling_key) ? file.get_string(scaling_key) : "none";
  if (scaling == "linear") {
    c.rope_linear_factor = static_cast<float>(file.get_float(p + "rope.scaling.factor"));
  } else if (scaling != "none") {
    throw Error(
        fmt::format("{}: {} is '{}'; supported: none, linear (Llama-3 scaling comes as a "
                    "rope_freqs.weight tensor)",
                    file.path(), scaling_key, scaling));
  }

  if (file.has(p + "vocab_size")) {
    c.vocab_size = file.get_int(p + "vocab_size");
  } else if (const GgufTensorInfo* embd = file.find_tensor("token_embd.weight")) {
    c.vocab_size = embd->shape.empty() ? 0 : embd->shape[0];
  } else {
    throw Error(
        fmt::format("{}: neither {}vocab_size nor a token_embd.weight tensor gives the "
                    "vocabulary size",
                    file.path(), p));
  }
  c.tie_word_embeddings = file.find_tensor("output.weight") == nullptr;
  c.attention_qkv_bias = file.find_tensor("blk.0.attn_q.bias") != nullptr;
  c.attention_out_bias = file.find_tensor("blk.0.attn_output.bias") != nullptr;
  c.validate();
  return c;
}

// ---- Hugging Face config.json ----------------------------------------------------------------

namespace {

class JsonConfig {
 public:
  JsonConfig(const json& j, std::string source) : j_(j), source_(std::move(source)) {}

  bool has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }

  int64_t integer(const char* key) const {
    if (!has(key)) throw Error(fmt::format("{}: missing key '{}'", source_, key));
    return integer_of(j_.at(key), key);
  }
  int64_t integer_or(const char* key, int64_t fallback) const {
    return has(key) ? integer(key) : fallback;
  }
  double number_or(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_number())
      throw Error(fmt::format("{}: '{}' is {}, expected a number", source_, key, v.type_name()));
    return v.get<double>();
  }
  bool boolean_or(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_boolean())
      throw Error(
          fmt::format("{}: '{}' is {}, expected true or false", source_, key, v.type_name()));
    return v.get<bool>();
  }
  std::string string_or(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_string())
      throw Error(fmt::format("{}: '{}' is {}, expected a string", source_, key, v.type_name()));
    return v.get<std::string>();
  }
  int64_t integer_of(const json& v, const std::string& key) const {
    if (!v.is_number_integer() &&
        !(v.is_number_float() && v.get<double>() == static_cast<int64_t>(v.get<double>())))
      throw Error(fmt::format("{}: '{}' is {} ({}), expected an integer", source_, key,
                              v.type_name(), v.dump()));
    return v.is_number_integer() ? v.get<int64_t>() : static_cast<int64_t>(v.get<double>());
  }
  const json& at(const char* key) const { return j_.at(key); }
  const std::string& source() const { return source_; }

 private:
  const json& j_;
  std::string source_;
};

// "LlamaForCausalLM" -> "llama", for files without model_type.
std::string arch_from_class(const std::string& cls) {
  if (cls == "LlamaForCausalLM") return "llama";
  if (cls == "MistralForCausalLM") return "mistral";
  if (cls == "Qwen2ForCausalLM") return "qwen2";
  return cls;
}

void read_rope_scaling(const JsonConfig& cfg, ModelConfig& c) {
  if (!cfg.has("rope_scaling")) return;
  const json& rs = cfg.at("rope_scaling");
  if (!rs.is_object())
    throw Error(fmt::format("{}: 'rope_scaling' is {}, expected an object or null", cfg.source(),
                            rs.type_name()));
  const JsonConfig s(rs, cfg.source() + " rope_scaling");
  const std::string type = s.string_or("rope_type", s.string_or("type", "default"));
  if (type == "default") return;
  if (type == "linear") {
    c.rope_linear_factor = static_cast<float>(s.number_or("factor", 1.0));
    return;
  }
  if (type == "llama3") {
    Llama3RopeScaling l3;
    l3.factor = static_cast<float>(s.number_or("factor", l3.factor));
    l3.low_freq_factor = static_cast<float>(s.number_or("low_freq_factor", l3.low_freq_factor));
    l3.high_freq_factor = static_cast<float>(s.number_or("high_freq_factor", l3.high_freq_factor));
    l3.original_max_position_embeddings =
        s.integer_or("original_max_position_embeddings", l3.original_max_position_embeddings);
    c.rope.llama3_scaling = l3;
    return;
  }
  throw Error(
      fmt::format("{}: rope_scaling type '{}' is not supported; supported: default, "
                  "linear, llama3",
                  cfg.source(), type));
}

}  // namespace

ModelConfig config_from_hf_json_text(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(fmt::format("{}: not valid JSON: {}", source, e.what()));
  }
  if (!j.is_object())
    throw Error(fmt::format("{}: expected a JSON object, found {}", source, j.type_name()));
  const JsonConfig cfg(j, source);

  ModelConfig c;
  c.source = source;
  std::string arch = cfg.string_or("model_type", "");
  if (arch.empty() && cfg.has("architectures") && cfg.at("architectures").is_array() &&
      !cfg.at("architectures").empty() && cfg.at("architectures")[0].is_string())
    arch = arch_from_class(cfg.at("architectures")[0].get<std::string>());
  const auto& archs = supported_architectures();
  if (std::find(archs.begin(), archs.end(), arch) == archs.end())
    throw Error(fmt::format("{}: architecture '{}' (model_type) is not supported; supported: {}",
                            source, arch.empty() ? "<missing>" : arch, supported_list(archs)));
  c.architecture = arch;

  const std::string act = cfg.string_or("hidden_act", "silu");
  if (act != "silu")
    throw Error(fmt::format("{}: hidden_act '{}' is not supported; loom's SwiGLU needs 'silu'",
                            source, act));
  if (cfg.boolean_or("mlp_bias", false))
    throw Error(
        fmt::format("{}: mlp_bias true is not supported (Llama-family MLPs have no "
                    "biases)",
                    source));

  c.vocab_size = cfg.integer("vocab_size");
  c.hidden_size = cfg.integer("hidden_size");
  c.intermediate_size = cfg.integer("intermediate_size");
  c.n_layers = cfg.integer("num_hidden_layers");
  c.n_heads = cfg.integer("num_attention_heads");
  c.n_kv_heads = cfg.integer_or("num_key_value_heads", c.n_heads);
  c.head_dim = cfg.integer_or("head_dim", c.n_heads > 0 ? c.hidden_size / c.n_heads : 0);
  c.rms_norm_eps = static_cast<float>(cfg.number_or("rms_norm_eps", 1e-6));
  c.rope.theta = static_cast<float>(cfg.number_or("rope_theta", 10000.0));
  c.rope.style = RopeStyle::Half;  // Hugging Face checkpoints are laid out for rotate_half
  read_rope_scaling(cfg, c);
  c.max_position_embeddings = cfg.integer_or("max_position_embeddings", 0);
  c.tie_word_embeddings = cfg.boolean_or("tie_word_embeddings", false);

  if (arch == "llama") {
    c.attention_qkv_bias = c.attention_out_bias = cfg.boolean_or("attention_bias", false);
  } else if (arch == "qwen2") {
    c.attention_qkv_bias = true;  // Qwen2 always has q/k/v biases and none on o_proj
    if (cfg.boolean_or("use_sliding_window", false))
      c.sliding_window = cfg.integer_or("sliding_window", 0);
  } else if (arch == "mistral") {
    c.sliding_window = cfg.integer_or("sliding_window", 0);
  }
  c.validate();
  return c;
}

ModelConfig config_from_hf_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open the model config", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return config_from_hf_json_text(ss.str(), path);
}

}  // namespace loom
