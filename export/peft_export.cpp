// PEFT adapter export: adapter_config.json + adapter_model.safetensors (peft_export.h).
#include "export/peft_export.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include "autograd/check.h"
#include "export/qk_rows.h"
#include "export/safetensors_writer.h"

namespace loom {

namespace fs = std::filesystem;

namespace {

using nlohmann::json;

// 16 rather than 16.0 for integral values, as PEFT's own files have them.
json json_number(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 9.0e15)
    return static_cast<int64_t>(v);
  return v;
}

// The float as its shortest decimal ("0.05", not 0.05000000074505806).
double shortest_double(float f) {
  return std::stod(fmt::format("{}", f));
}

std::string regex_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (std::string_view(".^$*+?()[]{}|\\").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

struct ModuleInfo {
  const Linear* linear;
  Projection kind;
  std::string hf_name;
  int64_t rank;
  double alpha;
};

std::vector<ModuleInfo> module_infos(const LoraModel& lora) {
  std::vector<ModuleInfo> out;
  for (const LoraModule& m : lora.modules())
    out.push_back(
        {m.linear, m.linear->kind, m.linear->hf_name, m.adapter->rank(), m.adapter->alpha()});
  return out;
}

// target_modules (+ layers_to_transform): a list of names over a layer set when the adapted
// modules are a full product of the two (lora/targets.h), else a regex naming every module.
void write_targets(const std::vector<ModuleInfo>& modules, int64_t n_layers, json& j) {
  std::vector<const Linear*> linears;
  for (const ModuleInfo& m : modules) linears.push_back(m.linear);
  if (const std::optional<LoraTargets> t = product_targets(linears, n_layers)) {
    j["target_modules"] = t->modules;
    j["layers_to_transform"] = t->layers.empty() ? json(nullptr) : json(t->layers);
    return;
  }
  std::string regex;
  for (const ModuleInfo& m : modules) {
    if (!regex.empty()) regex += '|';
    regex += regex_escape(m.hf_name);
  }
  j["target_modules"] = regex;  // PEFT: re.fullmatch(target_modules, module name)
  j["layers_to_transform"] = nullptr;
}

// rank_pattern / alpha_pattern for the modules whose value differs from the default: keyed by
// projection name when every adapted module of that projection has the same value, else by
// module name (PEFT matches keys with re.match(r"(.*\.)?(key)$", module name)).
template <class T, class Get>
json value_pattern(const std::vector<ModuleInfo>& modules, T fallback, Get get) {
  json pattern = json::object();
  std::vector<Projection> kinds(std::begin(kAllProjections), std::end(kAllProjections));
  kinds.push_back(Projection::Output);
  for (Projection p : kinds) {
    std::vector<const ModuleInfo*> of_kind;
    for (const ModuleInfo& m : modules)
      if (m.kind == p) of_kind.push_back(&m);
    if (of_kind.empty()) continue;
    const bool uniform = std::all_of(of_kind.begin(), of_kind.end(), [&](const ModuleInfo* m) {
      return get(*m) == get(*of_kind.front());
    });
    if (uniform) {
      if (get(*of_kind.front()) != fallback)
        pattern[std::string(projection_hf_name(p))] = json_number(get(*of_kind.front()));
      continue;
    }
    for (const ModuleInfo* m : of_kind)
      if (get(*m) != fallback) pattern[regex_escape(m->hf_name)] = json_number(get(*m));
  }
  return pattern;
}

json init_lora_weights(LoraInit init) {
  switch (init) {
    case LoraInit::Kaiming:
      return true;
    case LoraInit::Gaussian:
      return "gaussian";
    case LoraInit::Pissa:
      return "pissa";
  }
  LOOM_FAIL("peft export: unknown LoraInit {}", static_cast<int>(init));
}

}  // namespace

std::vector<PeftTensor> peft_adapter_tensors(const LoraModel& lora, const LlamaModel& model) {
  const ModelConfig& config = model.config();
  std::vector<PeftTensor> out;
  for (const LoraModule& m : lora.modules()) {
    const LoraAdapter& a = *m.adapter;
    const Projection kind = m.linear->kind;
    out.push_back({a.lora_a().name(), a.lora_a().shape(), a.lora_a().to_vector()});
    out.push_back({a.lora_b().name(), a.lora_b().shape(),
                   rows_to_hf_order(config, kind, a.lora_b().to_vector(), a.rank())});
    if (const auto* dora = dynamic_cast<const DoraAdapter*>(&a))
      out.push_back({dora->magnitude().name(), dora->magnitude().shape(),
                     rows_to_hf_order(config, kind, dora->magnitude().to_vector(), 1)});
  }
  return out;
}

json peft_adapter_config(const LoraModel& lora, int64_t n_layers,
                         const std::string& base_model_name_or_path) {
  const LoraConfig& c = lora.config();
  const std::vector<ModuleInfo> modules = module_infos(lora);
  LOOM_CHECK(!modules.empty(), "peft export: the LoraModel has no adapted modules");
  json j;
  // The keys of peft 0.15.2's LoraConfig.to_dict(); nothing else (PEFT warns about unknown keys).
  j["alpha_pattern"] = value_pattern(modules, c.alpha, [](const ModuleInfo& m) { return m.alpha; });
  j["auto_mapping"] = nullptr;
  j["base_model_name_or_path"] = base_model_name_or_path;
  j["bias"] = "none";
  j["corda_config"] = nullptr;
  j["eva_config"] = nullptr;
  j["exclude_modules"] = nullptr;
  j["fan_in_fan_out"] = false;
  j["inference_mode"] = true;  // as PEFT's save_pretrained writes it
  j["init_lora_weights"] = init_lora_weights(c.init);
  j["layer_replication"] = nullptr;
  j["layers_pattern"] = nullptr;
  j["loftq_config"] = json::object();
  j["lora_alpha"] = json_number(c.alpha);
  j["lora_bias"] = false;
  j["lora_dropout"] = shortest_double(c.dropout);
  j["megatron_config"] = nullptr;
  j["megatron_core"] = "megatron.core";
  j["modules_to_save"] = nullptr;
  j["peft_type"] = "LORA";
  j["r"] = c.rank;
  j["rank_pattern"] = value_pattern(modules, c.rank, [](const ModuleInfo& m) { return m.rank; });
  j["revision"] = nullptr;
  write_targets(modules, n_layers, j);
  j["task_type"] = "CAUSAL_LM";
  j["trainable_token_indices"] = nullptr;
  j["use_dora"] = c.dora;
  j["use_rslora"] = c.rslora;
  return j;
}

ExportReport export_peft_adapter(const std::string& out_dir, const LoraModel& lora,
                                 const LlamaModel& model, const std::string& source_path,
                                 const PeftExportOptions& options) {
  const std::string base =
      options.base_model_name_or_path.empty() ? source_path : options.base_model_name_or_path;
  const json config = peft_adapter_config(lora, model.config().n_layers, base);
  const std::vector<PeftTensor> tensors = peft_adapter_tensors(lora, model);

  StagingDir dir(out_dir, options.replace_existing);
  std::vector<SafetensorsEntry> entries;
  for (const PeftTensor& t : tensors) entries.push_back({t.name, DType::F32, t.shape});
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"},
      {"loom_scale_convention", lora.config().rslora ? "alpha/sqrt(rank)" : "alpha/rank"},
      {"loom_q_k_row_order", "hf"}};
  const uint64_t bytes = write_safetensors(dir.file(kPeftTensorsFile), entries, metadata,
                                           [&](size_t i) { return tensors[i].values; });
  dir.add_written(kPeftTensorsFile, bytes);
  dir.write_text(kPeftConfigFile, config.dump(2) + "\n");

  ExportReport& report = dir.report();
  if (qk_rows_in_gguf_order(model.config()))
    report.notes.push_back(
        "q_proj / k_proj lora_B rows (and DoRA magnitudes) were put back from llama.cpp's GGUF "
        "row order into Hugging Face's");
  if (lora.config().init == LoraInit::Pissa)
    report.notes.push_back(
        "init_lora_weights is \"pissa\": PEFT recomputes the residual base weights (the base "
        "minus its top-rank part) from the base model when it loads the adapter, as loom did");
  if (options.base_model_name_or_path.empty() && !fs::is_directory(source_path))
    report.notes.push_back(fmt::format(
        "base_model_name_or_path is the GGUF file {}, which PEFT cannot load; name the Hugging "
        "Face model the GGUF was made from to use the adapter with PEFT",
        source_path));
  dir.commit();
  return dir.report();
}

}  // namespace loom
