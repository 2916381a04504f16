// `loom sweep`: one recipe run once per point of a grid of values, one run after another in this
// process, each into its own run directory under the sweep folder; then a table and a plot of
// the per-source held-out perplexities (trainer/sweep_results.h).
//
//   loom sweep recipes/domain_sweep.yaml mix.foldoc=0,0.15,0.5,1.0 train.steps=30 --out DIR
//
// An argument whose value is a comma-separated list is swept; a single value is an ordinary
// override applied to every run. Several swept keys give their cartesian product, the first key
// varying slowest. Commas inside [...], {...} or quotes do not split, so a list-valued key is
// swept as lora.targets=[q_proj,v_proj],[q_proj].
//
// Mixes: sweeping mix.<source> in a recipe with exactly two sources sets the other to
// 1 - value (so the values are shares in [0, 1]; 0 and 1 leave a source out of training, and it
// is still evaluated), unless the other source's weight is also given on the command line.
// The swept mix key's source is the "domain" (x axis of the plot), the other the "general"
// corpus (y axis); --domain / --general name them explicitly.
//
// Sweep folder (default <recipe output.dir>-sweep):
//   <dir>/<key>=<value>[_<key>=<value>...]/   one run directory per point (train_loop.h)
//   <dir>/results.csv, results.md, plot.svg    rewritten after every run
//
// Re-running an interrupted sweep skips points whose run finished (summary.json present) and
// resumes an unfinished one from its latest checkpoint. A run folder that holds a different
// recipe than the point's is an error, not silently reused.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "trainer/recipe.h"
#include "trainer/sweep_results.h"

namespace loom {

// What the command line asks for.
struct SweepRequest {
  std::string recipe_path;
  std::vector<std::string> assignments;  // "key=v1,v2,..." (swept) and "key=value" (fixed)
  std::string out_dir;                   // "" = <recipe output.dir>-sweep
  std::string domain, general;           // source names; "" = inferred (see above)
};

struct SweepAxis {
  std::string key;                  // as overrides spell it: "mix.foldoc", "train.lr"
  std::vector<std::string> values;  // two or more, distinct
};

struct SweepPoint {
  // Swept key -> value in axis order, then the complement ("mix.wordnet" -> "0.85") if any.
  std::vector<std::pair<std::string, std::string>> values;
  std::string name;                    // run folder name: "mix.foldoc=0.15"
  std::string dir;                     // <sweep dir>/<name>
  std::vector<std::string> overrides;  // fixed ones, swept ones, the complement, output.dir
  Recipe recipe;                       // resolved (validated) for this point
};

struct SweepPlan {
  std::string recipe_path;
  std::vector<SweepAxis> axes;
  std::vector<std::string> fixed_overrides;
  std::string complement_key;  // "mix.wordnet" when it is set to 1 - complement_of, else ""
  std::string complement_of;   // "mix.foldoc"
  std::string sweep_dir;
  std::string domain, general;
  std::vector<std::string> source_names;  // the recipe's order
  std::vector<SweepPoint> points;         // cartesian product, first axis slowest
};

// The values of one `key=list` argument: split at commas outside brackets, braces and quotes,
// each trimmed. Throws naming `argument` for an empty item ("0,,1", "0,") or an unclosed bracket.
std::vector<std::string> split_sweep_values(const std::string& argument, const std::string& value);

// Parses the request, resolves and validates every point's recipe (unknown keys and bad values
// fail here, before anything runs, with the recipe's own messages), works out the complement
// and the domain/general sources. Throws loom::Error naming the argument at fault.
SweepPlan make_sweep_plan(const SweepRequest& request);

// Where a point's run stands on disk.
struct SweepPointState {
  enum class Kind { New, Partial, Finished } kind = Kind::New;
  int64_t checkpoint_step = 0;  // Partial: the step its latest checkpoint holds
};
// Throws when the run folder holds a recipe.yaml that differs from the point's resolved recipe
// (naming the folder and the first differing line).
SweepPointState sweep_point_state(const SweepPoint& point);

// The plan as printed before anything runs: grid, complement, fixed overrides, domain/general,
// each run with its folder, steps, tokens per step and state, and an estimate of the time left
// from finished runs when there are any.
std::string describe_sweep_plan(const SweepPlan& plan);

struct SweepOptions {
  bool quiet = false;  // no plan, banners or progress on the console (tests)
  std::function<void(int64_t step)> after_step;  // passed to every run (TrainOptions; tests)
};

struct SweepOutcome {
  int ran = 0;      // runs started or resumed by this call
  int skipped = 0;  // finished before this call
  SweepTable table;
  std::string results_csv, results_md, plot_svg;  // paths written
  std::vector<std::string> stopped;               // "name: reason" of runs that stopped early
  // SIGINT / SIGTERM when a signal stopped the run in progress (it saved a checkpoint; the
  // sweep ran no further points; the same command continues it); 0 otherwise.
  int interrupted_by = 0;
};

// Runs the plan: skips finished points, runs (or resumes) the others in order, rewriting the
// results after each. A run that throws ends the sweep (the results of the runs before it stay
// written); a run that stops early (non-finite steps) is recorded and the sweep goes on; a run
// interrupted by Ctrl-C or SIGTERM (autograd/interrupt.h) ends the sweep after its checkpoint.
SweepOutcome run_sweep(const SweepPlan& plan, const SweepOptions& options = {});

// The table of the plan's finished runs (the ones with summary.json), as run_sweep writes it.
SweepTable collect_sweep_table(const SweepPlan& plan);

}  // namespace loom
