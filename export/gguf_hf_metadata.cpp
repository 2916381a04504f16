// GGUF metadata from a Hugging Face model's config and tokenizer (gguf_hf_metadata.h).
#include "export/gguf_hf_metadata.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numbers>
#include <optional>

#include "autograd/check.h"
#include "export/gguf_qk_order.h"
#include "layers/model_config.h"
#include "layers/tokenizer.h"
#include "layers/tokenizer_internal.h"  // the regexes behind tokenizer.ggml.pre

namespace loom {

namespace {

// Llama 3's and Qwen 2's tokenizer.json spell the contractions case-insensitively; loom's
// presets spell them as llama.cpp does ([sS] ...). The same split either way, but for U+017F,
// which (?i:s) also matches under Unicode case folding (llama.cpp's converter maps these
// tokenizer.json files to the same names).
std::string canonical_regex(std::string r) {
  constexpr std::string_view kHf = R"((?i:'s|'t|'re|'ve|'m|'ll|'d))";
  constexpr std::string_view kLlamaCpp =
      R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]))";
  if (r.rfind(kHf, 0) == 0) r = std::string(kLlamaCpp) + r.substr(kHf.size());
  return r;
}

GgufValue u32(int64_t v) {
  return GgufValue(static_cast<uint32_t>(v));
}

GgufValue string_array(std::vector<std::string> items) {
  GgufArray a{GgufType::STRING, {}};
  a.items.reserve(items.size());
  for (std::string& s : items) a.items.emplace_back(GgufValue(std::move(s)));
  return GgufValue(std::move(a));
}

GgufValue int32_array(const std::vector<int32_t>& items) {
  GgufArray a{GgufType::INT32, {}};
  a.items.reserve(items.size());
  for (int32_t v : items) a.items.emplace_back(GgufValue(v));
  return GgufValue(std::move(a));
}

// What llama.cpp's converter reads straight from the folder's JSON files, beside what loom's
// config and tokenizer hold: which keys it writes depends on them.
struct ConverterReads {
  bool head_dim = false;  // config.json names head_dim: attention.key_length / value_length
  // config.json's <bos|eos|unk|pad>_token_id: the ids the tokenizer files do not give.
  std::optional<int64_t> bos_id, eos_id, unk_id, pad_id;
  // tokenizer_config.json's add_bos_token / add_eos_token, when they are booleans.
  std::optional<bool> add_bos, add_eos;
};

nlohmann::json read_json_if_there(const std::filesystem::path& path) {
  if (path.empty() || !std::filesystem::is_regular_file(path)) return nlohmann::json::object();
  std::ifstream in(path, std::ios::binary);
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    throw Error(fmt::format("gguf export: {} is not a JSON object", path.string()));
  return j;
}

ConverterReads converter_reads(const ModelConfig& c, const TokenizerSpec& spec) {
  ConverterReads r;
  std::filesystem::path config_path(c.source);  // config.json, or the folder holding it
  if (std::filesystem::is_directory(config_path)) config_path /= "config.json";
  const nlohmann::json config = read_json_if_there(config_path);
  r.head_dim = config.contains("head_dim") && !config.at("head_dim").is_null();
  const auto id = [&config](const char* key) -> std::optional<int64_t> {
    if (config.contains(key) && config.at(key).is_number_integer())
      return config.at(key).get<int64_t>();
    return std::nullopt;
  };
  r.bos_id = id("bos_token_id");
  r.eos_id = id("eos_token_id");
  r.unk_id = id("unk_token_id");
  r.pad_id = id("pad_token_id");
  const nlohmann::json tc = read_json_if_there(std::filesystem::path(spec.source).parent_path() /
                                               "tokenizer_config.json");
  const auto flag = [&tc](const char* key) -> std::optional<bool> {
    if (tc.contains(key) && tc.at(key).is_boolean()) return tc.at(key).get<bool>();
    return std::nullopt;
  };
  r.add_bos = flag("add_bos_token");
  r.add_eos = flag("add_eos_token");
  return r;
}

// The converter's does_token_look_special(): added tokens it makes control tokens even when
// tokenizer.json does not call them special (Qwen2.5's <|fim_prefix|>, <|repo_name|>, ...).
bool converter_looks_special(const std::string& t) {
  const auto wrapped = [&t](std::string_view open, std::string_view close) {
    return t.starts_with(open) && t.ends_with(close);  // may overlap, as Python's: "<|>"
  };
  return t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]" || wrapped("<|", "|>") ||
         wrapped("<\uff5c", "\uff5c>") || wrapped("<unused", ">");
}

}  // namespace

std::string gguf_pre_tokenizer_name(const Tokenizer& tokenizer) {
  const TokenizerSpec& spec = tokenizer.spec();
  if (spec.kind != TokenizerKind::ByteLevelBpe)
    throw Error(fmt::format(
        "gguf export: the tokenizer of {} is SentencePiece-style (Llama 2, Mistral); a GGUF "
        "SentencePiece vocabulary needs per-token scores, which tokenizer.json does not have, "
        "so loom writes GGUF tokenizers only for byte-level BPE (SmolLM2, Llama 3, GPT-2 style). "
        "Export merged safetensors and convert them with llama.cpp's convert_hf_to_gguf.py (it "
        "reads tokenizer.model), or pass a GGUF file of the same model as the source",
        spec.source));
  std::vector<std::string> ours;
  for (const std::string& r : spec.pre_regexes) ours.push_back(canonical_regex(r));
  for (const tok::PretokenizerPreset& p : tok::pretokenizer_presets()) {
    if (p.names.front() == "default") continue;  // llama.cpp's fallback, no tokenizer.json's
    std::vector<std::string> theirs;
    for (const std::string& r : p.regexes) theirs.push_back(canonical_regex(r));
    if (theirs == ours && p.ignore_merges == spec.ignore_merges) {
      // llama.cpp's converter writes Llama 3's as "llama-bpe".
      return p.names.front() == "llama3" ? "llama-bpe" : p.names.front();
    }
  }
  std::string regexes;
  for (const std::string& r : spec.pre_regexes) regexes += fmt::format("\n  {}", r);
  throw Error(fmt::format(
      "gguf export: the pre-tokenizer of {} ({}; ignore_merges {}) is none llama.cpp knows by a "
      "tokenizer.ggml.pre name loom can write (smollm, gpt2, llama-bpe, dbrx, qwen2): a GGUF "
      "with another name would tokenize differently. Its regexes:{}",
      spec.source, tokenizer.pre_name(), spec.ignore_merges, regexes));
}

std::vector<float> gguf_rope_freq_factors(const ModelConfig& config) {
  if (!config.rope.llama3_scaling) return {};
  RopeConfig unscaled = config.rope;
  unscaled.llama3_scaling.reset();
  const std::vector<float> freqs = rope_inv_freq(unscaled, config.head_dim);
  const Llama3RopeScaling& s = *config.rope.llama3_scaling;
  const double orig = static_cast<double>(s.original_max_position_embeddings);
  const double low_freq_wavelen = orig / s.low_freq_factor;
  const double high_freq_wavelen = orig / s.high_freq_factor;
  std::vector<float> factors;
  factors.reserve(freqs.size());
  for (const float f : freqs) {
    const double wavelen = 2.0 * std::numbers::pi / static_cast<double>(f);
    double factor = 1.0;
    if (wavelen > low_freq_wavelen) {
      factor = s.factor;
    } else if (wavelen >= high_freq_wavelen) {
      const double smooth =
          (orig / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      factor = 1.0 / ((1.0 - smooth) / s.factor + smooth);
    }
    factors.push_back(static_cast<float>(factor));
  }
  return factors;
}

std::string gguf_size_label(int64_t parameters) {
  const double n = static_cast<double>(parameters);
  double scaled = n * 1e-3;
  char suffix = 'K';
  if (n > 1e12) {
    scaled = n * 1e-12;
    suffix = 'T';
  } else if (n > 1e9) {
    scaled = n * 1e-9;
    suffix = 'B';
  } else if (n > 1e6) {
    scaled = n * 1e-6;
    suffix = 'M';
  }
  // Digits before the point of the rounded value (leading zeros not counted); at least two in all.
  std::string whole = fmt::format("{:.0f}", std::round(scaled));
  whole.erase(0, whole.find_first_not_of('0'));
  const int decimals = std::max(2 - static_cast<int>(whole.size()), 0);
  return fmt::format("{:.{}f}{}", scaled, decimals, suffix);
}

GgufMetadata gguf_metadata_from_hf(const ModelConfig& c, const Tokenizer& tokenizer,
                                   const std::string& name, int64_t parameters) {
  const std::string pre = gguf_pre_tokenizer_name(tokenizer);
  const TokenizerSpec& spec = tokenizer.spec();
  const int64_t n_tokens = static_cast<int64_t>(spec.tokens.size());
  if (n_tokens > c.vocab_size)
    throw Error(fmt::format(
        "gguf export: the tokenizer of {} has {} tokens, more than the model's vocab_size {} "
        "({})",
        spec.source, n_tokens, c.vocab_size, c.source));
  const std::string arch = gguf_architecture(c);
  const std::string p = arch + ".";
  GgufMetadata m;
  auto set = [&m](std::string key, GgufValue v) { m.emplace_back(std::move(key), std::move(v)); };
  set("general.architecture", GgufValue(arch));
  set("general.type", GgufValue(std::string("model")));
  if (!name.empty()) set("general.name", GgufValue(name));
  if (parameters > 0) set("general.size_label", GgufValue(gguf_size_label(parameters)));
  set(p + "block_count", u32(c.n_layers));
  if (c.max_position_embeddings > 0) set(p + "context_length", u32(c.max_position_embeddings));
  set(p + "embedding_length", u32(c.hidden_size));
  set(p + "feed_forward_length", u32(c.intermediate_size));
  set(p + "attention.head_count", u32(c.n_heads));
  set(p + "attention.head_count_kv", u32(c.n_kv_heads));
  set(p + "rope.freq_base", GgufValue(c.rope.theta));
  set(p + "attention.layer_norm_rms_epsilon", GgufValue(c.rms_norm_eps));
  const ConverterReads reads = converter_reads(c, spec);
  if (reads.head_dim) {
    set(p + "attention.key_length", u32(c.head_dim));
    set(p + "attention.value_length", u32(c.head_dim));
  }
  if (arch == "llama") {  // the converter's LlamaModel writes these; its Qwen2Model does not
    set(p + "vocab_size", u32(c.vocab_size));
    set(p + "rope.dimension_count", u32(c.rope.rotary_dim == 0 ? c.head_dim : c.rope.rotary_dim));
  }
  if (c.rope_linear_factor != 1.0f) {
    set(p + "rope.scaling.type", GgufValue(std::string("linear")));
    set(p + "rope.scaling.factor", GgufValue(c.rope_linear_factor));
  }

  std::vector<std::string> tokens(spec.tokens);
  std::vector<int32_t> types;
  types.reserve(static_cast<size_t>(c.vocab_size));
  for (int64_t id = 0; id < n_tokens; ++id) {
    TokenType t = spec.types.empty() ? TokenType::Normal : spec.types[static_cast<size_t>(id)];
    // tokenizer.json's special added tokens, unk among them, are control tokens in llama.cpp's
    // byte-level vocabularies (its converter never writes "unknown" there).
    if (t == TokenType::Unknown) t = TokenType::Control;
    if (t == TokenType::UserDefined &&
        converter_looks_special(spec.tokens[static_cast<size_t>(id)]))
      t = TokenType::Control;
    types.push_back(static_cast<int32_t>(t));
  }
  for (int64_t id = n_tokens; id < c.vocab_size; ++id) {
    tokens.push_back(fmt::format("[PAD{}]", id));
    types.push_back(static_cast<int32_t>(TokenType::Unused));
  }
  std::vector<std::string> merges;
  merges.reserve(spec.merges.size());
  for (const auto& [a, b] : spec.merges) {
    if (a.find(' ') != std::string::npos || b.find(' ') != std::string::npos)
      throw Error(fmt::format(
          "gguf export: merge (\"{}\", \"{}\") of {} has a space in it, which GGUF's \"a b\" "
          "merges cannot hold",
          a, b, spec.source));
    merges.push_back(a + " " + b);
  }
  set("tokenizer.ggml.model", GgufValue(std::string("gpt2")));
  set("tokenizer.ggml.pre", GgufValue(pre));
  set("tokenizer.ggml.tokens", string_array(std::move(tokens)));
  set("tokenizer.ggml.token_type", int32_array(types));
  set("tokenizer.ggml.merges", string_array(std::move(merges)));
  // Special ids: the tokenizer's, else config.json's (in range), as the converter takes them.
  const auto special = [&](const char* key, int32_t ours, std::optional<int64_t> config_id) {
    if (ours >= 0) {
      set(key, u32(ours));
    } else if (config_id && *config_id >= 0 && *config_id < n_tokens) {
      set(key, u32(*config_id));
    }
  };
  special("tokenizer.ggml.bos_token_id", spec.bos_id, reads.bos_id);
  special("tokenizer.ggml.eos_token_id", spec.eos_id, reads.eos_id);
  special("tokenizer.ggml.unknown_token_id", spec.unk_id, reads.unk_id);
  special("tokenizer.ggml.padding_token_id", spec.pad_id, reads.pad_id);
  // add_bos / add_eos: written where tokenizer_config.json says (as the converter), and where
  // the tokenizer adds the token anyway (a TemplateProcessing post-processor, Llama 3): left
  // out, llama.cpp would fall back on its default for the pre-tokenizer.
  if (reads.add_bos || spec.add_bos) set("tokenizer.ggml.add_bos_token", GgufValue(spec.add_bos));
  if (reads.add_eos || spec.add_eos) set("tokenizer.ggml.add_eos_token", GgufValue(spec.add_eos));
  if (!spec.chat_template.empty()) set("tokenizer.chat_template", GgufValue(spec.chat_template));
  return m;
}

}  // namespace loom
