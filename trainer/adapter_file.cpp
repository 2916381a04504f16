// Writing and reading loom's adapter format (adapter_file.h).
#include "trainer/adapter_file.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "autograd/check.h"
#include "autograd/tape.h"
#include "layers/safetensors.h"
#include "lora/lora_model.h"
#include "trainer/adapter_load.h"
#include "trainer/run_dir.h"
#include "trainer/train_internal.h"

namespace loom {

namespace fs = std::filesystem;

namespace {

constexpr const char* kTensorsFile = "adapter_model.safetensors";
constexpr const char* kConfigFile = "loom_adapter.json";

// A safetensors file of f32 tensors: 8-byte header length, JSON header padded with spaces to a
// multiple of 8, then the data in the order given.
std::string safetensors_bytes(const std::vector<AdapterTensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (const AdapterTensor& t : tensors) {
    const uint64_t bytes = t.values.size() * sizeof(float);
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  header["__metadata__"] = metadata;
  std::string text = header.dump();
  while (text.size() % 8 != 0) text += ' ';
  std::string out(8, '\0');
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out += text;
  for (const AdapterTensor& t : tensors)
    out.append(reinterpret_cast<const char*>(t.values.data()), t.values.size() * sizeof(float));
  return out;
}

std::string scale_convention(bool rslora) { return rslora ? "alpha/sqrt(rank)" : "alpha/rank"; }

template <class T>
nlohmann::json patterns_json(const std::vector<std::pair<std::string, T>>& p) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& [k, v] : p) j.push_back({k, v});
  return j;
}

}  // namespace

void save_adapter(const std::string& dir, const LoraModel& lora, const LlamaModel& model,
                  const std::string& model_path, int64_t step) {
  const LoraConfig& c = lora.config();
  std::vector<AdapterTensor> tensors;
  for (const LoraParameter& p : lora.parameters())
    tensors.push_back({p.name, p.tensor.shape(), p.tensor.to_vector()});
  const std::string arch = model.config().architecture;
  const bool permuted = model.config().rope.style == RopeStyle::Interleaved;

  nlohmann::json j;
  j["format"] = "loom-lora";
  j["version"] = kAdapterFormatVersion;
  // Absolute: the run is then usable (loom eval / generate / export --adapter RUN) from any
  // working directory, not only the one training ran in.
  j["base_model"] = std::filesystem::absolute(model_path).lexically_normal().string();
  j["architecture"] = arch;
  j["base_dtype"] = std::string(base_dtype_name(c.base_dtype));
  j["rank"] = c.rank;
  j["alpha"] = c.alpha;
  j["rslora"] = c.rslora;
  j["dora"] = c.dora;
  j["init"] = std::string(lora_init_name(c.init));
  j["scale"] = lora_scale(c.alpha, c.rank, c.rslora);
  j["scale_convention"] = scale_convention(c.rslora);
  j["targets"] = c.targets.modules;
  j["target_regex"] = c.targets.regex;
  j["layers"] = c.targets.layers;
  j["rank_pattern"] = patterns_json(c.rank_pattern);
  j["alpha_pattern"] = patterns_json(c.alpha_pattern);
  j["dropout"] = c.dropout;
  j["seed"] = c.seed;
  j["q_k_row_order"] = permuted ? "gguf" : "hf";
  j["step"] = step;
  j["trainable_parameters"] = lora.trainable_parameter_count();

  const std::map<std::string, std::string> meta = {
      {"format", "loom-lora"}, {"scale_convention", scale_convention(c.rslora)},
      {"rank", std::to_string(c.rank)}, {"alpha", fmt::format("{}", c.alpha)}};
  fs::create_directories(dir);
  write_file_atomic((fs::path(dir) / kTensorsFile).string(), safetensors_bytes(tensors, meta));
  write_file_atomic((fs::path(dir) / kConfigFile).string(), j.dump(2) + "\n");
}

nlohmann::json read_adapter_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / kConfigFile).string();
  std::ifstream in(path);
  if (!in) throw Error(fmt::format("{}: cannot open (is {} a loom adapter folder?)", path, dir));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    // e.g. "unexpected end of input" for a file cut short (a full disk, a partial copy).
    throw Error(
        fmt::format("{}: not valid JSON ({}); the adapter folder is damaged", path, e.what()));
  }
  if (!j.is_object()) throw Error(fmt::format("{}: not a JSON object", path));
  if (j.value("format", "") != "loom-lora")
    throw Error(fmt::format("{}: format is '{}', expected 'loom-lora'", path, j.value("format", "")));
  if (j.value("version", 0) != kAdapterFormatVersion)
    throw Error(fmt::format("{}: version {}, expected {}", path, j.value("version", 0),
                            kAdapterFormatVersion));
  return j;
}

std::vector<AdapterTensor> read_adapter_tensors(const std::string& dir) {
  const SafetensorsFile file = SafetensorsFile::open((fs::path(dir) / kTensorsFile).string());
  std::vector<AdapterTensor> out;
  for (const SafetensorsTensorInfo& info : file.tensors()) {
    if (info.dtype != "F32")
      throw Error(fmt::format("{}: tensor {} is {}, expected F32", file.path(), info.name, info.dtype));
    out.push_back({info.name, info.shape, file.tensor(info.name).to_vector()});
  }
  return out;
}

std::vector<float> adapter_logits(const std::string& adapter_dir, std::span<const int32_t> ids,
                                  int64_t batch, int64_t seq_len, Precision precision,
                                  const std::vector<AdapterTensor>* tensors) {
  const nlohmann::json j = read_adapter_config(adapter_dir);
  TrainingModel tm = load_training_model(j.at("base_model").get<std::string>());
  LoraModel lora(*tm.model, lora_config_from_adapter_json(j));
  const std::vector<AdapterTensor> from_file =
      tensors ? std::vector<AdapterTensor>{} : read_adapter_tensors(adapter_dir);
  std::vector<std::pair<std::string, std::vector<float>>> values;
  for (const AdapterTensor& t : tensors ? *tensors : from_file) values.emplace_back(t.name, t.values);
  lora.load_parameters(values, /*strict=*/true);
  lora.set_training(false);
  NoGradGuard no_grad;
  TokenBatch tb;
  tb.ids = ids;
  tb.batch = batch;
  tb.seq_len = seq_len;
  ForwardOptions fwd;
  fwd.checkpoint_blocks = false;
  fwd.precision = precision;
  const Tensor hidden = tm.model->forward_hidden(tb, fwd);
  return tm.model->logits(hidden, precision).to_vector();
}

}  // namespace loom
