// Exporting a trained adapter for other engines, and measuring what the export costs.
//
// Formats (names as `loom export --format` and the recipe's output.export take them), each
// written under the output folder:
//   peft                      peft/                         Hugging Face PEFT adapter folder
//   gguf-adapter[-f16|-q8_0]  adapter-<type>.gguf           llama.cpp --lora adapter (f32 default)
//   merged-safetensors[-f32]  merged-safetensors-<type>/    transformers folder (bf16 default)
//   merged-gguf-<type>        merged-<type>.gguf            llama.cpp model; type f32 f16 bf16
//                                                            q8_0 q4_0 q4_k q6_k
// An existing output is refused unless `force`.
//
// Quantization cost: every merged export (and a GGUF adapter in a lossy type) is loaded back by
// loom and its perplexity compared with the adapter model it came from -- base + unmerged
// adapter, as trained -- on the same held-out tokens: the run's held-out documents per source
// (from its recipe and token cache), or a text file. The table is printed and written as
// quantization_cost.md / .json in the output folder.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "autograd/kernels/gemm.h"
#include "trainer/adapter_load.h"

namespace loom {

struct ExportRequest {
  std::vector<std::string> formats;
  std::string out_dir;
  std::string base_model_name;  // PEFT base_model_name_or_path; "" = the base's path
  bool force = false;           // replace existing outputs
  bool evaluate = true;         // measure the quantization cost
  std::string eval_text;        // a UTF-8 text file to evaluate on, instead of held-out data
  int64_t eval_tokens = 8192;   // per source, at most
  Precision precision = Precision::Auto;
};

struct ExportedItem {
  std::string format;
  std::string path;
  uint64_t bytes = 0;
  std::vector<std::string> notes;
};

struct CostRow {
  std::string model;  // "adapter (unmerged)" or the format name
  std::string source;
  int64_t tokens = 0;  // predictions scored
  double perplexity = 0;
};

struct ExportSummary {
  std::vector<ExportedItem> items;
  std::vector<CostRow> cost;      // empty when not evaluated
  std::string cost_note;          // why it was not evaluated, or how
  std::string cost_table_path;    // quantization_cost.md when written
};

// Checks the names against known_export_formats (trainer/recipe.h); throws naming the bad one.
void check_export_formats(const std::vector<std::string>& formats);

// Writes every requested format, then (request.evaluate) measures the cost. `log` receives one
// line per step. The adapter model is left unmerged, in eval mode.
ExportSummary export_adapter(AdaptedModel& am, const ExportRequest& request,
                             const std::function<void(const std::string&)>& log);

// The cost table as Markdown (sources as columns, models as rows; ppl and change vs adapter).
std::string cost_table_markdown(const std::vector<CostRow>& rows);

}  // namespace loom
