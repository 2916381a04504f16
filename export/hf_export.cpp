// Merged Hugging Face export (hf_export.h).
#include "export/hf_export.h"

#include <fmt/format.h>

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "autograd/check.h"
#include "export/hf_config.h"
#include "export/hf_tokenizer.h"
#include "export/qk_rows.h"
#include "export/safetensors_writer.h"
#include "layers/gguf.h"
#include "layers/tokenizer.h"

namespace loom {

namespace fs = std::filesystem;

namespace {

constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kGenerationConfigFile = "generation_config.json";

// The adapter of each projection of `lora`.
std::map<const Linear*, const LoraAdapter*> adapters_of(const LoraModel* lora) {
  std::map<const Linear*, const LoraAdapter*> out;
  if (lora)
    for (const LoraModule& m : lora->modules()) out[m.linear] = m.adapter.get();
  return out;
}

// Projection weight in Hugging Face row order: merged when lora adapts it.
std::function<std::vector<float>()> projection_values(const ModelConfig& config, const Linear& p,
                                                      const LoraAdapter* adapter) {
  return [&config, &p, adapter] {
    std::vector<float> w = adapter ? merged_weight_values(p, *adapter) : p.weight.to_vector();
    return rows_to_hf_order(config, p.kind, std::move(w), p.in_features());
  };
}

std::function<std::vector<float>()> bias_values(const ModelConfig& config, const Linear& p) {
  return [&config, &p] {
    if (!p.bias.defined()) return std::vector<float>(static_cast<size_t>(p.out_features()), 0.0f);
    return rows_to_hf_order(config, p.kind, p.bias.to_vector(), 1);
  };
}

std::function<std::vector<float>()> plain_values(const Tensor& t) {
  return [&t] { return t.to_vector(); };
}

void check_adapter(const Linear& p, const LoraAdapter* from_lora) {
  if (!p.adapter || p.adapter.get() == from_lora) return;
  const auto* foreign = dynamic_cast<const LoraAdapter*>(p.adapter.get());
  if (foreign && foreign->merged()) return;  // the weight already holds the merge
  throw Error(
      fmt::format("hf export: projection '{}' carries an adapter that is not the "
                  "exported LoraModel's{}; pass that LoraModel, merge it, or detach it",
                  p.hf_name, foreign ? " and is not merged" : ""));
}

// True when the export writes the LM head as its own lm_head.weight although the model's config
// ties it to the embedding: an adapter on it is merged into it (or a merge already untied it).
bool unties_head(const LlamaModel& model, const LoraModel* lora) {
  return model.config().tie_word_embeddings &&
         (!model.output_tied() || (lora != nullptr && lora->head_module() != nullptr));
}

struct Source {
  bool hf_folder = false;
  std::optional<GgufFile> gguf;
};

Source open_source(const std::string& path, const LlamaModel& model) {
  Source s;
  if (fs::is_directory(path)) {
    s.hf_folder = true;
    return s;
  }
  if (!fs::exists(path))
    throw Error(
        fmt::format("hf export: source {} does not exist (expected the .gguf file or "
                    "Hugging Face folder the model was loaded from)",
                    path));
  s.gguf = GgufFile::open(path);
  const ModelConfig c = config_from_gguf(*s.gguf);
  const ModelConfig& m = model.config();
  if (c.architecture != m.architecture || c.vocab_size != m.vocab_size ||
      c.hidden_size != m.hidden_size || c.n_layers != m.n_layers || c.n_heads != m.n_heads ||
      c.n_kv_heads != m.n_kv_heads || c.rope.style != m.rope.style)
    throw Error(
        fmt::format("hf export: {} does not describe the model given (loaded from {}): "
                    "export with the file the model was loaded from",
                    path, m.source));
  return s;
}

HfSpecialIds gguf_special_ids(const GgufFile& file) {
  HfSpecialIds ids;
  auto id = [&](const char* key) {
    return file.has(key) ? static_cast<int32_t>(file.get_int(key)) : -1;
  };
  ids.bos = id("tokenizer.ggml.bos_token_id");
  ids.eos = id("tokenizer.ggml.eos_token_id");
  ids.pad = id("tokenizer.ggml.padding_token_id");
  return ids;
}

HfSpecialIds config_special_ids(const nlohmann::ordered_json& config) {
  HfSpecialIds ids;
  auto id = [&](const char* key) {
    return config.contains(key) && config[key].is_number_integer() ? config[key].get<int32_t>()
                                                                   : -1;
  };
  ids.bos = id("bos_token_id");
  ids.eos = id("eos_token_id");
  ids.pad = id("pad_token_id");
  return ids;
}

std::string dtype_mix(const LlamaModel& model) {
  std::set<std::string> names;
  const LlamaWeights& w = model.weights();
  names.insert(std::string(dtype_name(w.token_embd.dtype())));
  for (const LlamaBlock& b : w.blocks)
    for (const Linear* p : b.projections())
      names.insert(std::string(dtype_name(p->weight.dtype())));
  std::string out;
  for (const std::string& n : names) {
    if (!out.empty()) out += ", ";
    out += n;
  }
  return out;
}

}  // namespace

std::vector<HfTensor> hf_model_tensors(const LlamaModel& model, const LoraModel* lora) {
  const ModelConfig& c = model.config();
  const LlamaWeights& w = model.weights();
  const HfAttentionBiases biases = hf_attention_biases(model);
  const std::map<const Linear*, const LoraAdapter*> adapters = adapters_of(lora);
  std::vector<HfTensor> out;
  out.push_back({"model.embed_tokens.weight", w.token_embd.shape(), plain_values(w.token_embd)});
  for (const LlamaBlock& b : w.blocks) {
    const std::string prefix = fmt::format("model.layers.{}.", b.wq.layer);
    out.push_back(
        {prefix + "input_layernorm.weight", b.attn_norm.shape(), plain_values(b.attn_norm)});
    for (const Linear* p : b.projections()) {
      const auto it = adapters.find(p);
      const LoraAdapter* adapter = it == adapters.end() ? nullptr : it->second;
      check_adapter(*p, adapter);
      out.push_back({p->hf_name + ".weight", p->weight.shape(), projection_values(c, *p, adapter)});
      const bool attention = p->kind == Projection::Q || p->kind == Projection::K ||
                             p->kind == Projection::V || p->kind == Projection::O;
      const bool wants_bias = attention && (p->kind == Projection::O ? biases.out : biases.qkv);
      if (p->bias.defined() && !wants_bias)
        throw Error(
            fmt::format("hf export: '{}' has a bias that transformers' {} has no "
                        "parameter for",
                        p->hf_name, hf_architecture_class(c.architecture)));
      if (wants_bias)
        out.push_back({p->hf_name + ".bias", {p->out_features()}, bias_values(c, *p)});
    }
    out.push_back(
        {prefix + "post_attention_layernorm.weight", b.ffn_norm.shape(), plain_values(b.ffn_norm)});
  }
  out.push_back({"model.norm.weight", w.output_norm.shape(), plain_values(w.output_norm)});
  // An adapted LM head of a tied model gets its own (merged) weight; the embedding stays.
  const auto head = adapters.find(&w.output);
  const LoraAdapter* head_adapter = head == adapters.end() ? nullptr : head->second;
  check_adapter(w.output, head_adapter);
  if (!c.tie_word_embeddings || unties_head(model, lora))
    out.push_back(
        {"lm_head.weight", w.output.weight.shape(), projection_values(c, w.output, head_adapter)});
  return out;
}

ExportReport export_hf_model(const LlamaModel& model, const LoraModel* lora,
                             const std::string& source_path, const std::string& out_dir,
                             const HfExportOptions& options) {
  // Everything that can be refused, before anything is written.
  const Source source = open_source(source_path, model);
  const nlohmann::ordered_json config =
      source.hf_folder ? hf_config_from_source(source_path, model, options.dtype)
                       : hf_config_from_model(model, gguf_special_ids(*source.gguf), options.dtype);
  std::optional<HfTokenizerFiles> tokenizer;
  std::unique_ptr<Tokenizer> gguf_tokenizer;
  if (source.gguf && source.gguf->has("tokenizer.ggml.model")) {
    tokenizer = hf_tokenizer_from_gguf(*source.gguf, model.config().max_position_embeddings);
    gguf_tokenizer = load_tokenizer(*source.gguf);
  }
  const std::vector<HfTensor> tensors = hf_model_tensors(model, lora);
  nlohmann::ordered_json config_out = config;
  if (unties_head(model, lora)) config_out["tie_word_embeddings"] = false;

  StagingDir dir(out_dir, options.replace_existing);
  ExportReport& report = dir.report();
  std::vector<SafetensorsEntry> entries;
  const DType dtype = options.dtype == MergeDType::F32 ? DType::F32 : DType::BF16;
  for (const HfTensor& t : tensors) entries.push_back({t.name, dtype, t.shape});
  const uint64_t bytes = write_safetensors(dir.file(kModelFile), entries, {{"format", "pt"}},
                                           [&](size_t i) { return tensors[i].values(); });
  dir.add_written(kModelFile, bytes);
  dir.write_text("config.json", config_out.dump(2) + "\n");

  const fs::path src(source_path);
  if (source.hf_folder) {
    const fs::path generation = src / kGenerationConfigFile;
    if (fs::exists(generation))
      dir.copy_file(generation.string(), kGenerationConfigFile);
    else
      dir.write_text(kGenerationConfigFile,
                     hf_generation_config(config_special_ids(config)).dump(2) + "\n");
    int copied = 0;
    for (const std::string& name : hf_tokenizer_file_names())
      if (fs::exists(src / name)) {
        dir.copy_file((src / name).string(), name);
        ++copied;
      }
    if (copied == 0)
      report.notes.push_back(
          fmt::format("{} has no tokenizer files, so the export has none", source_path));
  } else {
    dir.write_text(kGenerationConfigFile,
                   hf_generation_config(gguf_special_ids(*source.gguf)).dump(2) + "\n");
    if (tokenizer) {
      dir.write_text("tokenizer.json", tokenizer->tokenizer_json);
      dir.write_text("tokenizer_config.json", tokenizer->tokenizer_config_json);
      dir.write_text("special_tokens_map.json", tokenizer->special_tokens_map_json);
      check_hf_tokenizer(dir.file("tokenizer.json"), *gguf_tokenizer);
      report.notes.push_back(fmt::format(
          "tokenizer.json synthesized from the GGUF's byte-level BPE (pre-tokenizer '{}'{}), "
          "checked by reading it back",
          gguf_tokenizer->pre_name(),
          gguf_tokenizer->pre_name() == "qwen2"
              ? "; with Qwen2's NFC normalizer, which the GGUF does not record"
              : ""));
    } else {
      report.notes.push_back(fmt::format(
          "{} has no tokenizer (tokenizer.ggml.model), so the export has none", source_path));
    }
  }
  if (lora)
    report.notes.push_back(
        fmt::format("{} adapted projections merged in f32", lora->modules().size()));
  if (qk_rows_in_gguf_order(model.config()))
    report.notes.push_back(
        "q/k projection rows put back from llama.cpp's GGUF order into Hugging Face's");
  if (unties_head(model, lora))
    report.notes.push_back(
        "the LM head's adapter is merged into its own lm_head.weight, so config.json says "
        "tie_word_embeddings: false (the token embedding is unchanged)");
  report.notes.push_back(fmt::format("weights from {} storage, written as {}", dtype_mix(model),
                                     merge_dtype_name(options.dtype)));
  dir.commit();
  return dir.report();
}

}  // namespace loom
