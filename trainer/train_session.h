// Entry points of a training run that need no recipe types: the run itself from a TrainPlan,
// and a recipe file run or resolved by path (what the CLI and the tests call).
#pragma once

#include <string>
#include <vector>

#include "trainer/train_plan.h"

namespace loom {

// The run (train_loop.h describes the run directory and the order of work).
TrainResult run_training(const TrainPlan& plan, const TrainOptions& options);

// Loads the recipe file with `key=value` overrides (trainer/recipe.h) and runs it. With
// options.resume_from and no recipe path (""), the run directory's recipe.yaml is used.
TrainResult train_recipe_file(const std::string& recipe_path,
                              const std::vector<std::string>& overrides,
                              const TrainOptions& options);

// --resume DIR accepts a run directory (output.dir), its checkpoints/ folder, or one checkpoint
// file. These give the run directory and the recipe.yaml saved there; both throw naming DIR
// when it is none of those.
std::string resume_run_dir(const std::string& resume_from);
std::string resume_recipe_path(const std::string& resume_from);

// The resolved recipe as YAML (with key docs when asked); throws as load_recipe does.
std::string resolved_recipe_yaml(const std::string& recipe_path,
                                 const std::vector<std::string>& overrides, bool with_docs);

}  // namespace loom
