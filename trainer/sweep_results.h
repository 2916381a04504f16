// The results of a sweep (trainer/sweep.h): one row per finished run, read back from its
// summary.json, written as results.csv, results.md and plot.svg (domain perplexity against
// general perplexity, one point per run plus the base model).
//
// Per source and run: the base model's held-out perplexity (step-0 eval), the final one, the
// gain base - final (positive = better) and its share of the base in %, and the training tokens
// the run actually delivered from that source.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "trainer/plot_svg.h"

namespace loom {

struct SourceOutcome {
  std::string name;
  double base_perplexity = std::numeric_limits<double>::quiet_NaN();   // step 0
  double final_perplexity = std::numeric_limits<double>::quiet_NaN();  // end of the run
  int64_t train_tokens = -1;  // delivered for training; -1 = not in the summary
  double gain() const { return base_perplexity - final_perplexity; }
  double gain_percent() const { return 100.0 * gain() / base_perplexity; }
};

struct RunOutcome {
  std::string name;  // run folder name
  std::string dir;
  std::vector<std::pair<std::string, std::string>> values;  // swept key -> value (+ complement)
  std::vector<SourceOutcome> sources;                       // the summary's sources
  int64_t steps = 0;
  bool stopped = false;
  std::string stop_reason;
  double wall_seconds = 0;
  double tokens_per_second = 0;
  // The source named `name`; nullptr if the run has none.
  const SourceOutcome* source(const std::string& name) const;
};

// Reads <run_dir>/summary.json. Throws loom::Error naming the file and the key when it is not
// a loom run summary (missing eval per source, wrong types).
RunOutcome read_run_outcome(const std::string& run_dir);

struct SweepTable {
  std::string title;                    // "loom sweep recipes/x.yaml"
  std::vector<std::string> value_keys;  // columns of swept values (+ the complement key)
  int swept_keys = 0;                   // keys swept (the complement not counted)
  std::vector<std::string> sources;     // column order: domain, general, then the rest
  std::string domain, general;
  std::vector<std::string> notes;  // lines for results.md (complement rule, fixed overrides)
  std::vector<RunOutcome> runs;    // grid order
  // Points of the grid without a finished run ("name (not started)", "name (checkpoint at step
  // N)"): results.md names them, so that a table cut short by a failure or Ctrl-C says so.
  std::vector<std::string> missing;
};

// One header line, then one line per run. Columns: the swept keys, then per source
// <s>_base_ppl, <s>_final_ppl, <s>_gain, <s>_gain_pct, <s>_train_tokens, then steps,
// wall_seconds, tokens_per_second, stopped, run_dir. Numbers in full precision; a missing
// value is an empty cell.
std::string sweep_results_csv(const SweepTable& table);

// The notes, the table (perplexities to 2 decimals, gains with %), the base model's numbers
// and which runs stopped early.
std::string sweep_results_markdown(const SweepTable& table);

// Domain perplexity (x) against general perplexity (y): a point per run, labelled with its swept
// values, joined in grid order when one key is swept; the base model as the reference point
// (one, or one per run where the runs' base numbers differ, e.g. when the model is swept).
ScatterPlot sweep_plot(const SweepTable& table);

// Writes results.csv, results.md and plot.svg into `dir` (each through a temporary file).
// Returns their paths in that order. With no run in the table, the CSV header and the Markdown
// notes are written and no plot (its path is then "").
std::vector<std::string> write_sweep_results(const SweepTable& table, const std::string& dir);

}  // namespace loom
