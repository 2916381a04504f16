// Shared pieces of the model-running subcommands (cli/commands.h): loading a model with its
// tokenizer, describing its storage dtypes, parsing --precision, reporting errors.
#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include "autograd/check.h"
#include "autograd/interrupt.h"
#include "autograd/kernels/gemm.h"
#include "cli/commands.h"
#include "layers/gguf.h"
#include "trainer/train_internal.h"

namespace loom::cli {

LoadedModel load_model_and_tokenizer(const std::string& path) {
  // The loader `loom train` uses: a .gguf file or a Hugging Face folder (its tokenizer.json, or
  // bytes for a 256-token vocabulary without one, as the tiny test models).
  TrainingModel tm = load_training_model(path, "--model");
  LoadedModel out;
  out.path = path;
  out.model = std::move(tm.model);
  out.tokenizer = std::move(tm.tokenizer);
  return out;
}

std::string describe_dtype_mix(const LlamaModel& model) {
  struct Count {
    int64_t tensors = 0;
    int64_t elements = 0;
  };
  std::map<std::string, Count> by_dtype;
  std::set<const TensorImpl*> seen;  // a tied output is the embedding: count it once
  auto add = [&](const Tensor& t) {
    if (!t.defined() || !seen.insert(t.impl()).second) return;
    Count& c = by_dtype[std::string(dtype_name(t.dtype()))];
    ++c.tensors;
    c.elements += t.numel();
  };
  const LlamaWeights& w = model.weights();
  add(w.token_embd);
  add(w.output.weight);
  add(w.output_norm);
  for (const LlamaBlock& b : w.blocks) {
    add(b.attn_norm);
    add(b.ffn_norm);
    for (const Linear* p : b.projections()) {
      add(p->weight);
      add(p->bias);
    }
  }
  std::string out;
  for (const auto& [name, c] : by_dtype)
    out += fmt::format("{}{}: {} tensor{}, {:.2f}M weights", out.empty() ? "" : "; ", name,
                       c.tensors, c.tensors == 1 ? "" : "s", static_cast<double>(c.elements) / 1e6);
  out += fmt::format(
      " (embedding {}, output {})", dtype_name(w.token_embd.dtype()),
      model.output_tied() ? "tied to it" : std::string(dtype_name(w.output.weight.dtype())));
  return out;
}

Precision parse_precision_option(const std::string& name) {
  if (name == "f32") return Precision::F32;
  if (name == "bf16") return Precision::BF16;
  if (name == "auto") return Precision::Auto;
  throw Error(fmt::format("--precision '{}' is not known; expected f32, bf16 or auto", name));
}

std::string precision_label(Precision p) {
  const Precision resolved = resolve_precision(p);
  const char* name = resolved == Precision::BF16 ? "bf16 with f32 accumulation" : "f32";
  if (p == Precision::Auto) return fmt::format("{} (auto)", name);
  if (p == Precision::BF16 && resolved != Precision::BF16)
    return fmt::format("{} (bf16 asked for; this CPU has no AVX512_BF16)", name);
  return name;
}

void run_reporting_errors(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const CLI::Error&) {
    throw;  // an exit status the command chose (e.g. 130 after Ctrl-C), already reported
  } catch (const Interrupted& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "loom: %s\n", e.what());
    throw CLI::RuntimeError(128 + e.signal());
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "loom: error: %s\n", e.what());
    throw CLI::RuntimeError(1);
  }
}

}  // namespace loom::cli
