// Attaching an adapter of any supported layout to its base (see adapter_load.h).
#include "trainer/adapter_load.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string_view>

#include "autograd/check.h"
#include "export/gguf_adapter_read.h"
#include "export/peft_read.h"
#include "export/qk_rows.h"
#include "layers/gguf.h"
#include "trainer/adapter_file.h"

namespace loom {
namespace fs = std::filesystem;

namespace {

template <class T>
std::vector<std::pair<std::string, T>> patterns_of(const nlohmann::json& j) {
  std::vector<std::pair<std::string, T>> out;
  for (const auto& item : j) out.emplace_back(item.at(0).get<std::string>(), item.at(1).get<T>());
  return out;
}

bool is_gguf_adapter(const std::string& path) {
  if (!fs::is_regular_file(path)) return false;
  char magic[4] = {};
  std::ifstream(path, std::ios::binary).read(magic, 4);
  if (std::string_view(magic, 4) != "GGUF") return false;  // not GGUF at all: say what is expected
  const GgufFile f = GgufFile::open(path);
  const auto* type = f.find("general.type");
  return type != nullptr && type->type() == GgufType::STRING &&
         type->as_string("general.type") == "adapter";
}

// A loom adapter keeps q/k lora_B rows in the order of the model it was trained on; attached to
// a model of the other order its q/k updates would land on the wrong rows.
void check_qk_row_order(const nlohmann::json& j, const LlamaModel& model, const std::string& path) {
  const std::string order = j.value("q_k_row_order", std::string("hf"));
  const std::string model_order = qk_rows_in_gguf_order(model.config()) ? "gguf" : "hf";
  if (order != model_order)
    throw Error(fmt::format(
        "{}: the adapter's q/k rows are in {} order (trained on a {} base) but this base holds "
        "them in {} order; use a base of the kind it was trained on, or export the adapter as "
        "PEFT (loom export -f peft) and use that, which is converted on loading",
        path, order, order == "gguf" ? "llama.cpp GGUF" : "Hugging Face", model_order));
}

// The folder holding loom_adapter.json for a run directory or an adapter folder; "" if neither.
fs::path loom_adapter_dir(const fs::path& p) {
  if (fs::is_directory(p) && fs::exists(p / "adapter" / "loom_adapter.json")) return p / "adapter";
  if (fs::is_directory(p) && fs::exists(p / "loom_adapter.json")) return p;
  return {};
}

}  // namespace

LoraConfig lora_config_from_adapter_json(const nlohmann::json& j) {
  LoraConfig c;
  c.rank = j.at("rank").get<int64_t>();
  c.alpha = j.at("alpha").get<double>();
  c.rslora = j.at("rslora").get<bool>();
  c.dora = j.at("dora").get<bool>();
  c.init = parse_lora_init(j.at("init").get<std::string>());
  c.base_dtype = parse_base_dtype(j.at("base_dtype").get<std::string>());
  c.targets.modules = j.at("targets").get<std::vector<std::string>>();
  c.targets.regex = j.at("target_regex").get<std::string>();
  c.targets.layers = j.at("layers").get<std::vector<int64_t>>();
  c.rank_pattern = patterns_of<int64_t>(j.at("rank_pattern"));
  c.alpha_pattern = patterns_of<double>(j.at("alpha_pattern"));
  c.dropout = j.at("dropout").get<float>();
  c.seed = j.at("seed").get<uint64_t>();
  return c;
}

namespace {

// What a path that is not a readable adapter holds, for the error: "no such file or folder",
// "a folder holding a.txt, b.bin", ...
std::string describe_path(const fs::path& p) {
  std::error_code ec;
  if (!fs::exists(p, ec))
    return ec ? "a path that cannot be read (" + ec.message() + ")" : "no such file or folder";
  if (fs::is_regular_file(p, ec)) return fmt::format("a file of {} bytes", fs::file_size(p, ec));
  if (!fs::is_directory(p, ec)) return "neither a regular file nor a folder";
  std::vector<std::string> names;
  for (fs::directory_iterator it(p, ec), end; !ec && it != end; it.increment(ec))
    names.push_back(it->path().filename().string());
  if (ec) return "a folder that cannot be listed (" + ec.message() + ")";
  if (names.empty()) return "an empty folder";
  std::sort(names.begin(), names.end());
  const size_t shown = std::min<size_t>(names.size(), 6);
  std::string list;
  for (size_t i = 0; i < shown; ++i) list += (i ? ", " : "") + names[i];
  if (names.size() > shown) list += fmt::format(", ... ({} in all)", names.size());
  return "a folder holding " + list;
}

}  // namespace

AdaptedModel load_adapted_model(const std::string& adapter_path, const std::string& base_override) {
  AdaptedModel am;
  am.adapter_path = adapter_path;
  const fs::path p(adapter_path);
  if (fs::is_directory(p) && fs::exists(p / "adapter" / "loom_adapter.json")) am.run_dir = p.string();
  const fs::path loom_dir = !am.run_dir.empty() ? p / "adapter" : p;
  if (fs::is_directory(loom_dir) && fs::exists(loom_dir / "loom_adapter.json")) {
    am.kind = "loom";
    const nlohmann::json j = read_adapter_config(loom_dir.string());
    am.base_path = base_override.empty() ? j.at("base_model").get<std::string>() : base_override;
    if (base_override.empty() && !fs::exists(am.base_path))
      throw Error(fmt::format(
          "{}: the adapter's base model '{}' (base_model in loom_adapter.json, as the run was "
          "given it) is not found from {}; name the base with --model (loom eval / generate) "
          "or --base (loom export)",
          loom_dir.string(), am.base_path, fs::current_path().string()));
    am.base = load_training_model(am.base_path);
    check_qk_row_order(j, *am.base.model, loom_dir.string());
    am.lora = std::make_unique<LoraModel>(*am.base.model, lora_config_from_adapter_json(j));
    std::vector<std::pair<std::string, std::vector<float>>> values;
    int64_t top_block = -1;  // the highest block index the adapter's tensors name
    for (AdapterTensor& t : read_adapter_tensors(loom_dir.string())) {
      const size_t at = t.name.find("layers.");
      if (at != std::string::npos)
        top_block = std::max<int64_t>(top_block, std::atoll(t.name.c_str() + at + 7));
      values.emplace_back(std::move(t.name), std::move(t.values));
    }
    const int64_t n_layers = am.base.model->config().n_layers;
    if (top_block >= n_layers)
      throw Error(
          fmt::format("{}: the adapter has tensors for block {}, but the base model {} "
                      "has {} blocks (0..{}): it was trained on another model",
                      loom_dir.string(), top_block, am.base_path, n_layers, n_layers - 1));
    try {
      am.lora->load_parameters(values, /*strict=*/true);
    } catch (const Error& e) {
      throw Error(fmt::format("{}: the adapter does not fit the base model {}: {}",
                              loom_dir.string(), am.base_path, e.what()));
    }
  } else if (fs::is_directory(p) && fs::exists(p / "adapter_config.json")) {
    am.kind = "peft";
    const PeftAdapterConfig pc = read_peft_adapter_config(p.string());
    am.base_path = base_override;
    if (am.base_path.empty() && !pc.base_model_name_or_path.empty() &&
        fs::exists(pc.base_model_name_or_path))
      am.base_path = pc.base_model_name_or_path;
    if (am.base_path.empty())
      throw Error(fmt::format(
          "{}: a PEFT adapter for base_model_name_or_path \"{}\", which is not a local path: "
          "give the base model (a .gguf file or a Hugging Face folder): loom export --base, "
          "loom eval / generate --model",
          adapter_path, pc.base_model_name_or_path));
    am.base = load_training_model(am.base_path);
    am.lora = std::make_unique<LoraModel>(load_peft_adapter(p.string(), *am.base.model));
  } else if (is_gguf_adapter(adapter_path)) {
    am.kind = "gguf";
    if (base_override.empty())
      throw Error(fmt::format("{}: a llama.cpp LoRA adapter does not name its base model: give the "
                              ".gguf it was made for (loom export --base, loom eval / generate --model)",
                              adapter_path));
    am.base_path = base_override;
    am.base = load_training_model(am.base_path);
    am.lora = std::make_unique<LoraModel>(load_gguf_adapter(adapter_path, *am.base.model));
  } else {
    throw Error(fmt::format(
        "{}: not an adapter loom can read: expected a loom run directory (adapter/"
        "loom_adapter.json), a loom adapter folder (loom_adapter.json), a PEFT adapter folder "
        "(adapter_config.json + adapter_model.safetensors) or a llama.cpp LoRA adapter .gguf "
        "(general.type = adapter); found {}",
        adapter_path, describe_path(p)));
  }
  am.lora->set_training(false);
  return am;
}

AdapterToTrain read_adapter_to_train(const std::string& path, const LlamaModel& model) {
  AdapterToTrain a;
  a.path = path;
  if (const fs::path dir = loom_adapter_dir(path); !dir.empty()) {
    a.kind = "loom";
    const nlohmann::json j = read_adapter_config(dir.string());
    check_qk_row_order(j, model, dir.string());
    a.config = lora_config_from_adapter_json(j);
    for (AdapterTensor& t : read_adapter_tensors(dir.string()))
      a.values.emplace_back(std::move(t.name), std::move(t.values));
  } else if (fs::is_directory(path) && fs::exists(fs::path(path) / "adapter_config.json")) {
    a.kind = "peft";
    a.config = read_peft_adapter_config(path).lora;
  } else if (is_gguf_adapter(path)) {
    a.kind = "gguf";
    GgufAdapterContents contents = read_gguf_adapter(path, model);
    a.config = contents.config;
    a.values = std::move(contents.values);
  } else {
    throw Error(fmt::format(
        "lora.init_from {}: not an adapter loom can read: expected a loom run directory "
        "(adapter/loom_adapter.json), a loom adapter folder (loom_adapter.json), a PEFT adapter "
        "folder (adapter_config.json + adapter_model.safetensors) or a llama.cpp LoRA adapter "
        ".gguf (general.type = adapter); found {}",
        path, describe_path(path)));
  }
  return a;
}

void load_adapter_to_train(const AdapterToTrain& adapter, LoraModel& lora,
                           const LlamaModel& model) {
  if (adapter.kind == "peft") {
    load_peft_tensors(adapter.path, lora, model);
    return;
  }
  try {
    lora.load_parameters(adapter.values, /*strict=*/true);
  } catch (const Error& e) {
    throw Error(fmt::format("lora.init_from {}: {}", adapter.path, e.what()));
  }
}

}  // namespace loom
