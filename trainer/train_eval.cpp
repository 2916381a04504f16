// Per-source held-out evaluation during training: mean loss and perplexity over each source's
// held-out documents (the same documents at every evaluation, packed like training windows).
#include <cmath>

#include "autograd/check.h"
#include "autograd/tape.h"
#include "trainer/train_internal.h"

namespace loom {

SourceEval evaluate_documents(
    const LlamaModel& model, std::shared_ptr<const TokenizedSource> source,
    std::vector<int64_t> documents, const PackingConfig& packing, Precision precision,
    int64_t max_batches,
    const std::function<void(const SourceEval&, int64_t batches)>& after_batch) {
  NoGradGuard no_grad;
  ForwardOptions fwd;
  fwd.checkpoint_blocks = false;  // nothing is recorded, so nothing to recompute
  fwd.precision = precision;
  SourceEval e;
  e.name = source->name();
  double loss_sum = 0;
  if (!documents.empty()) {
    EvalStream stream(std::move(source), std::move(documents), packing);
    Batch batch;
    for (int64_t b = 0; (max_batches <= 0 || b < max_batches) && stream.next(batch); ++b) {
      const Tensor hidden = model.forward_hidden(token_batch(batch), fwd);
      const CrossEntropyResult ce = model.loss(hidden, batch.targets, -100, precision);
      loss_sum += ce.loss_sum;
      e.tokens += ce.n_tokens;
      if (after_batch) {
        SourceEval now = e;
        now.loss = e.tokens > 0 ? loss_sum / static_cast<double>(e.tokens) : std::nan("");
        now.perplexity = std::exp(now.loss);
        after_batch(now, b + 1);
      }
    }
  }
  e.loss = e.tokens > 0 ? loss_sum / static_cast<double>(e.tokens) : std::nan("");
  e.perplexity = std::exp(e.loss);
  return e;
}

std::vector<SourceEval> evaluate_sources(const LlamaModel& model, LoraModel& lora,
                                         const TrainData& data, const TrainPlan& plan) {
  // eval.batches 0 means no evaluation (the caller does not call), never "all batches".
  LOOM_CHECK(plan.eval_batches > 0, "evaluate_sources: eval.batches is {}", plan.eval_batches);
  lora.set_training(false);
  std::vector<SourceEval> out;
  try {
    for (size_t s = 0; s < data.sources.size(); ++s)
      out.push_back(evaluate_documents(model, data.sources[s], data.heldout[s], data.packing,
                                       plan.precision, plan.eval_batches));
  } catch (...) {
    lora.set_training(true);
    throw;
  }
  lora.set_training(true);
  return out;
}

}  // namespace loom
