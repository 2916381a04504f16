// The model summary `loom inspect` prints for a GGUF file: architecture hyper-parameters,
// tokenizer keys, tensor types (gguf.h).
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <span>

#include "layers/gguf.h"

namespace loom {

namespace {

// The keys a Llama-family tokenizer is built from (BPE "gpt2" or SentencePiece "llama" vocab).
// Which are required depends on tokenizer.ggml.model; the summary lists them all.
constexpr std::string_view kTokenizerKeys[] = {
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.chat_template",
};

// Arrays show as their size only: a vocabulary is not something to print.
std::string tokenizer_display(const GgufValue& v) {
  if (v.type() == GgufType::ARRAY) return v.type_str();
  return v.to_display(6, 40);
}

std::string human_count(int64_t n) {
  if (n >= 1'000'000'000) return fmt::format("{:.2f}B", static_cast<double>(n) / 1e9);
  if (n >= 1'000'000) return fmt::format("{:.2f}M", static_cast<double>(n) / 1e6);
  if (n >= 1'000) return fmt::format("{:.2f}K", static_cast<double>(n) / 1e3);
  return std::to_string(n);
}

}  // namespace

GgufModelSummary summarize_gguf(const GgufFile& file) {
  GgufModelSummary s;
  s.path = file.path();
  s.version = file.version();
  if (file.has("general.architecture")) s.architecture = file.architecture();
  if (const GgufValue* name = file.find("general.name"); name && name->type() == GgufType::STRING)
    s.name = name->as_string("general.name");

  if (const GgufValue* type = file.find("general.type");
      type && type->type() == GgufType::STRING && type->as_string("general.type") == "adapter") {
    s.adapter = true;
    for (const auto& [key, value] : file.metadata())
      if (key.starts_with("adapter.")) s.adapter_keys.emplace_back(key, value.to_display());
  }
  if (!s.architecture.empty() && !s.adapter) {
    std::string prefix = s.architecture + ".";
    for (const auto& [key, value] : file.metadata())
      if (key.starts_with(prefix)) s.hparams.emplace_back(key, value.to_display());
  }

  for (std::string_view key : s.adapter ? std::span<const std::string_view>()
                                        : std::span<const std::string_view>(kTokenizerKeys)) {
    const GgufValue* v = file.find(key);
    s.tokenizer_keys.push_back({std::string(key), v != nullptr, v ? tokenizer_display(*v) : ""});
  }
  for (const auto& [key, value] : file.metadata()) {
    if (s.adapter || !key.starts_with("tokenizer.")) continue;
    if (std::find(std::begin(kTokenizerKeys), std::end(kTokenizerKeys), key) !=
        std::end(kTokenizerKeys))
      continue;
    s.tokenizer_keys.push_back({key, true, tokenizer_display(value)});
  }

  std::map<DType, int64_t> counts;
  for (const GgufTensorInfo& t : file.tensors()) {
    ++counts[t.dtype];
    s.parameter_count += shape_numel(t.shape);
    s.tensor_bytes += t.nbytes;
  }
  s.tensor_count = static_cast<int64_t>(file.tensors().size());
  for (const auto& [dtype, n] : counts)
    s.tensor_type_counts.emplace_back(std::string(dtype_name(dtype)), n);
  return s;
}

std::string format_gguf_summary(const GgufModelSummary& s) {
  std::string out;
  out += fmt::format("file:          {} (GGUF version {})\n", s.path, s.version);
  out += fmt::format("architecture:  {}\n",
                     s.architecture.empty() ? "(general.architecture missing)" : s.architecture);
  if (!s.name.empty()) out += fmt::format("name:          {}\n", s.name);

  if (s.adapter) {
    out +=
        "type:          LoRA adapter (general.type = adapter), for a base model of the "
        "architecture above; apply it with loom eval / generate --adapter, or llama.cpp --lora\n";
    for (const auto& [key, value] : s.adapter_keys) out += fmt::format("  {}  {}\n", key, value);
    out += fmt::format(
        "tensors:       {} tensors ({} A/B pairs), {} parameters, {} bytes of data\n",
        s.tensor_count, s.tensor_count / 2, human_count(s.parameter_count), s.tensor_bytes);
    for (const auto& [dtype, n] : s.tensor_type_counts)
      out += fmt::format("  {:<6}  {}\n", dtype, n);
    return out;
  }
  size_t width = 0;
  for (const auto& [key, _] : s.hparams) width = std::max(width, key.size());
  for (const auto& t : s.tokenizer_keys) width = std::max(width, t.key.size());

  out += fmt::format("hyper-parameters ({} keys):\n", s.hparams.size());
  for (const auto& [key, value] : s.hparams)
    out += fmt::format("  {:<{}}  {}\n", key, width, value);
  out += "tokenizer:\n";
  for (const auto& t : s.tokenizer_keys)
    out += fmt::format("  {:<{}}  {}\n", t.key, width, t.present ? t.value : "(absent)");
  out += fmt::format("tensors:       {} tensors, {} parameters, {} bytes of data\n", s.tensor_count,
                     human_count(s.parameter_count), s.tensor_bytes);
  for (const auto& [dtype, n] : s.tensor_type_counts) out += fmt::format("  {:<6}  {}\n", dtype, n);
  return out;
}

}  // namespace loom
