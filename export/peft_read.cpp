// Reading PEFT LoRA adapters onto a loaded model (peft_read.h).
#include "export/peft_read.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "autograd/check.h"
#include "export/peft_export.h"
#include "export/qk_rows.h"
#include "layers/safetensors.h"

namespace loom {

namespace fs = std::filesystem;

namespace {

using ojson = nlohmann::ordered_json;

// Keys that do not change what a loaded adapter computes.
const std::set<std::string> kIgnoredKeys = {
    "base_model_name_or_path", "revision",     "auto_mapping", "inference_mode",
    "megatron_core",           "loftq_config", "eva_config",   "corda_config",
    "runtime_config"};

// null, false, "", [] or {}: an option left at its "off" value.
bool is_off(const ojson& v) {
  return v.is_null() || (v.is_boolean() && !v.get<bool>()) ||
         ((v.is_array() || v.is_object()) && v.empty()) ||
         (v.is_string() && v.get<std::string>().empty());
}

class ConfigReader {
 public:
  ConfigReader(const ojson& j, std::string source) : j_(j), source_(std::move(source)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw Error(fmt::format("{}: '{}' {}", source_, key, what));
  }
  bool has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  const ojson& at(const char* key) const { return j_.at(key); }

  int64_t integer(const char* key) const {
    if (!has(key)) fail(key, "is missing; expected an integer");
    const ojson& v = j_.at(key);
    if (!v.is_number_integer())
      fail(key, fmt::format("is {} ({}), expected an integer", v.type_name(), v.dump()));
    return v.get<int64_t>();
  }
  double number(const char* key, double fallback, bool required = false) const {
    if (!has(key)) {
      if (required) fail(key, "is missing; expected a number");
      return fallback;
    }
    const ojson& v = j_.at(key);
    if (!v.is_number())
      fail(key, fmt::format("is {} ({}), expected a number", v.type_name(), v.dump()));
    return v.get<double>();
  }
  bool boolean(const char* key) const {
    if (!has(key)) return false;
    const ojson& v = j_.at(key);
    if (!v.is_boolean())
      fail(key, fmt::format("is {} ({}), expected true or false", v.type_name(), v.dump()));
    return v.get<bool>();
  }
  // The key must be absent or "off" (is_off); `why` says what loom does not support.
  void require_off(const char* key, const std::string& why) const {
    if (j_.contains(key) && !is_off(j_.at(key)))
      fail(key, fmt::format("is {}: {}", j_.at(key).dump(), why));
  }
  template <class T>
  NamePatterns<T> patterns(const char* key) const {
    NamePatterns<T> out;
    if (!has(key)) return out;
    const ojson& v = j_.at(key);
    if (!v.is_object())
      fail(key, fmt::format("is {}, expected an object of regex -> value", v.type_name()));
    for (const auto& [k, value] : v.items()) {
      const bool ok = std::is_integral_v<T> ? value.is_number_integer() : value.is_number();
      if (!ok)
        fail(key, fmt::format("entry '{}' is {}, expected {}", k, value.dump(),
                              std::is_integral_v<T> ? "an integer" : "a number"));
      out.emplace_back(k, value.template get<T>());
    }
    return out;
  }
  const ojson& json() const { return j_; }
  const std::string& source() const { return source_; }

 private:
  const ojson& j_;
  std::string source_;
};

void read_targets(const ConfigReader& r, LoraTargets& t) {
  if (!r.has("target_modules"))
    r.fail("target_modules", "is missing or null; expected a list of module names or a regex");
  const ojson& v = r.at("target_modules");
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s == "all-linear") {
      t.modules = {"all-linear"};  // PEFT's shorthand, not a regex
    } else {
      t.regex = s;
      t.modules.clear();
    }
  } else if (v.is_array()) {
    t.modules.clear();
    for (const ojson& e : v) {
      if (!e.is_string())
        r.fail("target_modules", fmt::format("has {}, expected strings", e.dump()));
      t.modules.push_back(e.get<std::string>());
    }
  } else {
    r.fail("target_modules",
           fmt::format("is {}, expected a list of names or a regex string", v.type_name()));
  }
  if (r.has("layers_to_transform")) {
    const ojson& l = r.at("layers_to_transform");
    if (l.is_number_integer()) {
      t.layers = {l.get<int64_t>()};
    } else if (l.is_array()) {
      for (const ojson& e : l) {
        if (!e.is_number_integer())
          r.fail("layers_to_transform", fmt::format("has {}, expected layer indices", e.dump()));
        t.layers.push_back(e.get<int64_t>());
      }
    } else {
      r.fail("layers_to_transform",
             fmt::format("is {}, expected a list of layer indices", l.type_name()));
    }
  }
  // PEFT adapts no module without a layer index when layers_to_transform is given, so a
  // target naming the LM head adapts nothing there: read the config as PEFT applies it (loom's
  // own recipes refuse the pair instead, lora/targets.h).
  if (!t.layers.empty())
    std::erase_if(t.modules, [](const std::string& m) {
      return m == "lm_head" || m == "output" || m.ends_with(".lm_head");
    });
  if (r.has("layers_pattern")) {
    const ojson& p = r.at("layers_pattern");
    const bool layers = (p.is_string() && (p.get<std::string>().empty() || p == "layers")) ||
                        (p.is_array() && (p.empty() || (p.size() == 1 && p[0] == "layers")));
    if (!layers)
      r.fail("layers_pattern",
             fmt::format("is {}; Llama-family blocks are 'model.layers.N', so only null or "
                         "\"layers\" is supported",
                         p.dump()));
  }
}

LoraInit read_init(const ConfigReader& r) {
  if (!r.json().contains("init_lora_weights")) return LoraInit::Kaiming;
  const ojson& v = r.at("init_lora_weights");
  if (v.is_boolean()) return LoraInit::Kaiming;  // the saved A / B replace the init anyway
  if (v == "gaussian") return LoraInit::Gaussian;
  if (v == "pissa") return LoraInit::Pissa;
  r.fail("init_lora_weights",
         fmt::format("is {}; supported: true, false, \"gaussian\", \"pissa\" (the others change "
                     "the base weights in ways loom does not reproduce)",
                     v.dump()));
}

}  // namespace

PeftAdapterConfig peft_config_from_json(const ojson& j, const std::string& source) {
  if (!j.is_object()) throw Error(fmt::format("{}: expected a JSON object", source));
  const ConfigReader r(j, source);
  const std::string type = r.has("peft_type") && r.at("peft_type").is_string()
                               ? r.at("peft_type").get<std::string>()
                               : std::string();
  if (type != "LORA")
    r.fail("peft_type",
           fmt::format("is {}; loom reads LORA adapters only",
                       j.contains("peft_type") ? j.at("peft_type").dump() : "missing"));
  if (r.has("task_type") && r.at("task_type") != "CAUSAL_LM")
    r.fail("task_type", fmt::format("is {}; expected \"CAUSAL_LM\" (a Llama-family causal LM)",
                                    r.at("task_type").dump()));
  if (r.has("bias") && r.at("bias") != "none")
    r.fail("bias", fmt::format("is {}; loom's adapters train no biases, expected \"none\"",
                               r.at("bias").dump()));
  r.require_off("modules_to_save", "fully trained extra modules are not supported");
  r.require_off("fan_in_fan_out", "Llama-family projections are [out, in]; expected false");
  r.require_off("lora_bias", "LoRA biases are not supported");
  r.require_off("exclude_modules", "excluded modules are not supported");
  r.require_off("trainable_token_indices", "trainable token embeddings are not supported");
  r.require_off("layer_replication", "layer replication is not supported");
  r.require_off("megatron_config", "Megatron layers are not supported");
  static const std::set<std::string> read = {"peft_type",
                                             "task_type",
                                             "bias",
                                             "modules_to_save",
                                             "fan_in_fan_out",
                                             "lora_bias",
                                             "exclude_modules",
                                             "trainable_token_indices",
                                             "layer_replication",
                                             "megatron_config",
                                             "r",
                                             "lora_alpha",
                                             "target_modules",
                                             "layers_to_transform",
                                             "layers_pattern",
                                             "rank_pattern",
                                             "alpha_pattern",
                                             "use_rslora",
                                             "use_dora",
                                             "lora_dropout",
                                             "init_lora_weights"};
  for (const auto& [key, value] : j.items())
    if (!read.count(key) && !kIgnoredKeys.count(key) && !is_off(value))
      r.fail(key, fmt::format("is {}: an option loom does not know; it may change what the "
                              "adapter computes, so the adapter is refused",
                              value.dump()));

  PeftAdapterConfig out;
  LoraConfig& c = out.lora;
  c.rank = r.integer("r");
  c.alpha = r.number("lora_alpha", 8.0);
  c.dropout = static_cast<float>(r.number("lora_dropout", 0.0));
  c.rslora = r.boolean("use_rslora");
  c.dora = r.boolean("use_dora");
  c.init = read_init(r);
  read_targets(r, c.targets);
  c.rank_pattern = r.patterns<int64_t>("rank_pattern");
  c.alpha_pattern = r.patterns<double>("alpha_pattern");
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", source, e.what()));
  }
  if (r.has("base_model_name_or_path") && r.at("base_model_name_or_path").is_string())
    out.base_model_name_or_path = r.at("base_model_name_or_path").get<std::string>();
  return out;
}

PeftAdapterConfig read_peft_adapter_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / kPeftConfigFile).string();
  std::ifstream in(path);
  if (!in) throw Error(fmt::format("{}: cannot open (is {} a PEFT adapter folder?)", path, dir));
  ojson j;
  try {
    j = ojson::parse(in);
  } catch (const ojson::exception& e) {
    throw Error(fmt::format("{}: not valid JSON: {}", path, e.what()));
  }
  return peft_config_from_json(j, path);
}

namespace {

std::string tensors_path(const std::string& dir) {
  const fs::path st = fs::path(dir) / kPeftTensorsFile;
  if (fs::exists(st)) return st.string();
  const fs::path bin = fs::path(dir) / "adapter_model.bin";
  if (fs::exists(bin))
    throw Error(
        fmt::format("{}: PyTorch pickle adapters are not supported; convert it to "
                    "safetensors (load it with peft and save_pretrained(dir, "
                    "safe_serialization=True))",
                    bin.string()));
  throw Error(fmt::format("{}: no {} in this folder", dir, kPeftTensorsFile));
}

// Where each parameter lives: its projection and, for rows to permute, the row length.
struct ParameterSlot {
  Projection kind;
  int64_t row_cols;  // lora_B: rank; magnitude: 1; lora_A: 0 (never permuted)
};

std::map<std::string, ParameterSlot> parameter_slots(const LoraModel& lora) {
  std::map<std::string, ParameterSlot> out;
  for (const LoraModule& m : lora.modules()) {
    const Projection kind = m.linear->kind;
    out[m.adapter->lora_a().name()] = {kind, 0};
    out[m.adapter->lora_b().name()] = {kind, m.adapter->rank()};
    if (const auto* dora = dynamic_cast<const DoraAdapter*>(m.adapter.get()))
      out[dora->magnitude().name()] = {kind, 1};
  }
  return out;
}

// PEFT's key of a DoRA magnitude once ended in ".weight"; its loader accepts both.
std::string loom_name(const std::string& key) {
  const std::string old_suffix = ".lora_magnitude_vector.weight";
  if (key.size() > old_suffix.size() &&
      key.compare(key.size() - old_suffix.size(), old_suffix.size(), old_suffix) == 0)
    return key.substr(0, key.size() - std::string(".weight").size());
  return key;
}

// PEFT's save_pretrained of an adapter with lm_head among its targets also writes the LM head's
// base weight (save_embedding_layers "auto", for a resized vocabulary). loom uses the base
// model's own weight: the saved one must be that weight, else the adapter is refused.
void check_saved_head_weight(const SafetensorsFile& file, const SafetensorsTensorInfo& info,
                             const LoraModel& lora) {
  const LoraModule* head = lora.head_module();
  if (head == nullptr)
    throw Error(
        fmt::format("{}: tensor '{}' is an LM head weight, but adapter_config.json does "
                    "not target lm_head",
                    file.path(), info.name));
  const Tensor& w =
      head->adapter->merged() ? head->adapter->unmerged_weight() : head->linear->weight;
  if (info.shape != w.shape())
    throw Error(fmt::format(
        "{}: tensor '{}' is {}, but the base model's LM head is {}: the adapter was saved with a "
        "resized vocabulary, which loom cannot load",
        file.path(), info.name, shape_str(info.shape), shape_str(w.shape())));
  const std::vector<float> saved = file.tensor(info.name).to_vector();
  const std::vector<float> base = w.to_vector();
  double worst = 0.0, scale = 0.0;
  for (size_t i = 0; i < saved.size(); ++i) {
    worst = std::max(worst, std::fabs(static_cast<double>(saved[i]) - base[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(base[i])));
  }
  // The same weight in another storage (bf16 of an f32 base, a dequantized GGUF) rounds by at
  // most ~1% of the largest value (q4 blocks, bf16's 8 bits); a trained or resized head differs
  // by more.
  if (!(worst <= 0.02 * scale))
    throw Error(fmt::format(
        "{}: tensor '{}' (the LM head weight PEFT saved with the adapter) differs from the base "
        "model's LM head by up to {:.4g} (largest value {:.4g}): the adapter was saved on another "
        "base or with a changed head, which loom does not load",
        file.path(), info.name, worst, scale));
}

void load_tensors(const SafetensorsFile& file, LoraModel& lora, const ModelConfig& config) {
  const std::map<std::string, ParameterSlot> slots = parameter_slots(lora);
  std::vector<std::pair<std::string, std::vector<float>>> values;
  for (const SafetensorsTensorInfo& info : file.tensors()) {
    if (info.name == "base_model.model.lm_head.base_layer.weight" ||
        info.name == "base_model.model.lm_head.weight") {
      check_saved_head_weight(file, info, lora);
      continue;
    }
    if (info.name.find("lora_embedding_") != std::string::npos)
      throw Error(
          fmt::format("{}: tensor '{}' adapts an embedding; loom adapts the seven "
                      "projections of each block and the LM head only",
                      file.path(), info.name));
    const std::string name = loom_name(info.name);
    const auto slot = slots.find(name);
    if (slot == slots.end()) {
      std::string hint;
      try {
        lora.parameter(name);
      } catch (const Error& e) {
        hint = e.what();
      }
      throw Error(
          fmt::format("{}: tensor '{}' is not a parameter of the adapter that "
                      "adapter_config.json describes on this model ({})",
                      file.path(), info.name, hint));
    }
    const Tensor expected = lora.parameter(name);
    if (info.shape != expected.shape())
      throw Error(fmt::format("{}: tensor '{}' is {}, expected {} for this config and model",
                              file.path(), info.name, shape_str(info.shape),
                              shape_str(expected.shape())));
    std::vector<float> v = file.tensor(info.name).to_vector();
    if (slot->second.row_cols > 0)
      v = rows_to_model_order(config, slot->second.kind, std::move(v), slot->second.row_cols);
    values.emplace_back(name, std::move(v));
  }
  try {
    lora.load_parameters(values, /*strict=*/true);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", file.path(), e.what()));
  }
}

}  // namespace

void load_peft_tensors(const std::string& dir, LoraModel& lora, const LlamaModel& model) {
  load_tensors(SafetensorsFile::open(tensors_path(dir)), lora, model.config());
}

LoraModel load_peft_adapter(const std::string& dir, LlamaModel& model, BaseDType base_dtype) {
  PeftAdapterConfig config = read_peft_adapter_config(dir);
  config.lora.base_dtype = base_dtype;
  const SafetensorsFile file = SafetensorsFile::open(tensors_path(dir));
  LoraModel lora(model, config.lora);
  try {
    load_tensors(file, lora, model.config());
  } catch (...) {
    lora.detach();
    throw;
  }
  return lora;
}

}  // namespace loom
