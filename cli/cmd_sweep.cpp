// `loom sweep RECIPE key=v1,v2,... [key=value ...] [--out DIR] [--domain NAME] [--general NAME]
// [--plan]`: the recipe once per grid point, then a table and a plot (trainer/sweep.h).
#include <fmt/format.h>

#include <memory>
#include <string>
#include <vector>

#include "autograd/check.h"
#include "cli/commands.h"
#include "trainer/sweep.h"

namespace loom::cli {

namespace {

struct SweepArgs {
  std::vector<std::string> positional;  // the recipe, then key=... arguments
  std::string out, domain, general;
  bool plan_only = false;
};

void run_sweep_command(const SweepArgs& a) {
  SweepRequest req;
  for (const std::string& arg : a.positional) {
    if (arg.find('=') != std::string::npos)
      req.assignments.push_back(arg);
    else if (req.recipe_path.empty())
      req.recipe_path = arg;
    else
      throw Error(
          fmt::format("loom sweep: '{}' is neither the recipe (already '{}') nor a "
                      "key=v1,v2,... argument",
                      arg, req.recipe_path));
  }
  req.out_dir = a.out;
  req.domain = a.domain;
  req.general = a.general;
  const SweepPlan plan = make_sweep_plan(req);
  if (a.plan_only) {
    fmt::print("{}", describe_sweep_plan(plan));
    return;
  }
  const SweepOutcome outcome = run_sweep(plan);
  // The shell's convention for a command ended by a signal (130 for Ctrl-C).
  if (outcome.interrupted_by != 0) throw CLI::RuntimeError(128 + outcome.interrupted_by);
  if (!outcome.stopped.empty()) {
    std::string list;
    for (const std::string& s : outcome.stopped) list += "\n  " + s;
    throw Error(
        fmt::format("{} run(s) of the sweep stopped early (their rows are marked in the "
                    "results):{}",
                    outcome.stopped.size(), list));
  }
}

}  // namespace

void add_sweep_command(CLI::App& app) {
  auto args = std::make_shared<SweepArgs>();
  CLI::App* cmd = app.add_subcommand(
      "sweep",
      "Run a recipe once per grid point and tabulate/plot per-source perplexities: loom sweep "
      "recipes/NAME.yaml mix.domain=0,0.15,0.5,1.0 [key=value ...]");
  cmd->add_option("recipe_and_arguments", args->positional,
                  "The recipe file, then key=v1,v2,... (swept; several keys give every "
                  "combination) and key=value (applied to every run)");
  cmd->add_option("--out", args->out,
                  "Sweep folder (default: the recipe's output.dir + \"-sweep\"); one run folder "
                  "per point inside, plus results.csv, results.md, plot.svg");
  cmd->add_option("--domain", args->domain,
                  "The domain source (x axis of the plot); default: the swept mix.<source>");
  cmd->add_option("--general", args->general,
                  "The general source (y axis); default: the other of two sources");
  cmd->add_flag("--plan", args->plan_only,
                "Print the plan (points, run folders, steps, what is finished) and exit");
  cmd->callback([args] { run_reporting_errors([&] { run_sweep_command(*args); }); });
}

}  // namespace loom::cli
