// `loom export SOURCE --format F [--format F ...]`: a trained adapter (a loom run directory, a
// loom adapter folder, a PEFT folder or a llama.cpp adapter GGUF) written for other engines,
// with the perplexity each merged/quantized export costs (trainer/export_run.h).
#include <fmt/format.h>

#include <chrono>
#include <filesystem>

#include "autograd/check.h"
#include "cli/commands.h"
#include "trainer/export_run.h"
#include "trainer/recipe_fields.h"

namespace loom::cli {

namespace {

struct ExportArgs {
  std::string source;
  std::vector<std::string> formats;
  std::string out;
  std::string base;
  std::string base_model_name;
  std::string eval_text;
  int64_t eval_tokens = 8192;
  bool no_eval = false;
  bool force = false;
  std::string precision = "auto";
};

void run_export(const ExportArgs& a) {
  check_export_formats(a.formats);
  const auto t0 = std::chrono::steady_clock::now();
  AdaptedModel am = load_adapted_model(a.source, a.base);
  ExportRequest req;
  req.formats = a.formats;
  req.out_dir = !a.out.empty()       ? a.out
                : !am.run_dir.empty() ? (std::filesystem::path(am.run_dir) / "export").string()
                                      : "";
  if (req.out_dir.empty())
    throw Error(fmt::format("{} is not a loom run directory: say where the exports go with --out",
                            a.source));
  req.base_model_name = a.base_model_name;
  req.force = a.force;
  req.evaluate = !a.no_eval;
  req.eval_text = a.eval_text;
  req.eval_tokens = a.eval_tokens;
  req.precision = parse_precision_option(a.precision);

  const ModelConfig& c = am.base.model->config();
  fmt::print("loom export\n");
  fmt::print("  adapter:  {} ({}): {}\n", a.source, am.kind, am.lora->config().summary());
  fmt::print("  base:     {} ({}, {} layers, hidden {}, vocab {})\n", am.base_path, c.architecture,
             c.n_layers, c.hidden_size, c.vocab_size);
  fmt::print("  weights:  {}\n", describe_dtype_mix(*am.base.model));
  fmt::print("  formats:  {}\n", recipe_detail::join(a.formats));
  fmt::print("  out:      {}\n", req.out_dir);
  std::fflush(stdout);
  const ExportSummary s = export_adapter(am, req, [](const std::string& line) {
    fmt::print("{}\n", line);
    std::fflush(stdout);
  });
  if (!s.cost.empty()) {
    fmt::print("\nquantization cost {}:\n{}", s.cost_note, cost_table_markdown(s.cost));
    fmt::print("table: {}\n", s.cost_table_path);
  } else if (!s.cost_note.empty()) {
    fmt::print("quantization cost {}\n", s.cost_note);
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  fmt::print("done in {:.1f} s; outputs:\n", secs);
  for (const ExportedItem& item : s.items)
    fmt::print("  {:<24} {} ({:.1f} MB)\n", item.format, item.path,
               static_cast<double>(item.bytes) / 1048576.0);
}

}  // namespace

void add_export_command(CLI::App& app) {
  auto args = std::make_shared<ExportArgs>();
  CLI::App* cmd = app.add_subcommand(
      "export", "Write a trained adapter for other engines (PEFT, llama.cpp, transformers)");
  cmd->add_option("source", args->source,
                  "A loom run directory, a loom adapter folder, a PEFT adapter folder or a "
                  "llama.cpp LoRA adapter .gguf")
      ->required();
  cmd->add_option("--format,-f", args->formats,
                  "peft, gguf-adapter[-f16|-q8_0], merged-safetensors[-f32], merged-gguf-{f32,"
                  "f16,bf16,q8_0,q4_0,q4_k,q6_k}; repeat for several")
      ->required();
  cmd->add_option("--out,-o", args->out, "Output folder (default: <run>/export)");
  cmd->add_option("--base", args->base,
                  "Base model to attach the adapter to (default: the one the adapter names; "
                  "required for a GGUF adapter)");
  cmd->add_option("--base-model-name", args->base_model_name,
                  "base_model_name_or_path written into the PEFT adapter_config.json (e.g. "
                  "HuggingFaceTB/SmolLM2-135M-Instruct)");
  cmd->add_option("--eval-text", args->eval_text,
                  "Measure the quantization cost on this UTF-8 text instead of the run's held-out data");
  cmd->add_option("--eval-tokens", args->eval_tokens, "At most this many tokens per source")
      ->capture_default_str();
  cmd->add_flag("--no-eval", args->no_eval, "Do not measure the quantization cost");
  cmd->add_flag("--force", args->force, "Replace existing outputs");
  cmd->add_option("--precision", args->precision, "Evaluation products: f32, bf16 or auto")
      ->capture_default_str();
  cmd->callback([args] { run_reporting_errors([&] { run_export(*args); }); });
}

}  // namespace loom::cli
