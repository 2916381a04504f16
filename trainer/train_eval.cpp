// Per-source held-out evaluation during training: mean loss and perplexity over each source's
// held-out documents (the same documents at every evaluation, packed like training windows).
#include <cmath>

#include "autograd/tape.h"
#include "trainer/train_internal.h"

namespace loom {

std::vector<SourceEval> evaluate_sources(const LlamaModel& model, LoraModel& lora,
                                         const TrainData& data, const TrainPlan& plan) {
  lora.set_training(false);
  std::vector<SourceEval> out;
  try {
    NoGradGuard no_grad;
    ForwardOptions fwd;
    fwd.checkpoint_blocks = false;  // nothing is recorded, so nothing to recompute
    fwd.precision = plan.precision;
    for (size_t s = 0; s < data.sources.size(); ++s) {
      SourceEval e;
      e.name = data.sources[s]->name();
      double loss_sum = 0;
      if (!data.heldout[s].empty()) {
        EvalStream stream(data.sources[s], data.heldout[s], data.packing);
        Batch batch;
        for (int64_t b = 0; b < plan.eval_batches && stream.next(batch); ++b) {
          TokenBatch tb;
          tb.ids = batch.tokens;
          tb.batch = batch.batch;
          tb.seq_len = batch.seq_len;
          tb.positions = batch.positions;
          tb.document_ids = batch.document_ids;
          const Tensor hidden = model.forward_hidden(tb, fwd);
          const CrossEntropyResult ce = model.loss(hidden, batch.targets, -100, plan.precision);
          loss_sum += ce.loss_sum;
          e.tokens += ce.n_tokens;
        }
      }
      e.loss = e.tokens > 0 ? loss_sum / static_cast<double>(e.tokens) : std::nan("");
      e.perplexity = std::exp(e.loss);
      out.push_back(e);
    }
  } catch (...) {
    lora.set_training(true);
    throw;
  }
  lora.set_training(true);
  return out;
}

}  // namespace loom
