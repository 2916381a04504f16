// The pieces of a training run (internal to trainer/train_*.cpp): the model with its tokenizer,
// the adapter config from the plan, the data streams and per-source evaluation.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "data/heldout.h"
#include "data/source_config.h"
#include "data/train_stream.h"
#include "layers/llama.h"
#include "layers/tokenizer.h"
#include "lora/lora_model.h"
#include "trainer/train_plan.h"

namespace loom {

struct TrainingModel {
  std::unique_ptr<LlamaModel> model;  // heap: adapters and recorded blocks point into it
  std::unique_ptr<Tokenizer> tokenizer;
  std::string tokenizer_description;  // for the banner
};

// A .gguf file (its tokenizer.* keys) or a Hugging Face directory (tokenizer.json; without one,
// a model whose vocabulary is exactly 256 gets the byte tokenizer below). Errors name the path
// as `label` ("model.path" in a recipe, "--model" on a command line).
TrainingModel load_training_model(const std::string& path, std::string_view label = "model.path");

// One token per byte: id b is byte b, except that 0 is <unk>, and the BOS / EOS ids (from
// config.json) are control tokens. For tiny test models whose 256-entry vocabulary has no
// tokenizer file.
std::unique_ptr<Tokenizer> make_byte_tokenizer(const std::string& source, int32_t bos_id,
                                               int32_t eos_id);

LoraConfig lora_config_from_plan(const TrainPlan& plan);

// Adapted modules and trainable parameters the config gives on this model, before attaching.
struct AdapterCount {
  int64_t modules = 0;
  int64_t parameters = 0;
  bool head = false;  // the LM head is among the targets
};
AdapterCount count_adapter_parameters(LlamaModel& model, const LoraConfig& config);

struct TrainData {
  std::vector<std::shared_ptr<const TokenizedSource>> sources;  // plan order
  std::vector<std::string> cache_notes;                        // "hit <path>" / "built <path>"
  PackingConfig packing;
  std::unique_ptr<TrainStream> stream;
  std::vector<std::vector<int64_t>> heldout;  // per source, the held-out documents
  std::vector<MixSource> mix;                 // what `stream` was made of (count_data_steps)
  MixerConfig mixer;
};
TrainData build_train_data(const TrainPlan& plan, const Tokenizer& tokenizer);
// A recipe source as the data module's reader config (default_system resolved).
SourceConfig source_config(const TrainSourcePlan& s, const Tokenizer& tokenizer);

// The optimizer steps the data gives when its stream ends (data.on_exhausted: stop, or
// train.epochs), counted by running a copy of the stream from its start (packing only: no model),
// at most `cap` steps (0 = no cap); -1 when the stream never ends. A last step of fewer than
// grad_accum micro-batches counts, as the run trains it. With `from`, the steps left from that
// stream position.
int64_t count_data_steps(const TrainData& data, const TrainPlan& plan, int64_t cap,
                         const TrainStreamPosition* from = nullptr);
// Whether the source renders chat (format chat, or instruct with instruct_as_chat).
bool renders_chat(const TrainSourcePlan& s);
// The source's chat_template as a built-in name ("model": the model's own format; throws when
// it has none loom renders).
std::string source_chat_template(const TrainSourcePlan& s, const Tokenizer& tokenizer);
// A source's default_system ("model", "none" or the text) as the system message its reader puts
// first in conversations without one: "model" is the model template's own default (empty when it
// has none loom can read, or its format is not the source's chat_template).
std::string resolve_default_system(const TrainSourcePlan& s, const Tokenizer& tokenizer);

// Mean loss and perplexity on each source's held-out documents, at most `batches` batches per
// source, in eval mode (no dropout) and without recording. Leaves the model in train mode.
std::vector<SourceEval> evaluate_sources(const LlamaModel& model, LoraModel& lora,
                                         const TrainData& data, const TrainPlan& plan);

// The model's view of a packed batch (spans into `b`, which must outlive it).
inline TokenBatch token_batch(const Batch& b) {
  TokenBatch tb;
  tb.ids = b.tokens;
  tb.batch = b.batch;
  tb.seq_len = b.seq_len;
  tb.positions = b.positions;
  tb.document_ids = b.document_ids;
  return tb;
}

// Mean loss over the counted targets (the trained segments: completions, assistant turns) of
// `documents` of `source`, packed as `packing` says, at most `max_batches` batches (0 = all),
// without recording. `after_batch` (may be empty) sees the running result after each batch.
SourceEval evaluate_documents(
    const LlamaModel& model, std::shared_ptr<const TokenizedSource> source,
    std::vector<int64_t> documents, const PackingConfig& packing, Precision precision,
    int64_t max_batches,
    const std::function<void(const SourceEval&, int64_t batches)>& after_batch = {});

}  // namespace loom
