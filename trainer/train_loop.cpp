// train(): the recipe read into a TrainPlan (see train_plan.h for why), then the run
// (train_session.cpp).
#include "trainer/train_loop.h"

#include <fmt/format.h>

#include <cstdio>
#include <filesystem>

#include "autograd/check.h"
#include "autograd/interrupt.h"
#include "trainer/export_run.h"
#include "trainer/schedule.h"
#include "trainer/train_session.h"

namespace loom {

TrainPlan make_train_plan(const Recipe& recipe) {
  TrainPlan p;
  p.recipe_source = "(recipe given as a value)";
  p.recipe_yaml = recipe_to_yaml(recipe);

  p.model_path = recipe.model.path;
  p.base_dtype = std::string(to_string(recipe.model.base_dtype));
  p.double_quant = recipe.model.double_quant;
  p.precision = recipe.model.precision;
  p.checkpoint_activations = recipe.model.checkpoint_activations;
  p.keep_attention = recipe.model.keep_attention;

  const LoraRecipe& l = recipe.lora;
  p.rank = l.rank;
  p.alpha = l.alpha;
  p.dropout = l.dropout;
  p.targets = l.targets;
  p.target_regex = l.target_regex;
  p.layers = l.layers;
  p.rslora = l.use_rslora;
  p.dora = l.use_dora;
  p.init = std::string(to_string(l.init));
  p.rank_pattern = l.rank_pattern;
  p.alpha_pattern = l.alpha_pattern;
  p.init_from = l.init_from;

  for (const DataSourceRecipe& s : recipe.data.sources) {
    TrainSourcePlan sp;
    sp.name = s.name;
    sp.path = s.path;
    sp.format = std::string(to_string(s.format));
    sp.text_field = s.text_field;
    sp.prompt_field = s.prompt_field;
    sp.completion_field = s.completion_field;
    sp.instruct_as_chat = s.instruct_as_chat;
    sp.messages_field = s.messages_field;
    sp.chat_template = s.chat_template;
    sp.default_system = s.default_system;
    sp.weight = s.weight;
    sp.heldout_fraction = s.heldout_fraction;
    sp.separator = s.separator;
    sp.skip_bad_records = s.skip_bad_records;
    p.sources.push_back(std::move(sp));
  }
  p.mix_by = std::string(to_string(recipe.data.mix_by));
  p.on_exhausted = std::string(to_string(recipe.data.on_exhausted));
  p.seq_len = recipe.data.seq_len;
  p.train_on_prompt = recipe.data.train_on_prompt;
  p.packing = recipe.data.packing;

  const TrainRecipe& t = recipe.train;
  p.batch_size = t.batch_size;
  p.grad_accum = t.grad_accum;
  p.steps = t.steps;
  p.epochs = t.epochs;
  p.lr = t.lr;
  p.schedule = std::string(to_string(t.schedule));
  p.warmup_steps = t.warmup_steps;
  p.min_lr_ratio = t.min_lr_ratio;
  const LrSchedule schedule = LrSchedule::from_recipe(t);
  p.lr_at = [schedule](int64_t step, int64_t total_steps) {
    LrSchedule s = schedule;
    s.total_steps = total_steps;
    return s.lr(step);
  };
  p.weight_decay = t.weight_decay;
  p.decay_dora_magnitude = t.decay_dora_magnitude;
  p.adam_beta1 = t.adam_beta1;
  p.adam_beta2 = t.adam_beta2;
  p.adam_eps = t.adam_eps;
  p.clip_grad_norm = t.clip_grad_norm;
  LOOM_CHECK(t.seed >= 0, "train.seed must be non-negative (the recipe checks), got {}", t.seed);
  p.seed = static_cast<uint64_t>(t.seed);
  p.max_skipped_steps = t.max_skipped_steps;

  p.eval_every = recipe.eval.every;
  p.eval_batches = recipe.eval.batches;
  p.eval_at_start = recipe.eval.at_start;
  p.checkpoint_every = recipe.checkpoint.every;
  p.keep_last = recipe.checkpoint.keep_last;
  p.output_dir = recipe.output.dir;
  p.export_formats = recipe.output.export_formats;
  p.base_model_name = recipe.output.base_model_name;
  p.log_every = recipe.output.log_every;
  return p;
}

namespace {

// The `loom export` command that makes the recipe's exports of a finished run.
std::string export_command(const TrainPlan& plan) {
  std::string cmd = "loom export " + plan.output_dir;
  for (const std::string& f : plan.export_formats) cmd += " -f " + f;
  if (!plan.base_model_name.empty()) cmd += " --base-model-name " + plan.base_model_name;
  return cmd;
}

// run_training, then the exports output.export asks for, from the adapter just saved, into
// <output.dir>/export/ (replacing what an earlier run of the same directory exported there).
TrainResult run_training_and_export(const TrainPlan& plan, const TrainOptions& options) {
  TrainResult result = run_training(plan, options);
  if (plan.export_formats.empty() || result.already_finished || result.dry_run) return result;
  if (result.stopped || result.interrupted_by != 0) {
    if (!options.quiet) {
      if (result.stopped)
        fmt::print("export: skipped, the run stopped ({})\n", result.stop_reason);
      else if (result.finished)
        fmt::print("export: skipped (interrupted); make the exports with: {}\n",
                   export_command(plan));
      else
        fmt::print(
            "export: skipped, the run was interrupted; `loom train --resume {}` exports "
            "when it finishes\n",
            plan.output_dir);
    }
    return result;
  }
  AdaptedModel am = load_adapted_model(plan.output_dir, "");
  ExportRequest req;
  req.formats = plan.export_formats;
  req.base_model_name = plan.base_model_name;
  req.out_dir = (std::filesystem::path(plan.output_dir) / "export").string();
  req.force = true;
  req.precision = plan.precision;
  const bool quiet = options.quiet;
  ExportSummary s;
  try {
    s = export_adapter(am, req, [quiet](const std::string& line) {
      if (quiet) return;
      fmt::print("{}\n", line);
      std::fflush(stdout);
    });
  } catch (const Interrupted& e) {
    throw Interrupted(e.signal(),
                      fmt::format("{}. The training itself is finished and saved ({}/adapter, "
                                  "summary.json); redo the export with: {} --force",
                                  e.what(), plan.output_dir, export_command(plan)));
  }
  if (quiet) return result;
  if (!s.cost.empty())
    fmt::print("quantization cost {}:\n{}", s.cost_note, cost_table_markdown(s.cost));
  for (const ExportedItem& item : s.items) fmt::print("export:        {} {}\n", item.format, item.path);
  std::fflush(stdout);
  return result;
}

}  // namespace

TrainResult train(const Recipe& recipe, const TrainOptions& options) {
  if (options.print_config_only) {
    fmt::print("{}", recipe_to_yaml(recipe, /*with_docs=*/true));
    std::fflush(stdout);
    return TrainResult{};
  }
  TrainOptions opts = options;
  opts.resume = opts.resume || recipe.resume || !opts.resume_from.empty();
  return run_training_and_export(make_train_plan(recipe), opts);
}

TrainResult train_recipe_file(const std::string& recipe_path,
                              const std::vector<std::string>& overrides,
                              const TrainOptions& options) {
  std::string path = recipe_path;
  if (path.empty()) {
    if (options.resume_from.empty())
      throw Error("loom train: no recipe given; pass recipes/<name>.yaml (or --resume DIR to "
                  "continue a run from its own recipe.yaml)");
    path = resume_recipe_path(options.resume_from);
  }
  Recipe recipe = load_recipe(path, overrides);
  if (!options.resume_from.empty()) recipe.output.dir = resume_run_dir(options.resume_from);
  if (options.print_config_only) return train(recipe, options);
  TrainPlan plan = make_train_plan(recipe);
  plan.recipe_source = path;
  TrainOptions opts = options;
  opts.resume = opts.resume || recipe.resume || !opts.resume_from.empty();
  return run_training_and_export(plan, opts);
}

std::string resolved_recipe_yaml(const std::string& recipe_path,
                                 const std::vector<std::string>& overrides, bool with_docs) {
  return recipe_to_yaml(load_recipe(recipe_path, overrides), with_docs);
}

}  // namespace loom
