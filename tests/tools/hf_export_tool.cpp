// loom_test_hf_export_tool: the loom side of tests/interop/test_export_hf*.py.
//
//   export SPEC.json OUT.json
//       SPEC: {"source": model (.gguf or Hugging Face folder),
//              "lora": adapter_config.json-style object (read by peft_config_from_json), optional,
//              "adapter_seed": int, "adapter_scale": float  (every A / B value uniform in
//                  [-scale, scale], DoRA magnitudes times [0.8, 1.2]; deterministic),
//              "texts": [...]  tokenized with the source's tokenizer (specials parsed, BOS / EOS
//                  as the tokenizer adds them),
//              "ids": [...]    the row whose logits are written; default: texts[0]'s ids,
//              "base_dir", "merged_dir", "merged_bf16_dir", "peft_dir": outputs, each optional
//                  (base_dir: the model without the adapter, exported before it is attached),
//              "base_model_name_or_path": for adapter_config.json,
//              "logits": path of the raw little-endian f32 logits [T, V] of the adapter model}
//       OUT: {"ids": [...], "texts_ids": [[...], ...], "vocab_size": V, "notes": {...}}
//   logits MODEL IDS.json OUT.bin [PEFT_DIR]
//       The logits of ids (a JSON list) through MODEL, with the PEFT adapter when given.
//
// Logits are computed in eval mode with f32 GEMMs, unmerged (base + s B A x).
#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "autograd/check.h"
#include "autograd/tape.h"
#include "export/hf_export.h"
#include "export/peft_export.h"
#include "export/peft_read.h"
#include "layers/gguf.h"
#include "layers/llama.h"
#include "layers/tokenizer.h"
#include "lora/lora_model.h"
#include "lora/random.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace loom {
namespace {

json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(fmt::format("{}: cannot open", path));
  return json::parse(in);
}

void write_file(const std::string& path, const void* data, size_t bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  if (!out) throw Error(fmt::format("{}: write failed", path));
}

std::vector<float> logits_of(const LlamaModel& model, const std::vector<int32_t>& ids) {
  NoGradGuard no_grad;
  TokenBatch b;
  b.ids = ids;
  b.batch = 1;
  b.seq_len = static_cast<int64_t>(ids.size());
  ForwardOptions o;
  o.checkpoint_blocks = false;
  o.precision = Precision::F32;
  return model.logits(model.forward_hidden(b, o), Precision::F32).to_vector();
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ULL;
  return h;
}

void randomize(LoraModel& lora, uint64_t seed, double scale) {
  for (const LoraParameter& p : lora.parameters()) {
    std::vector<float> v = p.tensor.to_vector();
    const uint64_t key = lora_hash({seed, fnv1a(p.name)});
    const bool magnitude = p.name.ends_with("lora_magnitude_vector");
    for (size_t i = 0; i < v.size(); ++i) {
      const double u = lora_uniform(key, i);
      v[i] = magnitude ? static_cast<float>(v[i] * (0.8 + 0.4 * u))
                       : static_cast<float>(scale * (2.0 * u - 1.0));
    }
    lora.set_parameter(p.name, v);
  }
  lora.set_training(false);
}

std::unique_ptr<Tokenizer> tokenizer_of(const std::string& source) {
  if (fs::is_directory(source)) {
    const fs::path tok = fs::path(source) / "tokenizer.json";
    return fs::exists(tok) ? load_tokenizer_json(tok.string()) : nullptr;
  }
  return load_tokenizer(GgufFile::open(source));
}

json notes_of(const ExportReport& r) {
  return {{"files", r.files}, {"bytes", r.bytes}, {"notes", r.notes}};
}

int run_export(const std::string& spec_path, const std::string& out_path) {
  const json spec = read_json(spec_path);
  const std::string source = spec.at("source");
  LlamaModel model = LlamaModel::load(source);
  json out;
  out["vocab_size"] = model.config().vocab_size;

  std::vector<std::vector<int32_t>> texts_ids;
  if (spec.contains("texts")) {
    const std::unique_ptr<Tokenizer> tok = tokenizer_of(source);
    if (!tok) throw Error(fmt::format("{}: no tokenizer for the texts", source));
    for (const auto& t : spec.at("texts"))
      texts_ids.push_back(tok->encode(t.get<std::string>(), /*add_special=*/true,
                                      /*parse_special=*/true));
  }
  out["texts_ids"] = texts_ids;
  const std::vector<int32_t> ids =
      spec.contains("ids") ? spec.at("ids").get<std::vector<int32_t>>() : texts_ids.at(0);
  out["ids"] = ids;

  if (spec.contains("base_dir"))
    out["base"] = notes_of(export_hf_model(model, nullptr, source, spec.at("base_dir")));
  std::optional<LoraModel> lora;
  if (spec.contains("lora")) {
    const PeftAdapterConfig config =
        peft_config_from_json(nlohmann::ordered_json::parse(spec.at("lora").dump()), spec_path);
    lora.emplace(model, config.lora);
    randomize(*lora, spec.value("adapter_seed", 1), spec.value("adapter_scale", 0.1));
  }
  const LoraModel* adapter = lora ? &*lora : nullptr;
  if (spec.contains("merged_dir"))
    out["merged"] = notes_of(export_hf_model(model, adapter, source, spec.at("merged_dir")));
  if (spec.contains("merged_bf16_dir")) {
    HfExportOptions bf16;
    bf16.dtype = MergeDType::BF16;
    out["merged_bf16"] =
        notes_of(export_hf_model(model, adapter, source, spec.at("merged_bf16_dir"), bf16));
  }
  if (spec.contains("peft_dir")) {
    if (!lora) throw Error("export: peft_dir given without lora");
    PeftExportOptions o;
    o.base_model_name_or_path = spec.value("base_model_name_or_path", "");
    out["peft"] = notes_of(export_peft_adapter(spec.at("peft_dir"), *lora, model, source, o));
  }
  if (spec.contains("logits")) {
    const std::vector<float> logits = logits_of(model, ids);
    write_file(spec.at("logits"), logits.data(), logits.size() * sizeof(float));
  }
  std::ofstream(out_path) << out.dump(1) << "\n";
  return 0;
}

int run_logits(const std::string& model_path, const std::string& ids_path,
               const std::string& out_path, const std::string& peft_dir) {
  LlamaModel model = LlamaModel::load(model_path);
  std::optional<LoraModel> lora;
  if (!peft_dir.empty()) {
    lora.emplace(load_peft_adapter(peft_dir, model));
    lora->set_training(false);
  }
  const std::vector<int32_t> ids = read_json(ids_path).get<std::vector<int32_t>>();
  const std::vector<float> logits = logits_of(model, ids);
  write_file(out_path, logits.data(), logits.size() * sizeof(float));
  return 0;
}

}  // namespace
}  // namespace loom

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  try {
    if (args.size() == 3 && args[0] == "export") return loom::run_export(args[1], args[2]);
    if ((args.size() == 4 || args.size() == 5) && args[0] == "logits")
      return loom::run_logits(args[1], args[2], args[3], args.size() == 5 ? args[4] : "");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loom_test_hf_export_tool: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr,
               "usage: loom_test_hf_export_tool export SPEC.json OUT.json\n"
               "       loom_test_hf_export_tool logits MODEL IDS.json OUT.bin [PEFT_DIR]\n");
  return 2;
}
