// The training run behind `loom train`: a resolved recipe in, an adapter, metrics, checkpoints
// and a summary out (the run directory is output.dir):
//
//   <dir>/recipe.yaml                  the resolved recipe
//   <dir>/metrics.jsonl                one line per step and per evaluation
//   <dir>/checkpoints/checkpoint-N.h5  trainer/checkpoint.h; the last keep_last are kept
//   <dir>/adapter/                     loom's adapter format (trainer/adapter_file.h)
//   <dir>/summary.json                 final losses, per-source perplexity before/after, speed
//
// Order of work: print what the run will do (model, storage, adapters, data, schedule, output),
// load the model, convert the base (QLoRA), attach the adapters, build the data stream,
// evaluate the base on each source's held-out documents, then train step by step.
//
// Determinism: data order, adapter inits and dropout masks are functions of the seed and the
// step (no running RNG), and the kernels do not depend on thread timing, so the same recipe run
// twice on the same number of threads gives bit-identical adapters, and a run resumed from any
// checkpoint ends bit-identical to one that was never interrupted.
#pragma once

#include "trainer/recipe.h"
#include "trainer/train_plan.h"

namespace loom {

// Runs the recipe. Errors at the edges (files, recipe values, a checkpoint that does not fit)
// throw loom::Error. A run stopped by repeated non-finite steps returns with result.stopped set
// and stop_reason naming the tensor and the step, after saving a checkpoint and the adapter.
TrainResult train(const Recipe& recipe, const TrainOptions& options = {});

// The plan train() follows (exposed for tests and the benchmark).
TrainPlan make_train_plan(const Recipe& recipe);

}  // namespace loom
