// Reading llama.cpp LoRA adapter GGUFs into a LoraModel (gguf_adapter_read.h).
#include "export/gguf_adapter_read.h"

#include <fmt/format.h>

#include <map>
#include <optional>
#include <unordered_map>

#include "autograd/check.h"
#include "export/gguf_qk_order.h"
#include "export/gguf_writer.h"
#include "layers/gguf.h"
#include "lora/targets.h"

namespace loom {

namespace {

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::string regex_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::string_view(".^$*+?()[]{}|\\").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

const std::string& required_string(const GgufFile& f, const std::string& key,
                                   const std::string& expected) {
  const GgufValue* v = f.find(key);
  if (!v)
    throw Error(
        fmt::format("gguf adapter: {} has no key '{}', expected '{}' (is it a llama.cpp "
                    "LoRA adapter?)",
                    f.path(), key, expected));
  const std::string& s = v->as_string(fmt::format("key '{}' in {}", key, f.path()));
  if (s != expected)
    throw Error(fmt::format("gguf adapter: {}: key '{}' is '{}', expected '{}'", f.path(), key, s,
                            expected));
  return s;
}

struct Pair {
  const GgufTensorInfo* a = nullptr;
  const GgufTensorInfo* b = nullptr;
};

// The (lora_a, lora_b) infos by base tensor name; skipped tensors go to `ignored`.
std::map<std::string, Pair> tensor_pairs(const GgufFile& f, std::vector<std::string>& ignored) {
  std::map<std::string, Pair> pairs;
  for (const GgufTensorInfo& t : f.tensors()) {
    if (ends_with(t.name, ".lora_a")) {
      pairs[t.name.substr(0, t.name.size() - 7)].a = &t;
    } else if (ends_with(t.name, ".lora_b")) {
      pairs[t.name.substr(0, t.name.size() - 7)].b = &t;
    } else if (ends_with(t.name, "_norm.weight")) {
      ignored.push_back(t.name);  // llama.cpp's loader skips these too
    } else {
      throw Error(fmt::format(
          "gguf adapter: {}: tensor '{}' is neither a .lora_a nor a .lora_b tensor (nor a norm, "
          "which llama.cpp ignores)",
          f.path(), t.name));
    }
  }
  for (const auto& [base, p] : pairs)
    if (!p.a || !p.b)
      throw Error(fmt::format("gguf adapter: {}: '{}' has a .{} tensor but no .{}", f.path(), base,
                              p.a ? "lora_a" : "lora_b", p.a ? "lora_b" : "lora_a"));
  return pairs;
}

struct ReadModule {
  const Linear* linear;
  int64_t rank;
};

}  // namespace

GgufAdapterContents read_gguf_adapter(const std::string& path, const LlamaModel& model) {
  const GgufFile f = GgufFile::open(path);
  GgufAdapterContents out;
  out.path = path;
  required_string(f, "general.type", "adapter");
  required_string(f, "adapter.type", "lora");
  const std::string model_arch = gguf_architecture(model.config());
  out.architecture = required_string(f, "general.architecture", model_arch);
  if (const GgufValue* a = f.find("adapter.lora.alpha"))
    out.alpha = a->as_float(fmt::format("key 'adapter.lora.alpha' in {}", path));
  if (!(out.alpha >= 0.0))
    throw Error(
        fmt::format("gguf adapter: {}: adapter.lora.alpha is {}, expected >= 0", path, out.alpha));

  std::unordered_map<std::string, const Linear*> by_name;
  for (const LlamaBlock& block : model.weights().blocks)
    for (const Linear* p : block.projections()) by_name[p->gguf_name + ".weight"] = p;
  // The LM head, where the base has an output.weight of its own (llama.cpp applies nothing to
  // the output of a model that ties it to the embedding).
  const Linear& head = model.weights().output;
  if (!model.config().tie_word_embeddings) by_name[head.gguf_name + ".weight"] = &head;

  const std::map<std::string, Pair> pairs = tensor_pairs(f, out.ignored);
  if (pairs.empty())
    throw Error(fmt::format("gguf adapter: {} has no .lora_a / .lora_b tensors", path));
  std::unordered_map<const Linear*, std::pair<const GgufTensorInfo*, const GgufTensorInfo*>> found;
  for (const auto& [base, p] : pairs) {
    const auto it = by_name.find(base);
    if (it == by_name.end()) {
      if (base == "token_embd.weight")
        throw Error(fmt::format(
            "gguf adapter: {} adapts the token embedding '{}'; loom adapts the seven projections "
            "of each block and the LM head, so it cannot load this adapter",
            path, base));
      if (base == "output.weight")
        throw Error(fmt::format(
            "gguf adapter: {} adapts 'output.weight', but the base model ({}) ties its output "
            "to the token embedding and has no output.weight (llama.cpp would not load it "
            "either; wrong base model?)",
            path, model.config().source));
      throw Error(
          fmt::format("gguf adapter: {}: '{}' is not a projection of the base model ({}; "
                      "wrong base model?)",
                      path, base, model.config().source));
    }
    const Linear& lin = *it->second;
    const Shape& sa = p.a->shape;  // [r, in]
    const Shape& sb = p.b->shape;  // [out, r]
    if (sa.size() != 2 || sb.size() != 2 || sa[1] != lin.in_features() ||
        sb[0] != lin.out_features() || sa[0] != sb[1])
      throw Error(fmt::format(
          "gguf adapter: {}: '{}' has lora_a {} and lora_b {} (PyTorch order), expected [r, {}] "
          "and [{}, r] for the base weight {}",
          path, base, shape_str(sa), shape_str(sb), lin.in_features(), lin.out_features(),
          shape_str(lin.weight.shape())));
    found[&lin] = {p.a, p.b};
  }

  // Modules in model order; the most common rank is the default.
  std::vector<ReadModule> modules;
  std::map<int64_t, int64_t> rank_counts;
  for (const LlamaBlock& block : model.weights().blocks)
    for (const Linear* p : block.projections())
      if (const auto it = found.find(p); it != found.end()) {
        const int64_t r = it->second.second->shape[1];
        modules.push_back({p, r});
        ++rank_counts[r];
      }
  if (const auto it = found.find(&head); it != found.end()) {
    const int64_t r = it->second.second->shape[1];
    modules.push_back({&head, r});
    ++rank_counts[r];
  }
  int64_t default_rank = modules.front().rank;
  for (const auto& [r, n] : rank_counts)
    if (n > rank_counts[default_rank]) default_rank = r;

  LoraConfig& c = out.config;
  c.rank = default_rank;
  // llama.cpp: scale = alpha / r, or 1 without an alpha (i.e. alpha = r for every module).
  c.alpha = out.alpha > 0 ? out.alpha : static_cast<double>(default_rank);
  c.rslora = false;
  c.dora = false;
  // Targets as projection names over layers when the modules are their full product (as PEFT
  // writes them), else each module's path.
  std::vector<const Linear*> linears;
  for (const ReadModule& m : modules) linears.push_back(m.linear);
  if (std::optional<LoraTargets> t = product_targets(linears, model.config().n_layers)) {
    c.targets = std::move(*t);
  } else {
    c.targets = LoraTargets{};
    c.targets.modules.clear();
    for (const ReadModule& m : modules) c.targets.modules.push_back(m.linear->hf_name);
  }
  for (const ReadModule& m : modules) {
    if (m.rank == default_rank) continue;
    const std::string key = regex_escape(m.linear->hf_name);
    c.rank_pattern.emplace_back(key, m.rank);
    if (out.alpha == 0) c.alpha_pattern.emplace_back(key, static_cast<double>(m.rank));
  }

  for (const ReadModule& m : modules) {
    const auto [ia, ib] = found.at(m.linear);
    std::vector<float> a = tensor_values_f32(f.tensor(*ia));
    std::vector<float> b = reorder_projection_rows(model.config(), m.linear->kind,
                                                   tensor_values_f32(f.tensor(*ib)), m.rank,
                                                   /*to_gguf=*/false);
    out.values.emplace_back(peft_parameter_name(m.linear->hf_name, "lora_A.weight"), std::move(a));
    out.values.emplace_back(peft_parameter_name(m.linear->hf_name, "lora_B.weight"), std::move(b));
  }
  return out;
}

LoraModel load_gguf_adapter(const std::string& path, LlamaModel& model,
                            GgufAdapterContents* contents) {
  GgufAdapterContents read = read_gguf_adapter(path, model);
  LoraModel lora(model, read.config);
  try {
    lora.load_parameters(read.values, /*strict=*/true);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", path, e.what()));
  }
  lora.set_training(false);
  if (contents) *contents = std::move(read);
  return lora;
}

}  // namespace loom
