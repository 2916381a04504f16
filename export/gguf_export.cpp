// Merged model and LoRA adapter GGUF exports for llama.cpp (gguf_export.h).
#include "export/gguf_export.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <unordered_map>

#include "autograd/check.h"
#include "autograd/quant/quant.h"
#include "export/gguf_hf_metadata.h"
#include "export/gguf_qk_order.h"
#include "export/gguf_writer.h"
#include "layers/gguf.h"
#include "layers/llama.h"
#include "layers/tokenizer.h"
#include "lora/lora_model.h"
#include "lora/merge.h"

namespace loom {

namespace fs = std::filesystem;

namespace {

constexpr uint32_t kGgmlQuantizationVersion = 2;  // GGML_QNT_VERSION, which llama-quantize writes

std::string type_list(const std::vector<DType>& types) {
  std::string out;
  for (DType t : types) out += (out.empty() ? "" : ", ") + std::string(dtype_name(t));
  return out;
}

DType parse_from(const std::vector<DType>& allowed, std::string_view name, std::string_view what) {
  for (DType t : allowed)
    if (dtype_name(t) == name) return t;
  throw Error(fmt::format("gguf export: unknown {} type '{}': expected one of {}", what, name,
                          type_list(allowed)));
}

void check_allowed(const std::vector<DType>& allowed, DType t, std::string_view what) {
  if (std::find(allowed.begin(), allowed.end(), t) == allowed.end())
    throw Error(fmt::format("gguf export: a {} cannot be written as {}: expected one of {}", what,
                            dtype_name(t), type_list(allowed)));
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

bool fits(DType t, int64_t row) {
  return row % dtype_info(t).block_elems == 0;
}

// How many tensors of each stored dtype the writer holds, in dtype order.
std::vector<std::pair<std::string, int64_t>> count_types(const GgufWriter& w) {
  std::map<int, int64_t> counts;
  for (const GgufWriterTensor& t : w.tensors()) ++counts[static_cast<int>(t.dtype)];
  std::vector<std::pair<std::string, int64_t>> out;
  for (const auto& [t, n] : counts)
    out.emplace_back(std::string(dtype_name(static_cast<DType>(t))), n);
  return out;
}

// What the model holds under one GGUF tensor name.
struct ModelTensor {
  const Tensor* tensor = nullptr;        // what the model holds under the name
  const Linear* linear = nullptr;        // the projection, for its weight or its bias
  const LoraAdapter* adapter = nullptr;  // the weight's adapter, when merging
  bool is_bias = false;
};

std::unordered_map<std::string, ModelTensor> model_tensors(const LlamaModel& model,
                                                           const LoraModel* lora) {
  std::unordered_map<const Linear*, const LoraAdapter*> adapters;
  if (lora)
    for (const LoraModule& m : lora->modules()) adapters[m.linear] = m.adapter.get();
  const LlamaWeights& w = model.weights();
  std::unordered_map<std::string, ModelTensor> out;
  out["token_embd.weight"] = {&w.token_embd};
  out["output_norm.weight"] = {&w.output_norm};
  // The LM head: its own output.weight unless it is the embedding's tensor and stays so (an
  // adapter on it is merged into a weight of its own; the embedding is unchanged).
  const auto head = adapters.find(&w.output);
  const LoraAdapter* head_adapter = head == adapters.end() ? nullptr : head->second;
  if (!head_adapter && w.output.adapter && dynamic_cast<const LoraAdapter*>(w.output.adapter.get()))
    throw Error(
        "gguf export: the LM head has an adapter attached that the LoraModel given does not "
        "hold; pass the LoraModel the adapter belongs to");
  if (head_adapter || !model.output_tied())
    out["output.weight"] = {&w.output.weight, &w.output, head_adapter};
  for (size_t l = 0; l < w.blocks.size(); ++l) {
    const LlamaBlock& b = w.blocks[l];
    out[fmt::format("blk.{}.attn_norm.weight", l)] = {&b.attn_norm};
    out[fmt::format("blk.{}.ffn_norm.weight", l)] = {&b.ffn_norm};
    for (const Linear* p : b.projections()) {
      const auto it = adapters.find(p);
      const LoraAdapter* adapter = it == adapters.end() ? nullptr : it->second;
      if (!adapter && p->adapter && dynamic_cast<const LoraAdapter*>(p->adapter.get()))
        throw Error(fmt::format(
            "gguf export: projection '{}' has an adapter attached that the LoraModel given does "
            "not hold; pass the LoraModel the adapter belongs to",
            p->hf_name));
      out[p->gguf_name + ".weight"] = {&p->weight, p, adapter};
      if (p->bias.defined()) out[p->gguf_name + ".bias"] = {&p->bias, p, nullptr, true};
    }
  }
  return out;
}

// The f32 values of a model tensor as they go into the file (merged, q/k rows in GGUF order).
std::vector<float> export_values(const LlamaModel& model, const ModelTensor& m) {
  if (!m.linear) return tensor_values_f32(*m.tensor);
  std::vector<float> v =
      m.adapter ? merged_weight_values(*m.linear, *m.adapter) : tensor_values_f32(*m.tensor);
  const int64_t cols = m.is_bias ? 1 : m.linear->in_features();
  return reorder_projection_rows(model.config(), m.linear->kind, std::move(v), cols,
                                 /*to_gguf=*/true);
}

bool needs_values(const LlamaModel& model, const ModelTensor& m, DType stored) {
  if (m.adapter) return true;
  if (m.linear && qk_rows_need_reorder(model.config(), m.linear->kind)) return true;
  return m.tensor->dtype() != stored;
}

void carry_metadata(const GgufFile& source, GgufWriter& w) {
  for (const auto& [key, value] : source.metadata()) {
    if (key.rfind("split.", 0) == 0 || key.rfind("quantize.imatrix", 0) == 0) continue;
    w.set(key, value);
  }
}

void check_source(const LlamaModel& model, const GgufFile& source) {
  if (const GgufValue* t = source.find("general.type"))
    if (t->type() == GgufType::STRING && t->as_string("general.type") != "model")
      throw Error(fmt::format("gguf export: {} has general.type '{}', expected a model file",
                              source.path(), t->as_string("general.type")));
  const std::string arch = gguf_architecture(model.config());
  if (source.architecture() != arch)
    throw Error(fmt::format(
        "gguf export: {} is a '{}' model, but the model being exported is '{}'; pass the file "
        "the base model was loaded from",
        source.path(), source.architecture(), arch));
}

bool is_output_projection(const std::string& name, bool tied) {
  return name == "output.weight" || (tied && name == "token_embd.weight");
}

// The type llama-quantize picks before checking that the rows fit its block.
DType intended_type(const std::string& name, const std::vector<int64_t>& shape, DType type,
                    bool tied) {
  if (shape.size() < 2 || ends_with(name, "_norm.weight") || !ends_with(name, ".weight"))
    return DType::F32;
  if (!is_quantized(type)) return type;
  if (is_output_projection(name, tied))
    return type == DType::Q8_0 || !fits(DType::Q6_K, shape.back()) ? DType::Q8_0 : DType::Q6_K;
  return type;
}

// llama-quantize's fallback for rows that do not fit the block (q4_k: see gguf_export.h).
DType with_fallback(DType t, int64_t row) {
  if (fits(t, row)) return t;
  if (t == DType::Q6_K) t = DType::Q8_0;
  if (t == DType::Q4_K) t = DType::Q4_1;
  return fits(t, row) ? t : DType::F16;
}

std::string join(const std::vector<std::string>& items, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? std::string(sep) : "") + items[i];
  return out;
}

// One note per kind of fallback: "180 tensors stored as q4_1 instead of q4_k (rows of 576 ...".
struct Fallbacks {
  std::map<std::pair<int, int>, std::vector<std::pair<std::string, int64_t>>> by_kind;

  void add(DType intended, DType stored, const std::string& name, int64_t row) {
    by_kind[{static_cast<int>(intended), static_cast<int>(stored)}].emplace_back(name, row);
  }
  void describe(std::vector<std::string>& notes) const {
    for (const auto& [kind, tensors] : by_kind) {
      const DType intended = static_cast<DType>(kind.first),
                  stored = static_cast<DType>(kind.second);
      std::vector<std::string> rows;
      for (const auto& [name, row] : tensors)
        if (std::find(rows.begin(), rows.end(), std::to_string(row)) == rows.end())
          rows.push_back(std::to_string(row));
      notes.push_back(fmt::format(
          "{} tensor(s) stored as {} instead of {} (e.g. {}): rows of {} are not a multiple of "
          "the {} block of {}{}",
          tensors.size(), dtype_name(stored), dtype_name(intended), tensors.front().first,
          join(rows, ", "), dtype_name(intended), dtype_info(intended).block_elems,
          intended == DType::Q4_K && stored == DType::Q4_1
              ? "; llama-quantize would use q5_0, which loom cannot write"
              : ""));
    }
  }
};

}  // namespace

// ---- merged model ---------------------------------------------------------------------------

const std::vector<DType>& merged_gguf_types() {
  static const std::vector<DType> types = {DType::F32,  DType::F16,  DType::BF16, DType::Q8_0,
                                           DType::Q4_0, DType::Q4_K, DType::Q6_K};
  return types;
}

DType parse_merged_gguf_type(std::string_view name) {
  return parse_from(merged_gguf_types(), name, "merged GGUF");
}

DType merged_tensor_type(const std::string& name, const std::vector<int64_t>& shape, DType type,
                         bool tied) {
  return with_fallback(intended_type(name, shape, type, tied), shape.back());
}

namespace {

// Adds one model tensor as the merged model stores it: its bytes when they already are what the
// file needs, else its (merged, reordered) values quantized when the file is written.
// `tied`: token_embd.weight is the output projection too (the file has no output.weight).
void add_model_tensor(GgufWriter& w, const LlamaModel& model, const ModelTensor& m,
                      const GgufTensorInfo& info, DType type, bool tied, Fallbacks& fallbacks,
                      std::vector<std::string>& notes) {
  const DType intended = intended_type(info.name, info.shape, type, tied);
  const DType stored = with_fallback(intended, info.shape.back());
  if (stored != intended) fallbacks.add(intended, stored, info.name, info.shape.back());
  if (is_quantized(type) && is_output_projection(info.name, tied))
    notes.push_back(fmt::format("{}{}: {} (llama-quantize's rule for the output projection)",
                                info.name, tied ? " (tied: also the output projection)" : "",
                                dtype_name(stored)));
  if (!needs_values(model, m, stored)) {
    w.add_tensor(info.name, *m.tensor);
    return;
  }
  w.add_tensor(info.name, info.shape, stored, [&model, m, stored] {
    const std::vector<float> v = export_values(model, m);
    return quantize(stored, v.data(), static_cast<int64_t>(v.size()));
  });
}

// What a merged GGUF is written from: a GGUF file of the model, or the model's Hugging Face
// folder with the file llama.cpp's converter would make of it described here.
struct MergedSource {
  std::string path;                     // for errors
  std::vector<GgufTensorInfo> tensors;  // in file order; name and shape are what is used
  std::function<void(GgufWriter&)> set_metadata;
  // Adds a tensor loom does not model (a GGUF's rope_freqs, say) as the source holds it.
  std::function<void(GgufWriter&, const GgufTensorInfo&)> add_unmodelled;

  const GgufTensorInfo* find(const std::string& name) const {
    for (const GgufTensorInfo& t : tensors)
      if (t.name == name) return &t;
    return nullptr;
  }
};

// Names of model tensors missing from the source or shaped differently there (at most 5).
std::vector<std::string> mismatches(const std::unordered_map<std::string, ModelTensor>& ours,
                                    const MergedSource& source) {
  std::vector<std::string> out;
  for (const auto& [name, m] : ours) {
    const GgufTensorInfo* info = source.find(name);
    if (!info)
      out.push_back(fmt::format("{} is not in the file", name));
    else if (m.tensor->shape() != info->shape)
      out.push_back(fmt::format("{} is {} in the model, {} in the file", name,
                                shape_str(m.tensor->shape()), shape_str(info->shape)));
  }
  std::sort(out.begin(), out.end());
  if (out.size() > 5) out.resize(5);
  return out;
}

GgufExportResult write_merged_gguf(const LlamaModel& model, const LoraModel* lora,
                                   const MergedSource& source, const std::string& out_path,
                                   const MergedGgufOptions& options) {
  std::unordered_map<std::string, ModelTensor> ours = model_tensors(model, lora);
  // A tied model whose LM head was adapted gets an output.weight its source does not have,
  // written after token_embd.weight (llama.cpp then stops using the embedding as the output).
  std::optional<ModelTensor> added_head;
  if (ours.count("output.weight") && source.find("output.weight") == nullptr) {
    added_head = ours.at("output.weight");
    ours.erase("output.weight");
  }
  const bool tied = !ours.count("output.weight") && !added_head;
  if (const std::vector<std::string> bad = mismatches(ours, source); !bad.empty())
    throw Error(fmt::format(
        "gguf export: the model does not match its source {} ({}); pass the file the base was "
        "loaded from",
        source.path, join(bad, "; ")));

  GgufWriter w;
  source.set_metadata(w);
  w.set_u32("general.file_type", llama_file_type(options.type));
  w.set_u32("general.quantization_version", kGgmlQuantizationVersion);
  if (!options.name.empty()) w.set_string("general.name", options.name);

  GgufExportResult result;
  result.path = out_path;
  Fallbacks fallbacks;
  for (const GgufTensorInfo& info : source.tensors) {
    const auto it = ours.find(info.name);
    if (it == ours.end()) {
      source.add_unmodelled(w, info);  // loom does not model it: carried as it is
      continue;
    }
    if (it->second.adapter) ++result.merged_modules;
    add_model_tensor(w, model, it->second, info, options.type, tied, fallbacks, result.notes);
    if (added_head && info.name == "token_embd.weight") {
      GgufTensorInfo head = info;
      head.name = "output.weight";
      if (added_head->adapter) ++result.merged_modules;
      add_model_tensor(w, model, *added_head, head, options.type, tied, fallbacks, result.notes);
      result.notes.push_back(fmt::format(
          "the LM head{} is written as an output.weight of its own: the source ties it to "
          "token_embd.weight, which is written unchanged",
          added_head->adapter ? " (with its adapter merged)" : ""));
    }
  }
  LOOM_CHECK(!lora || result.merged_modules == static_cast<int64_t>(lora->modules().size()),
             "gguf export: merged {} of {} adapted projections", result.merged_modules,
             lora ? lora->modules().size() : 0);
  fallbacks.describe(result.notes);
  result.tensors = static_cast<int64_t>(w.tensors().size());
  result.type_counts = count_types(w);
  result.bytes = w.write(out_path);
  return result;
}

GgufTensorInfo table_entry(std::string name, const Shape& shape) {
  GgufTensorInfo info;
  info.name = std::move(name);
  info.shape = shape;
  info.ne.assign(shape.rbegin(), shape.rend());
  return info;
}

}  // namespace

GgufExportResult export_merged_gguf(const LlamaModel& model, const LoraModel* lora,
                                    const GgufFile& source, const std::string& out_path,
                                    const MergedGgufOptions& options) {
  check_allowed(merged_gguf_types(), options.type, "merged model");
  check_source(model, source);
  MergedSource s;
  s.path = source.path();
  s.tensors = source.tensors();
  s.set_metadata = [&source](GgufWriter& w) { carry_metadata(source, w); };
  s.add_unmodelled = [&source](GgufWriter& w, const GgufTensorInfo& info) {
    w.add_tensor(info.name, source.tensor(info));
  };
  return write_merged_gguf(model, lora, s, out_path, options);
}

namespace {

std::unique_ptr<Tokenizer> hf_tokenizer_for_gguf(const std::string& folder) {
  const fs::path tokenizer_json = fs::path(folder) / "tokenizer.json";
  if (!fs::exists(tokenizer_json))
    throw Error(fmt::format(
        "gguf export: {} has no tokenizer.json; a GGUF model needs its tokenizer (loom reads "
        "such a folder's text as bytes, which llama.cpp has no vocabulary type for)",
        folder));
  return load_tokenizer_json(tokenizer_json.string());
}

}  // namespace

void check_merged_gguf_from_hf(const ModelConfig& config, const std::string& folder) {
  gguf_metadata_from_hf(config, *hf_tokenizer_for_gguf(folder), "", 0);
}

GgufExportResult export_merged_gguf_from_hf(const LlamaModel& model, const LoraModel* lora,
                                            const std::string& folder, const std::string& out_path,
                                            const MergedGgufOptions& options) {
  check_allowed(merged_gguf_types(), options.type, "merged model");
  const std::unique_ptr<Tokenizer> tokenizer = hf_tokenizer_for_gguf(folder);
  const ModelConfig& c = model.config();
  fs::path folder_path = fs::path(folder).lexically_normal();
  if (folder_path.filename().empty()) folder_path = folder_path.parent_path();  // "dir/"
  const std::string name = options.name.empty() ? folder_path.filename().string() : options.name;
  const std::vector<float> rope_factors = gguf_rope_freq_factors(c);

  // The tensor table llama.cpp's converter writes for the model, in loom's layer order.
  MergedSource s;
  s.path = folder;
  const std::unordered_map<std::string, ModelTensor> ours = model_tensors(model, lora);
  auto add = [&](const std::string& tensor) {
    const auto it = ours.find(tensor);
    if (it != ours.end()) s.tensors.push_back(table_entry(tensor, it->second.tensor->shape()));
  };
  if (!rope_factors.empty())
    s.tensors.push_back(
        table_entry("rope_freqs.weight", {static_cast<int64_t>(rope_factors.size())}));
  add("token_embd.weight");
  for (int64_t l = 0; l < c.n_layers; ++l) {
    for (const char* t :
         {"attn_norm.weight", "attn_q.weight", "attn_q.bias", "attn_k.weight", "attn_k.bias",
          "attn_v.weight", "attn_v.bias", "attn_output.weight", "attn_output.bias",
          "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"})
      add(fmt::format("blk.{}.{}", l, t));
  }
  add("output_norm.weight");
  if (!c.tie_word_embeddings) add("output.weight");
  // An adapted LM head of a tied model is added by write_merged_gguf, not listed here.
  const size_t modelled =
      ours.size() - (c.tie_word_embeddings && ours.count("output.weight") ? 1 : 0);
  LOOM_CHECK(s.tensors.size() == modelled + (rope_factors.empty() ? 0 : 1),
             "gguf export: the tensor table of {} has {} entries for {} model tensors", folder,
             s.tensors.size(), modelled);
  int64_t parameters = 0;  // as the converter counts them: every tensor's elements
  for (const GgufTensorInfo& t : s.tensors) parameters += shape_numel(t.shape);
  const GgufMetadata metadata = gguf_metadata_from_hf(c, *tokenizer, name, parameters);
  s.set_metadata = [&metadata](GgufWriter& w) {
    for (const auto& [key, value] : metadata) w.set(key, value);
  };
  s.add_unmodelled = [&rope_factors](GgufWriter& w, const GgufTensorInfo& info) {
    LOOM_CHECK(info.name == "rope_freqs.weight", "gguf export: no values for {}", info.name);
    w.add_tensor_values(info.name, info.shape, DType::F32, rope_factors);
  };
  return write_merged_gguf(model, lora, s, out_path, options);
}

GgufExportResult export_merged_gguf(const LlamaModel& model, const LoraModel* lora,
                                    const std::string& source_path, const std::string& out_path,
                                    const MergedGgufOptions& options) {
  if (fs::is_directory(source_path))
    return export_merged_gguf_from_hf(model, lora, source_path, out_path, options);
  const GgufFile source = GgufFile::open(source_path);
  return export_merged_gguf(model, lora, source, out_path, options);
}

// ---- LoRA adapter ---------------------------------------------------------------------------

const std::vector<DType>& gguf_adapter_types() {
  static const std::vector<DType> types = {DType::F32, DType::F16, DType::BF16, DType::Q8_0};
  return types;
}

DType parse_gguf_adapter_type(std::string_view name) {
  return parse_from(gguf_adapter_types(), name, "GGUF adapter");
}

std::string gguf_tied_head_adapter_reason() {
  return "the adapter has an LM head (lm_head) module, but the model ties its output "
         "projection to the token embedding, so its GGUF has no output.weight and llama.cpp "
         "finds nothing to apply output.weight.lora_a/b to. Export a merged GGUF instead "
         "(merged-gguf-*: the LM head gets a weight of its own), or a PEFT adapter, or train "
         "without lm_head in lora.targets";
}

double gguf_adapter_alpha(const LoraModel& lora) {
  const LoraConfig& c = lora.config();
  return c.rslora ? c.alpha * std::sqrt(static_cast<double>(c.rank)) : c.alpha;
}

GgufExportResult export_gguf_adapter(const LlamaModel& model, const LoraModel& lora,
                                     const std::string& out_path,
                                     const GgufAdapterOptions& options) {
  check_allowed(gguf_adapter_types(), options.type, "GGUF LoRA adapter");
  const LoraConfig& c = lora.config();
  const bool dora = c.dora || std::any_of(lora.modules().begin(), lora.modules().end(),
                                          [](const LoraModule& m) { return m.adapter->is_dora(); });
  if (dora)
    throw Error(
        "gguf export: DoRA adapters cannot be exported for llama.cpp: its LoRA adapters have no "
        "magnitude vector, so the trained result cannot be reproduced. Export a merged model "
        "instead (DoRA merges exactly), or a PEFT adapter");
  if (lora.modules().empty()) throw Error("gguf export: the LoRA model has no adapted modules");
  if (lora.head_module() != nullptr && model.config().tie_word_embeddings)
    throw Error(fmt::format("gguf export: {}", gguf_tied_head_adapter_reason()));

  const double alpha = gguf_adapter_alpha(lora);
  const float alpha_f32 = static_cast<float>(alpha);
  GgufWriter w;
  w.set_string("general.architecture", gguf_architecture(model.config()));
  w.set_string("general.type", "adapter");
  if (!options.name.empty()) w.set_string("general.name", options.name);
  w.set_u32("general.file_type", llama_file_type(options.type));
  w.set_u32("general.quantization_version", kGgmlQuantizationVersion);
  w.set_string("adapter.type", "lora");
  w.set_f32("adapter.lora.alpha", alpha_f32);
  // What the training used, for people reading the file (llama.cpp ignores these keys).
  w.set_u32("loom.lora.rank", static_cast<uint32_t>(c.rank));
  w.set_f32("loom.lora.alpha", static_cast<float>(c.alpha));
  w.set_bool("loom.lora.rslora", c.rslora);
  w.set_string("loom.lora.scale_convention",
               "llama.cpp: adapter.lora.alpha / rank (rank = lora_b ne[0]); per-module factors "
               "folded into lora_b");
  if (!options.base_model.empty()) w.set_string("loom.lora.base_model", options.base_model);

  GgufExportResult result;
  result.path = out_path;
  int64_t folded = 0, to_f16 = 0;
  int64_t pissa = 0;
  bool pissa_quantized_residual = false;
  for (const LoraModule& m : lora.modules()) {
    const LoraAdapter& a = *m.adapter;
    const Linear& p = *m.linear;
    const int64_t trained_rank = a.rank(), in = a.in_features(), out = a.out_features();
    std::vector<float> a_values = a.lora_a().to_vector(), b_values = a.lora_b().to_vector();
    int64_t r = trained_rank;
    if (!m.pissa_a0.empty()) {
      // PiSSA moved s B0 A0 out of the base weight into the adapter, but llama.cpp applies the
      // adapter to the original weight: the change to write is s (B A - B0 A0) = s [B, -B0] [A;
      // A0], a rank-2r adapter (as PEFT converts a PiSSA adapter to plain LoRA).
      r = 2 * trained_rank;
      a_values.insert(a_values.end(), m.pissa_a0.begin(), m.pissa_a0.end());
      std::vector<float> b2(static_cast<size_t>(out * r));
      for (int64_t i = 0; i < out; ++i)
        for (int64_t j = 0; j < trained_rank; ++j) {
          b2[i * r + j] = b_values[i * trained_rank + j];
          b2[i * r + trained_rank + j] = -m.pissa_b0[i * trained_rank + j];
        }
      b_values = std::move(b2);
      ++pissa;
      pissa_quantized_residual |= is_quantized(p.weight.dtype());
    }
    const double factor = a.scale() / (static_cast<double>(alpha_f32) / static_cast<double>(r));
    const float factor_f32 = static_cast<float>(factor);
    std::vector<float> b =
        reorder_projection_rows(model.config(), p.kind, std::move(b_values), r, /*to_gguf=*/true);
    if (factor_f32 != 1.0f) {
      for (float& x : b) x *= factor_f32;
      ++folded;
    }
    const DType type_a = fits(options.type, in) ? options.type : DType::F16;
    const DType type_b = fits(options.type, r) ? options.type : DType::F16;
    to_f16 += (type_a != options.type) + (type_b != options.type);
    const std::string base = p.gguf_name + ".weight";
    w.add_tensor_values(base + ".lora_a", {r, in}, type_a, std::move(a_values));
    w.add_tensor_values(base + ".lora_b", {out, r}, type_b, std::move(b));
  }
  w.set_u32("loom.lora.folded_modules", static_cast<uint32_t>(folded));
  w.set_u32("loom.lora.pissa_modules", static_cast<uint32_t>(pissa));
  result.notes.push_back(
      fmt::format("adapter.lora.alpha = {} ({} modules; llama.cpp scales each "
                  "by alpha / rank)",
                  alpha_f32, lora.modules().size()));
  if (pissa > 0)
    result.notes.push_back(fmt::format(
        "{} PiSSA modules written at twice their trained rank, as [B, -B0] [A; A0]: the trained "
        "adapter minus the principal part PiSSA took out of the base, so that llama.cpp can apply "
        "them to the original base{}",
        pissa,
        pissa_quantized_residual
            ? "; the trained residual was quantized, so the result differs from the trained "
              "model by that quantization error (export a merged model to keep it exact)"
            : ""));
  if (folded > 0)
    result.notes.push_back(fmt::format(
        "{} modules have a trained scale other than alpha / rank; the factor is folded into "
        "their lora_b",
        folded));
  if (to_f16 > 0)
    result.notes.push_back(fmt::format(
        "{} tensors written as f16: their rows are not a multiple of the {} block of {}", to_f16,
        dtype_name(options.type), dtype_info(options.type).block_elems));
  result.tensors = static_cast<int64_t>(w.tensors().size());
  result.type_counts = count_types(w);
  result.bytes = w.write(out_path);
  return result;
}

}  // namespace loom
