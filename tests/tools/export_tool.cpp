// loom_test_export_tool: drives export/ for tests/interop/test_export_gguf.py.
//
//   loom_test_export_tool write-spec SPEC.json OUT.gguf DUMP_DIR
//       Writes a GGUF from a JSON spec -- {"metadata": [{"key", "type", "value"[, "elem_type"]}],
//       "tensors": [{"name", "shape" (PyTorch order), "type", "input" (raw f32 file)}]} -- with
//       GgufWriter, reads it back with loom's reader, and dumps each tensor's dequantized values
//       to DUMP_DIR/<index>.f32. Array items of element type "array" are {"elem_type", "value"}.
//
//   loom_test_export_tool smollm2 MODEL OUT_DIR REQUEST.json
//       On the GGUF model MODEL: attaches a deterministic LoRA adapter (REQUEST: rank, alpha,
//       targets, seed). q/k modules, when qk_subspace_scale is set, get A = an orthonormal basis
//       of the weight's dominant right-singular subspace (seeded subspace iteration) and B such
//       that s B A = qk_subspace_scale * W A^T A: a structured update whose rows only make sense
//       in the weight's own row order. Every other module: A from the seeded Kaiming init,
//       B = b_scale * N(0, 1) from the seed. With "init": "pissa" (and "base_dtype", e.g. "f32"
//       for an exact residual) the adapter starts from PiSSA and every B moves from B0 by
//       b_scale * N(0, 1), A staying A0. Writes OUT_DIR/adapter_<type>.gguf for each of
//       adapter_types and OUT_DIR/merged_<type>.gguf for each of merged_types, then evaluates
//       with loom in f32 each name listed in `evaluate`:
//         "base"                 the model without the adapter
//         "adapter"              the model with the LoraModel attached (unmerged)
//         "file_adapter_<type>"  the base with OUT_DIR/adapter_<type>.gguf read back
//         "merged_<type>"        OUT_DIR/merged_<type>.gguf loaded as a model
//       each: perplexity of REQUEST.tokens in windows of REQUEST.ctx (llama.cpp's scoring) and the
//       greedy continuation (n_greedy tokens) of every REQUEST.prompts id list. Writes
//       OUT_DIR/loom.json with those and the export notes and timings.
//
//   loom_test_export_tool read-adapter MODEL ADAPTER.gguf OUT_DIR
//       Reads a GGUF adapter onto MODEL; writes OUT_DIR/adapter.json (config, ignored tensors,
//       parameter names in order) and OUT_DIR/<index>.f32 per parameter.
#include <Eigen/Dense>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "autograd/check.h"
#include "export/gguf_adapter_read.h"
#include "export/gguf_export.h"
#include "export/gguf_writer.h"
#include "layers/gguf.h"
#include "layers/inference.h"
#include "lora/lora_model.h"
#include "lora/random.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace loom;

json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(fmt::format("cannot open '{}'", path));
  return json::parse(in);
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  if (!out) throw Error(fmt::format("cannot write '{}'", path));
}

std::vector<float> read_f32(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot open '{}'", path));
  std::vector<char> bytes(std::istreambuf_iterator<char>(in), {});
  std::vector<float> v(bytes.size() / sizeof(float));
  std::memcpy(v.data(), bytes.data(), v.size() * sizeof(float));
  return v;
}

void write_f32(const std::string& path, const std::vector<float>& v) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * 4));
  if (!out) throw Error(fmt::format("cannot write '{}'", path));
}

GgufType type_of(const std::string& name) {
  for (uint32_t t = 0; t <= static_cast<uint32_t>(GgufType::FLOAT64); ++t)
    if (gguf_type_name(static_cast<GgufType>(t)) == name) return static_cast<GgufType>(t);
  throw Error(fmt::format("unknown GGUF value type '{}'", name));
}

GgufValue value_of(GgufType type, const json& v, const json& item_spec) {
  switch (type) {
    case GgufType::UINT8:
      return GgufValue(v.get<uint8_t>());
    case GgufType::INT8:
      return GgufValue(v.get<int8_t>());
    case GgufType::UINT16:
      return GgufValue(v.get<uint16_t>());
    case GgufType::INT16:
      return GgufValue(v.get<int16_t>());
    case GgufType::UINT32:
      return GgufValue(v.get<uint32_t>());
    case GgufType::INT32:
      return GgufValue(v.get<int32_t>());
    case GgufType::FLOAT32:
      return GgufValue(v.get<float>());
    case GgufType::BOOL:
      return GgufValue(v.get<bool>());
    case GgufType::STRING:
      return GgufValue(v.get<std::string>());
    case GgufType::UINT64:
      return GgufValue(v.get<uint64_t>());
    case GgufType::INT64:
      return GgufValue(v.get<int64_t>());
    case GgufType::FLOAT64:
      return GgufValue(v.get<double>());
    case GgufType::ARRAY: {
      GgufArray a;
      a.elem_type = type_of(item_spec.at("elem_type").get<std::string>());
      for (const json& item : v) {
        if (a.elem_type == GgufType::ARRAY)
          a.items.push_back(value_of(GgufType::ARRAY, item.at("value"), item));
        else
          a.items.push_back(value_of(a.elem_type, item, json()));
      }
      return GgufValue(std::move(a));
    }
  }
  throw Error("unreachable");
}

int write_spec(const std::string& spec_path, const std::string& out, const std::string& dump) {
  const json spec = read_json(spec_path);
  GgufWriter w;
  for (const json& m : spec.at("metadata"))
    w.set(m.at("key").get<std::string>(),
          value_of(type_of(m.at("type").get<std::string>()), m.at("value"), m));
  for (const json& t : spec.at("tensors"))
    w.add_tensor_values(t.at("name").get<std::string>(), t.at("shape").get<Shape>(),
                        parse_dtype(t.at("type").get<std::string>()),
                        read_f32(t.at("input").get<std::string>()));
  w.write(out);
  const GgufFile f = GgufFile::open(out);
  fs::create_directories(dump);
  for (size_t i = 0; i < f.tensors().size(); ++i)
    write_f32((fs::path(dump) / fmt::format("{}.f32", i)).string(),
              tensor_values_f32(f.tensor(f.tensors()[i])));
  return 0;
}

// ---- smollm2 --------------------------------------------------------------------------------

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

json evaluate(const LlamaModel& model, const json& request) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int32_t> tokens = request.at("tokens").get<std::vector<int32_t>>();
  PerplexityOptions p;
  p.ctx = request.at("ctx").get<int64_t>();
  p.precision = Precision::F32;
  const PerplexityResult r = evaluate_perplexity(model, tokens, p);
  json out;
  out["perplexity"] = r.perplexity();
  out["window_nll"] = r.window_nll;
  out["tokens_scored"] = r.tokens_scored;
  json greedy = json::array();
  for (const json& prompt : request.at("prompts"))
    greedy.push_back(greedy_tokens(model, prompt.get<std::vector<int32_t>>(),
                                   request.at("n_greedy").get<int64_t>()));
  out["greedy"] = greedy;
  out["seconds"] = seconds_since(t0);
  return out;
}

// A = orthonormal basis (rows) of W's dominant right-singular subspace of the adapter's rank
// (subspace iteration from a seeded Gaussian start), B = (target / s) W A^T, so s B A = target *
// W A^T A: the weight's main directions scaled by (1 + target).
void subspace_adapter(const Linear& p, LoraAdapter& a, double target, uint64_t key) {
  using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const int64_t out = a.out_features(), in = a.in_features(), r = a.rank();
  const std::vector<float> w_values = tensor_values_f32(p.weight);
  const Eigen::Map<const RowMajor> w(w_values.data(), out, in);
  Eigen::MatrixXf z(in, r);
  for (int64_t i = 0; i < in * r; ++i) z.data()[i] = static_cast<float>(lora_normal(key, i));
  for (int it = 0; it < 6; ++it) {
    const Eigen::MatrixXf y = w.transpose() * (w * z);
    z = Eigen::HouseholderQR<Eigen::MatrixXf>(y).householderQ() * Eigen::MatrixXf::Identity(in, r);
  }
  const RowMajor a_values = z.transpose();
  const RowMajor b_values = (w * z) * static_cast<float>(target / a.scale());
  a.set_lora_a(std::vector<float>(a_values.data(), a_values.data() + r * in));
  a.set_lora_b(std::vector<float>(b_values.data(), b_values.data() + out * r));
}

json result_json(const GgufExportResult& r, double seconds) {
  return {{"path", r.path},   {"bytes", r.bytes},       {"tensors", r.tensors},
          {"notes", r.notes}, {"types", r.type_counts}, {"seconds", seconds}};
}

int smollm2(const std::string& model_path, const std::string& out_dir,
            const std::string& req_path) {
  const json request = read_json(req_path);
  fs::create_directories(out_dir);
  const auto file_in = [&](const std::string& name) { return (fs::path(out_dir) / name).string(); };
  json out;
  const GgufFile source = GgufFile::open(model_path);
  LlamaModel model = LlamaModel::from_gguf(source);
  const std::vector<std::string> wanted = request.at("evaluate").get<std::vector<std::string>>();
  const auto want = [&](const std::string& name) {
    return std::find(wanted.begin(), wanted.end(), name) != wanted.end();
  };
  if (want("base")) out["base"] = evaluate(model, request);

  LoraConfig c;
  c.rank = request.at("rank").get<int64_t>();
  c.alpha = request.at("alpha").get<double>();
  c.targets.modules = request.at("targets").get<std::vector<std::string>>();
  c.seed = request.at("seed").get<uint64_t>();
  const bool pissa = request.value("init", std::string("kaiming")) == "pissa";
  if (pissa) c.init = LoraInit::Pissa;
  c.base_dtype = parse_base_dtype(request.value("base_dtype", std::string("keep")));
  LoraModel lora(model, c);
  const double b_scale = request.at("b_scale").get<double>();
  const double qk_scale = request.value("qk_subspace_scale", 0.0);
  uint64_t key = lora_hash({c.seed, 0xb});
  for (const LoraModule& m : lora.modules()) {
    const Projection kind = m.linear->kind;
    if (pissa) {  // "trained" from PiSSA's start: B0 moved by b_scale * N(0, 1), A = A0
      std::vector<float> b = m.adapter->lora_b().to_vector();
      for (size_t i = 0; i < b.size(); ++i)
        b[i] += static_cast<float>(b_scale * lora_normal(key, i));
      m.adapter->set_lora_b(b);
      ++key;
      continue;
    }
    if (qk_scale > 0 && (kind == Projection::Q || kind == Projection::K)) {
      subspace_adapter(*m.linear, *m.adapter, qk_scale, key++);
      continue;
    }
    std::vector<float> b(static_cast<size_t>(m.adapter->lora_b().numel()));
    for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(b_scale * lora_normal(key, i));
    m.adapter->set_lora_b(b);
    ++key;
  }
  lora.set_training(false);
  if (want("adapter")) out["adapter"] = evaluate(model, request);

  json exports = json::object();
  for (const json& t : request.at("adapter_types")) {
    const std::string type = t.get<std::string>();
    GgufAdapterOptions o;
    o.type = parse_gguf_adapter_type(type);
    o.name = "loom interop test adapter";
    const auto t0 = std::chrono::steady_clock::now();
    const GgufExportResult r =
        export_gguf_adapter(model, lora, file_in("adapter_" + type + ".gguf"), o);
    exports["adapter_" + type] = result_json(r, seconds_since(t0));
  }
  for (const json& t : request.at("merged_types")) {
    const std::string type = t.get<std::string>();
    MergedGgufOptions o;
    o.type = parse_merged_gguf_type(type);
    const auto t0 = std::chrono::steady_clock::now();
    const GgufExportResult r =
        export_merged_gguf(model, &lora, source, file_in("merged_" + type + ".gguf"), o);
    exports["merged_" + type] = result_json(r, seconds_since(t0));
  }
  out["exports"] = exports;
  lora.detach();

  for (const json& t : request.at("adapter_types")) {
    const std::string name = "file_adapter_" + t.get<std::string>();
    if (!want(name)) continue;
    LlamaModel fresh = LlamaModel::from_gguf(source);
    LoraModel back = load_gguf_adapter(file_in("adapter_" + t.get<std::string>() + ".gguf"), fresh);
    out[name] = evaluate(fresh, request);
  }
  for (const json& t : request.at("merged_types")) {
    const std::string name = "merged_" + t.get<std::string>();
    if (!want(name)) continue;
    const LlamaModel merged = LlamaModel::from_gguf(file_in(name + ".gguf"));
    out[name] = evaluate(merged, request);
  }
  write_text(file_in("loom.json"), out.dump(1));
  return 0;
}

int read_adapter(const std::string& model_path, const std::string& adapter,
                 const std::string& out_dir) {
  const LlamaModel model = LlamaModel::from_gguf(model_path);
  const GgufAdapterContents c = read_gguf_adapter(adapter, model);
  fs::create_directories(out_dir);
  json j;
  j["rank"] = c.config.rank;
  j["alpha"] = c.config.alpha;
  j["file_alpha"] = c.alpha;
  j["targets"] = c.config.targets.modules;
  j["layers"] = c.config.targets.layers;
  j["rank_pattern"] = c.config.rank_pattern;
  j["ignored"] = c.ignored;
  json names = json::array();
  for (size_t i = 0; i < c.values.size(); ++i) {
    names.push_back(c.values[i].first);
    write_f32((fs::path(out_dir) / fmt::format("{}.f32", i)).string(), c.values[i].second);
  }
  j["parameters"] = names;
  write_text((fs::path(out_dir) / "adapter.json").string(), j.dump(1));
  return 0;
}

int usage() {
  std::fprintf(stderr,
               "usage: loom_test_export_tool write-spec SPEC.json OUT.gguf DUMP_DIR\n"
               "       loom_test_export_tool smollm2 MODEL OUT_DIR REQUEST.json\n"
               "       loom_test_export_tool read-adapter MODEL ADAPTER.gguf OUT_DIR\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::vector<std::string> a(argv + 1, argv + argc);
    if (a.size() == 4 && a[0] == "write-spec") return write_spec(a[1], a[2], a[3]);
    if (a.size() == 4 && a[0] == "smollm2") return smollm2(a[1], a[2], a[3]);
    if (a.size() == 4 && a[0] == "read-adapter") return read_adapter(a[1], a[2], a[3]);
    return usage();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loom_test_export_tool: %s\n", e.what());
    return 1;
  }
}
