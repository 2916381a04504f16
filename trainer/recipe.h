// A training recipe: the YAML file a user runs plus `key=value` overrides, checked against one
// schema table (trainer/recipe_schema.cpp) and turned into the plain value `Recipe`, which the
// trainer passes down by value (no globals).
//
// Loading checks every key: an unknown key is an error naming the file, the line and the nearest
// valid key; a wrong type says what was expected and what was found. Defaults live in the
// member initializers below and are printed with the resolved recipe (`loom train
// --print-config`, and the copy saved into every run directory and checkpoint), so nothing is
// hidden. `recipe_to_yaml` and `parse_recipe` round-trip exactly.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "autograd/kernels/gemm.h"  // Precision

namespace loom {

// The recipe's enums are nested in the section structs: lora/ and data/ declare their own
// loom::BaseDType, loom::LoraInit, ... and a file must be able to include both. The trainer maps
// one onto the other (to_string below gives the spellings both sides share).
enum class LrScheduleKind { Constant, Linear, Cosine };  // "constant" | "linear" | "cosine"

// The seven projections of a Llama block, the default LoRA targets ("all-linear").
const std::vector<std::string>& llama_linear_modules();
// Export formats output.export accepts.
const std::vector<std::string>& known_export_formats();

// Regex (or name) -> value, in the order written; the first matching entry wins.
using NamedInts = std::vector<std::pair<std::string, int64_t>>;
using NamedFloats = std::vector<std::pair<std::string, double>>;

struct ModelRecipe {
  // How the frozen base weights are stored for training.
  enum class BaseDType { Keep, NF4, BF16, F32 };  // "keep" | "nf4" | "bf16" | "f32"

  std::string path;  // GGUF file or Hugging Face directory; required
  BaseDType base_dtype = BaseDType::Keep;
  bool double_quant = true;  // with base_dtype nf4: also quantize the absmax values (QLoRA)
  Precision precision = Precision::Auto;
  bool checkpoint_activations = true;
  bool keep_attention = true;  // with checkpoint_activations
  bool operator==(const ModelRecipe&) const = default;
};

struct LoraRecipe {
  enum class Init { Kaiming, Gaussian, PiSSA };  // "kaiming" | "gaussian" | "pissa" (as PEFT)

  int64_t rank = 16;
  double alpha = 32.0;  // scale alpha / rank (or alpha / sqrt(rank) with use_rslora)
  double dropout = 0.05;
  // Concrete module names; "all-linear" in a recipe resolves to llama_linear_modules().
  std::vector<std::string> targets = llama_linear_modules();
  // If set, full module paths matching it are targets: instead of the default `targets` when
  // the recipe does not set them (PEFT's regex target_modules), else in addition to them.
  std::string target_regex;
  std::vector<int64_t> layers;  // block indices to adapt; empty = all
  bool use_rslora = false;
  bool use_dora = false;
  Init init = Init::Kaiming;
  NamedInts rank_pattern;     // module-path regex -> rank
  NamedFloats alpha_pattern;  // module-path regex -> alpha
  // An adapter to keep training (loom run / adapter folder, PEFT folder, llama.cpp adapter
  // GGUF): its structure replaces the keys above (the run says which of them differ); dropout
  // is the recipe's.
  std::string init_from;
  bool operator==(const LoraRecipe&) const = default;
};

struct DataSourceRecipe {
  enum class Format { Text, Jsonl, Instruct, Chat, Dictd };  // "text" | "jsonl" | ... | "dictd"

  std::string name;  // unique; used by data.mix and per-corpus eval
  std::string path;  // file, folder or glob
  Format format = Format::Text;
  std::string text_field = "text";  // jsonl: the field holding the text
  // instruct: the document is prompt + completion; only the completion is trained on
  std::string prompt_field = "prompt";
  std::string completion_field = "completion";
  bool instruct_as_chat = false;  // instruct: render as a user/assistant exchange (chat_template)
  std::string messages_field = "messages";  // chat: [{role, content}, ...]
  // chat: a built-in template name, or "model": the format of the model's own template
  std::string chat_template = "model";
  // chat / instruct_as_chat: the system message of a conversation that has none: "model" (the
  // model's template's own default, as apply_chat_template inserts it), "none", or the text
  std::string default_system = "model";
  double weight = 1.0;                      // relative share of the mix (data.mix overrides)
  double heldout_fraction = 0.01;           // share of documents kept out of training for eval
  // text: "" or "blank_lines" = documents separated by blank lines, "file" = one document per
  // file, anything else = that literal separator (e.g. "%" for fortune files)
  std::string separator;
  bool skip_bad_records = false;  // skip (and count) unreadable records instead of failing
  bool operator==(const DataSourceRecipe&) const = default;
};

struct DataRecipe {
  enum class MixBy { Tokens, Examples };    // what data.mix weights count
  enum class OnExhausted { Repeat, Stop };  // when a source runs out of data

  std::vector<DataSourceRecipe> sources;  // at least one
  // Source name -> weight, as written. Already applied to sources[i].weight after loading, so
  // consumers read weights from `sources` only.
  NamedFloats mix;
  MixBy mix_by = MixBy::Tokens;
  int64_t seq_len = 512;
  OnExhausted on_exhausted = OnExhausted::Repeat;
  bool train_on_prompt = false;
  bool packing = true;
  bool operator==(const DataRecipe&) const = default;
};

struct TrainRecipe {
  int64_t batch_size = 4;
  int64_t grad_accum = 1;
  int64_t steps = 0;   // optimizer steps; required unless epochs is set (then a cap, 0 = none)
  int64_t epochs = 0;  // passes over the data; 0 = train.steps alone decides
  double lr = 2e-4;
  LrScheduleKind schedule = LrScheduleKind::Cosine;
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.0;
  double weight_decay = 0.0;
  bool decay_dora_magnitude = false;  // weight_decay on DoRA magnitudes too (HF / torchtune)
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_eps = 1e-8;
  double clip_grad_norm = 1.0;    // 0 = no clipping
  int64_t seed = 42;              // non-negative
  int64_t max_skipped_steps = 5;  // consecutive non-finite steps before the run stops
  bool operator==(const TrainRecipe&) const = default;
};

struct EvalRecipe {
  int64_t every = 100;   // steps between evaluations; 0 = only at the end
  int64_t batches = 10;  // batches per source and evaluation
  bool at_start = true;
  bool operator==(const EvalRecipe&) const = default;
};

struct CheckpointRecipe {
  int64_t every = 100;  // steps between checkpoints; 0 = only at the end
  int64_t keep_last = 2;
  bool operator==(const CheckpointRecipe&) const = default;
};

struct OutputRecipe {
  std::string dir;                          // default: runs/<recipe file name without extension>
  std::vector<std::string> export_formats;  // YAML key `export`
  // The PEFT export's base_model_name_or_path (a Hugging Face model id, as `loom export
  // --base-model-name`); empty: the base model's path
  std::string base_model_name;
  int64_t log_every = 10;  // progress/metrics line interval when stderr is not a terminal
  bool operator==(const OutputRecipe&) const = default;
};

struct Recipe {
  ModelRecipe model;
  LoraRecipe lora;
  DataRecipe data;
  TrainRecipe train;
  EvalRecipe eval;
  CheckpointRecipe checkpoint;
  OutputRecipe output;
  bool resume = false;  // continue from the latest checkpoint in output.dir
  bool operator==(const Recipe&) const = default;
};

// Reads the YAML file at `path`, applies `overrides` ("train.lr=1e-4", "mix.wiki=0.2", ...) in
// order, fills defaults and validates. Throws loom::Error naming the file, key and line.
Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides = {});
// Same from YAML text; `source_name` stands for the file in messages and in the default
// output.dir.
Recipe parse_recipe(std::string_view yaml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides = {});

// The resolved recipe as YAML, every key in schema order. With `with_docs`, each key carries
// its one-line description as a comment (for --print-config).
std::string recipe_to_yaml(const Recipe& recipe, bool with_docs = false);

// One line per key: "train.lr  float  default 0.0002  peak learning rate" (for `loom recipes
// --keys` and the docs).
std::string describe_recipe_keys();

// Names of the enum values as recipes spell them.
std::string_view to_string(ModelRecipe::BaseDType v);
std::string_view to_string(LoraRecipe::Init v);
std::string_view to_string(DataSourceRecipe::Format v);
std::string_view to_string(DataRecipe::MixBy v);
std::string_view to_string(DataRecipe::OnExhausted v);
std::string_view to_string(LrScheduleKind v);

}  // namespace loom
