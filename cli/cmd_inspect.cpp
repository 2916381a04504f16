// `loom inspect MODEL [--tensors]`: what a model file or folder holds, read from its headers
// only (no weights are loaded): a GGUF file's keys and tensor types, or a Hugging Face folder's
// config.json, tokenizer and safetensors tensors.
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <map>

#include "autograd/check.h"
#include "cli/commands.h"
#include "layers/chat_format.h"
#include "layers/gguf.h"
#include "layers/model_config.h"
#include "layers/safetensors.h"
#include "layers/tokenizer.h"

namespace loom::cli {

namespace {

namespace fs = std::filesystem;

// The chat format loom renders the tokenizer's template as (chat_template: model), and the
// default system message it puts in conversations without one.
void print_chat_template(const Tokenizer& tok) {
  const ChatTemplate* format = detect_chat_template(tok);
  const std::string system = template_default_system(tok.chat_template());
  fmt::print(
      "chat template: {}{}\n",
      tok.chat_template().empty() ? std::string("none")
      : format != nullptr
          ? fmt::format("{} ({} bytes of Jinja; loom renders it as its built-in {})", format->name,
                        tok.chat_template().size(), format->name)
          : fmt::format("{} bytes of Jinja, not one of loom's built-in formats ({})",
                        tok.chat_template().size(), builtin_chat_template_list()),
      system.empty() ? std::string() : fmt::format("; default system message \"{}\"", system));
}

void inspect_gguf(const std::string& path, bool list_tensors) {
  const GgufFile file = GgufFile::open(path);
  fmt::print("{}", format_gguf_summary(summarize_gguf(file)));
  if (file.has("tokenizer.ggml.model")) {
    try {
      print_chat_template(*load_tokenizer(file));
    } catch (const Error& e) {
      fmt::print("tokenizer:     not loadable by loom: {}\n", e.what());
    }
  }
  if (!list_tensors) return;
  fmt::print("tensor list (PyTorch shape order):\n");
  for (const GgufTensorInfo& t : file.tensors())
    fmt::print("  {:<40} {:<6} {}\n", t.name, dtype_name(t.dtype), shape_str(t.shape));
}

// A part loom cannot read is said on its line; the rest is still shown.
void print_config(const fs::path& config) {
  if (!fs::exists(config)) {
    fmt::print("config.json:   none next to the weights (not loadable as a model)\n");
    return;
  }
  try {
    const ModelConfig c = config_from_hf_json(config.string());
    fmt::print("config.json:\n");
    const std::string text = c.describe();
    for (size_t start = 0; start < text.size();) {
      const size_t end = std::min(text.find('\n', start), text.size());
      fmt::print("  {}\n", text.substr(start, end - start));
      start = end + 1;
    }
  } catch (const Error& e) {
    fmt::print("config.json:   not loadable by loom: {}\n", e.what());
  }
}

void print_tokenizer(const fs::path& path) {
  if (!fs::exists(path)) {
    fmt::print("tokenizer:     (no tokenizer.json)\n");
    return;
  }
  try {
    const auto tok = load_tokenizer_json(path.string());
    auto token = [&](int32_t id) {
      return id < 0 ? std::string("none")
                    : fmt::format("{} ({})", id, tok->decode(std::vector<int32_t>{id}));
    };
    // The pipeline as loaded: "tokenizer.json: NFC, Split, ByteLevel" -> "NFC, Split, ByteLevel".
    std::string pipeline = tok->pre_name();
    if (pipeline.starts_with("tokenizer.json: ")) pipeline.erase(0, 16);
    const std::string kind =
        tok->kind() == TokenizerKind::ByteLevelBpe
            ? fmt::format("byte-level BPE ({})", pipeline)
            : std::string(tok->spec().normalize_nfc ? "SentencePiece-style BPE (NFC)"
                                                    : "SentencePiece-style BPE");
    fmt::print("tokenizer:     tokenizer.json, {} tokens, {}; BOS {}{}, EOS {}\n",
               tok->vocab_size(), kind, token(tok->bos_id()),
               tok->add_bos() ? " added in front" : " not added", token(tok->eos_id()));
    print_chat_template(*tok);
  } catch (const Error& e) {
    fmt::print("tokenizer:     not loadable by loom: {}\n", e.what());
  }
}

void inspect_hf(const std::string& path, bool list_tensors) {
  const fs::path dir = fs::is_directory(path) ? fs::path(path) : fs::path(path).parent_path();
  const SafetensorsModel weights = SafetensorsModel::open(path);
  const std::vector<std::string> names = weights.names();
  std::map<std::string, int64_t> files;
  for (const std::string& n : names) ++files[weights.file_of(n)];
  fmt::print("folder:        {} (Hugging Face: {} safetensors file{})\n", path, files.size(),
             files.size() == 1 ? "" : "s");
  print_config(dir / "config.json");
  print_tokenizer(dir / "tokenizer.json");
  std::map<std::string, std::pair<int64_t, int64_t>> by_dtype;  // tensors, parameters
  int64_t params = 0, bytes = 0;
  for (const std::string& n : names) {
    const SafetensorsTensorInfo& t = *weights.find(n);
    int64_t count = 1;
    for (int64_t d : t.shape) count *= d;
    params += count;
    bytes += static_cast<int64_t>(t.end - t.begin);
    ++by_dtype[t.dtype].first;
    by_dtype[t.dtype].second += count;
  }
  fmt::print("tensors:       {} tensors, {:.2f}M parameters, {} bytes of data\n", names.size(),
             static_cast<double>(params) / 1e6, bytes);
  for (const auto& [dtype, n] : by_dtype)
    fmt::print("  {:<7} {} tensors, {:.2f}M parameters\n", dtype, n.first,
               static_cast<double>(n.second) / 1e6);
  if (!list_tensors) return;
  fmt::print("tensor list:\n");
  for (const std::string& n : names) {
    const SafetensorsTensorInfo& t = *weights.find(n);
    fmt::print("  {:<52} {:<5} {:<14}{}\n", n, t.dtype, shape_str(t.shape),
               files.size() > 1 ? "  " + fs::path(weights.file_of(n)).filename().string() : "");
  }
}

}  // namespace

int run_inspect(const std::string& path, bool list_tensors) {
  if (!fs::exists(path)) throw Error(fmt::format("loom inspect: {} does not exist", path));
  const bool hf = fs::is_directory(path) || path.ends_with(".safetensors") ||
                  path.ends_with(".safetensors.index.json");
  if (hf)
    inspect_hf(path, list_tensors);
  else
    inspect_gguf(path, list_tensors);
  return 0;
}

}  // namespace loom::cli
