// What one training run does, as plain values: the trainer's own view of a resolved recipe.
//
// Why a second struct beside `Recipe`: the recipe's enums and lora/ and data/'s own enums for
// the same things are separate types; the plan carries their shared spellings ("nf4", "dictd")
// and the learning-rate schedule as a function, so the run (train_session.cpp and friends)
// depends on the recipe's meaning, not on its parser. train_loop.cpp makes the plan.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "autograd/kernels/gemm.h"  // Precision

namespace loom {

struct TrainSourcePlan {
  std::string name;
  std::string path;
  std::string format;  // "text", "jsonl", "instruct", "chat", "dictd"
  std::string text_field = "text";
  std::string prompt_field = "prompt";
  std::string completion_field = "completion";
  bool instruct_as_chat = false;
  std::string messages_field = "messages";
  std::string chat_template = "model";   // or a built-in template name
  std::string default_system = "model";  // "model", "none" or the text
  double weight = 1.0;
  double heldout_fraction = 0.01;
  std::string separator;
  bool skip_bad_records = false;
};

struct TrainPlan {
  std::string recipe_source;  // the recipe file (or the name standing for it)
  std::string recipe_yaml;    // the resolved recipe, as saved into the run and checkpoints

  // model
  std::string model_path;
  std::string base_dtype = "keep";  // "keep", "nf4", "bf16", "f32"
  bool double_quant = true;
  Precision precision = Precision::Auto;
  bool checkpoint_activations = true;
  bool keep_attention = true;

  // lora
  int64_t rank = 16;
  double alpha = 32.0;
  double dropout = 0.0;
  std::vector<std::string> targets;
  std::string target_regex;
  std::vector<int64_t> layers;
  bool rslora = false;
  bool dora = false;
  std::string init = "kaiming";
  std::vector<std::pair<std::string, int64_t>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
  std::string init_from;  // an adapter to keep training; its structure replaces the above

  // data
  std::vector<TrainSourcePlan> sources;
  std::string mix_by = "tokens";         // "tokens", "examples"
  std::string on_exhausted = "repeat";   // "repeat", "stop"
  int64_t seq_len = 512;
  bool train_on_prompt = false;
  bool packing = true;

  // train
  int64_t batch_size = 4;
  int64_t grad_accum = 1;
  int64_t steps = 0;   // 0: as many as `epochs` passes over the data give
  int64_t epochs = 0;  // > 0: the data stream ends after this many passes (mixer.h max_epochs)
  double lr = 2e-4;
  std::string schedule = "cosine";
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.0;
  // (steps already taken, the run's total steps) -> learning rate. The total is train.steps,
  // or fewer when the data ends first (data.on_exhausted: stop, train.epochs).
  std::function<double(int64_t step, int64_t total_steps)> lr_at;
  double weight_decay = 0.0;
  bool decay_dora_magnitude = false;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_eps = 1e-8;
  double clip_grad_norm = 1.0;
  uint64_t seed = 42;
  int64_t max_skipped_steps = 5;

  // eval
  int64_t eval_every = 100;
  int64_t eval_batches = 10;
  bool eval_at_start = true;

  // checkpoints
  int64_t checkpoint_every = 100;
  int64_t keep_last = 2;

  // output
  std::string output_dir;
  std::vector<std::string> export_formats;
  std::string base_model_name;  // output.base_model_name
  int64_t log_every = 10;
};

struct TrainOptions {
  bool resume = false;             // continue from the latest checkpoint in the output dir
  std::string resume_from;         // a run directory or checkpoint file (implies resume)
  bool print_config_only = false;  // print the resolved recipe and stop
  // Resume even when the recipe differs from the checkpoint's in keys that change the training
  // (data, model, lora, optimizer); by default that is an error naming the keys.
  bool allow_recipe_change = false;
  bool quiet = false;              // no banner / progress on the console (tests)
  // Load the model and the data, count the steps, show the start of the first batch with what
  // the loss counts, and stop: nothing trained, nothing written (the token cache aside).
  bool dry_run = false;
  // Called after each step with the number of steps done (tests interrupt a run at a known
  // step with it).
  std::function<void(int64_t step)> after_step;
  // Called as the final evaluation starts (tests send a signal there).
  std::function<void()> at_final_evaluation;
};

struct SourceEval {
  std::string name;
  int64_t tokens = 0;  // targets scored
  double loss = 0;     // mean negative log-likelihood (nats)
  double perplexity = 0;
};

struct TrainResult {
  int64_t steps_done = 0;     // optimizer steps completed (skipped ones included)
  int64_t skipped_steps = 0;  // in all, over the whole run
  bool stopped = false;       // stopped early by repeated non-finite steps (an error)
  std::string stop_reason;    // the diagnostic when stopped
  // data.on_exhausted: stop ended the data before train.steps (a normal end): which source ran
  // out, at which step; empty otherwise.
  std::string data_ended;
  // SIGINT or SIGTERM when a signal stopped the run between steps (autograd/interrupt.h): the
  // checkpoint and adapter of steps_done are saved, no final evaluation or summary.json; 0
  // otherwise. Also set (with `finished`) when the signal came after the last step, during the
  // final evaluation or save, which went on: what would follow (exports) is skipped.
  int interrupted_by = 0;
  bool finished = false;  // the final evaluation ran and summary.json was written
  // Resumed at its last step with summary.json there: nothing was run or written.
  bool already_finished = false;
  bool dry_run = false;                  // TrainOptions::dry_run: previewed, nothing run
  double first_loss = 0, last_loss = 0;  // training loss of the first / last step run here
  std::vector<SourceEval> eval_before, eval_after;
  double tokens_per_second = 0;
  int64_t peak_rss_bytes = 0;
  double wall_seconds = 0;
  std::string output_dir, adapter_dir, last_checkpoint, metrics_path, summary_path;
};

}  // namespace loom
