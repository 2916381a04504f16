// Subcommands of the `loom` binary that live in their own files. Each add_*_command registers a
// subcommand whose callback does the work; a failure prints "loom: error: ..." to stderr and ends
// the parse with CLI::RuntimeError(1), so main() returns 1 through app.exit().
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <memory>
#include <string>

#include "layers/llama.h"
#include "layers/tokenizer.h"

namespace loom::cli {

void add_generate_command(CLI::App& app);  // loom generate (cli/cmd_generate.cpp)
void add_eval_command(CLI::App& app);      // loom eval (cli/cmd_eval.cpp)
void add_export_command(CLI::App& app);    // loom export (cli/cmd_export.cpp)

// A model and its tokenizer, from a .gguf file or a Hugging Face directory (tokenizer.json).
struct LoadedModel {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::string path;
};
LoadedModel load_model_and_tokenizer(const std::string& path);

// "q4_1: 210 tensors, 106.2M weights; q8_0: 1 tensor, 28.3M weights (token_embd.weight, tied
// output); f32: 61 tensors, 0.0M weights" -- the storage dtypes the run computes from.
std::string describe_dtype_mix(const LlamaModel& model);

// Parses --precision: "f32", "bf16" or "auto" (bf16 where the CPU has AVX512_BF16).
Precision parse_precision_option(const std::string& name);
std::string precision_label(Precision p);  // "f32" / "bf16 (auto)" ...

// Runs fn, turning an exception into "loom: error: <what>" and CLI::RuntimeError(1).
void run_reporting_errors(const std::function<void()>& fn);

}  // namespace loom::cli
