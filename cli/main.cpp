// The `loom` command-line entry point. Each subcommand is a small function; the work lives in
// the library. Subcommands land with the issues that build them (train, generate, eval, export).
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <string>

#include "autograd/check.h"
#include "autograd/kernels/cpu.h"
#include "autograd/kernels/gemm.h"
#include "autograd/kernels/gemm_internal.h"
#include "autograd/kernels/tile_gemm.h"
#include "autograd/ops/vec_kernels.h"
#include "autograd/quant/quant_kernels.h"
#include "cli/commands.h"
#include "layers/gguf.h"

namespace loom::cli {
void add_train_command(CLI::App& app);  // loom train, loom recipes (cli/cmd_train.cpp)
void add_sweep_command(CLI::App& app);  // loom sweep (cli/cmd_sweep.cpp)
int run_inspect(const std::string& path, bool list_tensors);  // loom inspect (cli/cmd_inspect.cpp)
}  // namespace loom::cli

namespace {

constexpr const char* kVersion = "0.1.0";

int run_info() {
  const loom::CpuFeatures& f = loom::cpu_features();
  fmt::print("loom {}\n", kVersion);
  fmt::print("cpu:        {}\n", loom::cpu_summary());
  fmt::print("features:   avx2={} fma={} f16c={} avx512f={} avx512bw={} avx512vl={} avx512_bf16={}\n",
             f.avx2, f.fma, f.f16c, f.avx512f, f.avx512bw, f.avx512vl, f.avx512bf16);
  fmt::print("threads:    {}\n", loom::num_threads());
  fmt::print("openblas:   core {}\n", loom::blas_core_name());
  bool bf16 = loom::resolve_precision(loom::Precision::Auto) == loom::Precision::BF16;
  fmt::print("compute:    {} (matrix products), f32 (norms, softmax, loss, optimizer)\n",
             bf16 ? "bf16 with f32 accumulation" : "f32");
  fmt::print("kernels:    {} build of the vector kernels (softmax, activations, norms); {} "
             "dequantization\n",
             loom::ops_detail::vec_kernels().name, loom::quant::dequant_path());
  if (bf16)
    fmt::print(
        "amx:        oneDNN's AMX kernels {}; loom's AMX tiles for attention's and the "
        "projections' products {}\n",
        loom::detail::onednn_uses_amx() ? "yes" : "no",
        loom::amx_tiles_available() ? "yes (LOOM_NO_AMX=1 switches them off)" : "no");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  loom::ensure_blas_coretype(argc, argv);
  CLI::App app{"loom: parameter-efficient fine-tuning (LoRA, QLoRA) of Llama-family models"};
  app.set_version_flag("--version", kVersion);
  app.require_subcommand(1);

  app.add_subcommand("info", "Print the CPU features, threads and kernels loom will use");
  std::string inspect_path;
  bool inspect_tensors = false;
  CLI::App* inspect = app.add_subcommand(
      "inspect",
      "Print a model's architecture, sizes, tensor types and tokenizer (a GGUF file or a Hugging "
      "Face folder), from its headers");
  inspect->add_option("model", inspect_path, "GGUF file, or Hugging Face folder / .safetensors")
      ->required();
  inspect->add_flag("--tensors", inspect_tensors, "List every tensor with its type and shape");
  loom::cli::add_generate_command(app);
  loom::cli::add_eval_command(app);
  loom::cli::add_train_command(app);
  loom::cli::add_sweep_command(app);
  loom::cli::add_export_command(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (app.got_subcommand("info")) return run_info();
    if (app.got_subcommand("inspect")) return loom::cli::run_inspect(inspect_path, inspect_tensors);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loom: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
