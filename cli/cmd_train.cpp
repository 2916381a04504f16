// `loom train RECIPE [key=value ...] [--print-config] [--resume DIR]` and `loom recipes`.
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "autograd/check.h"
#include "cli/commands.h"
#include "trainer/recipe.h"
#include "trainer/train_session.h"

namespace loom::cli {

namespace {

struct TrainArgs {
  std::vector<std::string> positional;  // the recipe, then key=value overrides
  bool print_config = false;
  bool dry_run = false;
  std::string resume;
  bool allow_recipe_change = false;
};

void run_train(const TrainArgs& a) {
  std::string recipe;
  std::vector<std::string> overrides;
  for (const std::string& arg : a.positional) {
    if (arg.find('=') != std::string::npos) overrides.push_back(arg);
    else if (recipe.empty()) recipe = arg;
    else
      throw Error(fmt::format("loom train: '{}' is neither the recipe (already '{}') nor a "
                              "key=value override",
                              arg, recipe));
  }
  if (a.print_config && recipe.empty() && !a.resume.empty()) recipe = resume_recipe_path(a.resume);
  if (a.print_config) {
    if (recipe.empty()) throw Error("loom train --print-config: give the recipe file");
    fmt::print("{}", resolved_recipe_yaml(recipe, overrides, /*with_docs=*/true));
    return;
  }
  TrainOptions opt;
  opt.resume_from = a.resume;
  opt.allow_recipe_change = a.allow_recipe_change;
  opt.dry_run = a.dry_run;
  const TrainResult r = train_recipe_file(recipe, overrides, opt);
  if (r.stopped) throw Error(r.stop_reason);
  // The shell's convention for a command ended by a signal (130 for Ctrl-C).
  if (r.interrupted_by != 0) throw CLI::RuntimeError(128 + r.interrupted_by);
}

// The first line of a recipe's header comment ("# QLoRA on SmolLM2-135M ..." -> the text).
std::string recipe_title(const std::filesystem::path& path) {
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    if (line[0] != '#') return "(no header comment)";
    const size_t start = line.find_first_not_of("# ");
    if (start != std::string::npos) return line.substr(start);
  }
  return "(no header comment)";
}

void run_recipes(const std::string& dir) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir))
    throw Error(fmt::format("loom recipes: {} is not a folder (run from the repository root, or "
                            "pass --dir)",
                            dir));
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".yaml" || e.path().extension() == ".yml") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  size_t width = 0;
  for (const auto& f : files) width = std::max(width, f.string().size());
  for (const auto& f : files) {
    fmt::print("{:<{}}  {}\n", f.string(), width, recipe_title(f));
    // A recipe that does not load is listed with why, so that it is not mistaken for one to run.
    try {
      load_recipe(f.string());
    } catch (const Error& e) {
      fmt::print("{:<{}}  ! does not load: {}\n", "", width, e.what());
    }
  }
  if (files.empty()) {
    fmt::print("no recipes in {}\n", dir);
    return;
  }
  // The quickstart recipe when it is there (the sweep recipe sorts first but is for loom sweep).
  fs::path example = files.front();
  for (const auto& f : files)
    if (f.stem() == "quickstart_qlora") example = f;
  fmt::print("\nrun one with: loom train {} [key=value ...]\n", example.string());
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto args = std::make_shared<TrainArgs>();
  CLI::App* cmd = app.add_subcommand(
      "train", "Fine-tune a model with a LoRA/QLoRA recipe: loom train recipes/NAME.yaml key=value ...");
  cmd->add_option("recipe_and_overrides", args->positional,
                  "The recipe file, then key=value overrides (train.lr=1e-4 data.seq_len=256 ...)");
  cmd->add_flag("--print-config", args->print_config,
                "Print the resolved recipe (every key, with its description) and exit");
  cmd->add_flag("--dry-run", args->dry_run,
                "Load the model and data, count the steps, show the start of the first batch with "
                "what the loss counts, and exit: nothing trained or written");
  cmd->add_option("--resume", args->resume,
                  "Continue the run in this directory (output.dir) from its latest checkpoint, or "
                  "from the given checkpoint file");
  cmd->add_flag("--allow-recipe-change", args->allow_recipe_change,
                "Resume even if the recipe changes data, model, lora or optimizer keys of the "
                "checkpoint's run (refused otherwise)");
  cmd->footer(
      "Ctrl-C (or SIGTERM) stops after the current step, saves its checkpoint and adapter and "
      "exits 130 (143); continue with --resume DIR. A second Ctrl-C quits at once.");
  cmd->callback([args] { run_reporting_errors([&] { run_train(*args); }); });

  auto dir = std::make_shared<std::string>("recipes");
  CLI::App* rec = app.add_subcommand("recipes", "List the recipes in recipes/ with what each does");
  rec->add_option("--dir", *dir, "Folder of recipes")->capture_default_str();
  rec->callback([dir] { run_reporting_errors([&] { run_recipes(*dir); }); });
}

}  // namespace loom::cli
