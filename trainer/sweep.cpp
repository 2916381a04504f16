// `loom sweep` (sweep.h): the grid from the command line, the plan, the runs one after another,
// the results rewritten after each.
#include "trainer/sweep.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <utility>

#include "autograd/check.h"
#include "autograd/interrupt.h"
#include "trainer/checkpoint.h"
#include "trainer/metrics.h"
#include "trainer/recipe_fields.h"
#include "trainer/run_dir.h"
#include "trainer/train_session.h"

namespace loom {

namespace fs = std::filesystem;

namespace {

std::string trim(const std::string& s) {
  const size_t begin = s.find_first_not_of(" \t");
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(" \t") - begin + 1);
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// "mix.foldoc" and "data.mix.foldoc" are one key; the short form is shown.
std::string canonical_key(const std::string& key) {
  return starts_with(key, "data.mix.") ? key.substr(5) : key;
}
// The source a mix key weighs ("mix.foldoc" -> "foldoc"), "" for other keys.
std::string mix_source(const std::string& key) {
  return starts_with(key, "mix.") ? key.substr(4) : "";
}

bool is_list_key(const std::string& key) {
  for (const auto& f : recipe_detail::recipe_fields())
    if (f.path == key)
      return f.type == recipe_detail::FieldType::StringList ||
             f.type == recipe_detail::FieldType::IntList;
  return false;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Assignment {
  std::string text;  // as given
  std::string key;   // canonical
  std::vector<std::string> values;
};

Assignment parse_assignment(const std::string& text) {
  const size_t eq = text.find('=');
  Assignment a;
  a.text = text;
  if (eq != std::string::npos) a.key = canonical_key(trim(text.substr(0, eq)));
  if (eq == std::string::npos || a.key.empty())
    throw Error(
        fmt::format("loom sweep: argument `{}`: expected key=v1,v2,... (swept) or "
                    "key=value (applied to every run), e.g. mix.foldoc=0,0.15,0.5,1.0",
                    text));
  if (a.key == "output.dir")
    throw Error(
        fmt::format("loom sweep: argument `{}`: the sweep sets each run's output.dir "
                    "(<sweep folder>/<point>); choose the sweep folder with --out DIR",
                    text));
  if (a.key == "resume")
    throw Error(
        fmt::format("loom sweep: argument `{}`: a sweep resumes its unfinished runs by "
                    "itself (run the same command again); drop this argument",
                    text));
  const std::string value = text.substr(eq + 1);
  // Without a comma it is an ordinary override, passed on verbatim (quotes and all).
  a.values = value.find(',') == std::string::npos ? std::vector<std::string>{value}
                                                  : split_sweep_values(text, value);
  if (a.values.size() == 1) a.values = {value};
  return a;
}

void check_axis_values(const Assignment& a) {
  std::set<std::string> seen;
  for (const std::string& v : a.values)
    if (!seen.insert(v).second)
      throw Error(fmt::format("loom sweep: argument `{}` lists the value {} twice", a.text, v));
  if (is_list_key(a.key))
    for (const std::string& v : a.values)
      if (v.empty() || v.front() != '[')
        throw Error(fmt::format(
            "loom sweep: argument `{}`: {} is a list, so a comma cannot both separate its items "
            "and the swept values; write each value in brackets: {}=[q_proj,v_proj],[q_proj] (a "
            "single bracketed list is an ordinary override)",
            a.text, a.key, a.key));
}

// A value parsed as a share of a two-source mix.
double mix_share(const std::string& value, const std::string& argument, const std::string& other) {
  char* end = nullptr;
  const double v = std::strtod(value.c_str(), &end);
  const bool number = !value.empty() && end == value.c_str() + value.size();
  if (!number || !(v >= 0.0 && v <= 1.0))
    throw Error(fmt::format(
        "loom sweep: argument `{}`: in a two-source mix the swept weight is a share in [0, 1] "
        "and {} gets 1 - value; found {} (to set both weights yourself, give mix.{}=... too)",
        argument, other, value, other));
  return v;
}

// A run folder name from "key=value" parts: characters outside [A-Za-z0-9._=+-] become '_'.
std::string folder_name(const std::vector<std::pair<std::string, std::string>>& values) {
  std::string name;
  for (const auto& [k, v] : values) {
    std::string part = k + "=" + v;
    for (char& c : part)
      if (!std::isalnum(static_cast<unsigned char>(c)) &&
          std::string_view("._=+-").find(c) == std::string_view::npos)
        c = '_';
    name += (name.empty() ? "" : "_") + part;
  }
  return name;
}

Recipe load_point_recipe(const std::string& path, const std::vector<std::string>& overrides,
                         const std::string& what) {
  try {
    return load_recipe(path, overrides);
  } catch (const Error& e) {
    throw Error(fmt::format("loom sweep: {}: {}", what, e.what()));
  }
}

std::string nearest_source(const std::string& name, const std::vector<std::string>& sources) {
  return recipe_detail::nearest_key(name, sources);
}

std::string resolve_source(const std::string& given, const std::string& option,
                           const std::vector<std::string>& sources) {
  if (std::find(sources.begin(), sources.end(), given) == sources.end())
    throw Error(
        fmt::format("loom sweep: {} {}: the recipe has no data source of that name; did "
                    "you mean \"{}\"? (sources: {})",
                    option, given, nearest_source(given, sources), recipe_detail::join(sources)));
  return given;
}

// Domain and general source names (sweep.h).
void resolve_domain_general(SweepPlan& plan, const SweepRequest& req) {
  const auto& sources = plan.source_names;
  std::vector<std::string> swept_mix;
  for (const SweepAxis& a : plan.axes)
    if (!mix_source(a.key).empty()) swept_mix.push_back(mix_source(a.key));
  if (!req.domain.empty()) {
    plan.domain = resolve_source(req.domain, "--domain", sources);
  } else if (swept_mix.size() == 1) {
    plan.domain = swept_mix.front();
  } else {
    throw Error(
        fmt::format("loom sweep: which source is the domain (x axis of the plot)? {} "
                    "mix.<source> is swept; pass --domain NAME (sources: {})",
                    swept_mix.empty() ? "No" : "More than one", recipe_detail::join(sources)));
  }
  if (!req.general.empty()) {
    plan.general = resolve_source(req.general, "--general", sources);
  } else if (sources.size() == 2) {
    plan.general = sources[0] == plan.domain ? sources[1] : sources[0];
  } else {
    throw Error(
        fmt::format("loom sweep: which source is the general corpus (y axis of the "
                    "plot)? The recipe has {} sources; pass --general NAME (sources: {})",
                    sources.size(), recipe_detail::join(sources)));
  }
  if (plan.domain == plan.general)
    throw Error(
        fmt::format("loom sweep: the domain and the general source are both \"{}\"; they "
                    "must be two different sources",
                    plan.domain));
}

// Sets plan.complement_* when the swept mix key is one of exactly two sources and the other's
// weight is not given.
void resolve_complement(SweepPlan& plan, const std::set<std::string>& fixed_keys,
                        const std::vector<std::string>& axis_texts) {
  if (plan.source_names.size() != 2) return;
  int mix_axes = 0;
  size_t axis = 0;
  for (size_t i = 0; i < plan.axes.size(); ++i)
    if (!mix_source(plan.axes[i].key).empty()) ++mix_axes, axis = i;
  if (mix_axes != 1) return;
  const std::string swept = mix_source(plan.axes[axis].key);
  const std::string other =
      plan.source_names[0] == swept ? plan.source_names[1] : plan.source_names[0];
  if (fixed_keys.count("mix." + other)) return;
  for (const std::string& v : plan.axes[axis].values) mix_share(v, axis_texts[axis], other);
  plan.complement_of = plan.axes[axis].key;
  plan.complement_key = "mix." + other;
}

std::string share_complement(const std::string& value) {
  return fmt::format("{:.12g}", 1.0 - std::strtod(value.c_str(), nullptr));
}

// The points in grid order (the last axis varies fastest).
void build_points(SweepPlan& plan) {
  std::vector<size_t> index(plan.axes.size(), 0);
  size_t total = 1;
  for (const SweepAxis& a : plan.axes) total *= a.values.size();
  std::set<std::string> names;
  for (size_t p = 0; p < total; ++p) {
    SweepPoint point;
    point.overrides = plan.fixed_overrides;
    std::string complement;  // the other source's share at this point
    for (size_t a = 0; a < plan.axes.size(); ++a) {
      const std::string& v = plan.axes[a].values[index[a]];
      point.values.emplace_back(plan.axes[a].key, v);
      point.overrides.push_back(plan.axes[a].key + "=" + v);
      if (plan.axes[a].key == plan.complement_of) complement = share_complement(v);
    }
    point.name = folder_name(point.values);
    if (!plan.complement_key.empty()) {
      point.values.emplace_back(plan.complement_key, complement);
      point.overrides.push_back(plan.complement_key + "=" + complement);
    }
    if (!names.insert(point.name).second)
      throw Error(
          fmt::format("loom sweep: two points get the run folder name \"{}\" (values that "
                      "differ only in characters a folder name cannot hold); change one",
                      point.name));
    point.dir = (fs::path(plan.sweep_dir) / point.name).string();
    point.overrides.push_back("output.dir=" + point.dir);
    point.recipe = load_point_recipe(plan.recipe_path, point.overrides,
                                     fmt::format("point {}/{} ({})", p + 1, total, point.name));
    plan.points.push_back(std::move(point));
    for (size_t a = plan.axes.size(); a-- > 0;) {  // odometer
      if (++index[a] < plan.axes[a].values.size()) break;
      index[a] = 0;
    }
  }
}

void check_eval_settings(const SweepPlan& plan) {
  for (const SweepPoint& p : plan.points) {
    if (p.recipe.eval.batches <= 0)
      throw Error(
          fmt::format("loom sweep: point {}: eval.batches is {}; a sweep compares "
                      "held-out perplexities, so set eval.batches to 1 or more",
                      p.name, p.recipe.eval.batches));
    if (!p.recipe.eval.at_start)
      throw Error(
          fmt::format("loom sweep: point {}: eval.at_start is false; a sweep compares "
                      "every run with the base model's step-0 eval, so set "
                      "eval.at_start=true",
                      p.name));
  }
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string first_difference(const std::string& a, const std::string& b) {
  std::istringstream x(a), y(b);
  std::string lx, ly;
  for (int line = 1;; ++line) {
    const bool gx = static_cast<bool>(std::getline(x, lx));
    const bool gy = static_cast<bool>(std::getline(y, ly));
    if (!gx && !gy) return "";
    if (!gx) lx = "(end)";
    if (!gy) ly = "(end)";
    if (lx != ly) return fmt::format("line {}: `{}` there, `{}` for this point", line, lx, ly);
  }
}

// -1 when not known before the run reads its data (train.epochs without train.steps).
int64_t steps_left(const SweepPoint& p, const SweepPointState& s) {
  if (s.kind != SweepPointState::Kind::Finished && p.recipe.train.steps <= 0) return -1;
  switch (s.kind) {
    case SweepPointState::Kind::Finished:
      return 0;
    case SweepPointState::Kind::Partial:
      return std::max<int64_t>(0, p.recipe.train.steps - s.checkpoint_step);
    case SweepPointState::Kind::New:
      return p.recipe.train.steps;
  }
  return 0;
}

// Seconds per step over the finished runs (load, evals and all), or < 0 when none finished.
double seconds_per_step(const SweepTable& t) {
  double seconds = 0;
  int64_t steps = 0;
  for (const RunOutcome& r : t.runs) {
    seconds += r.wall_seconds;
    steps += r.steps;
  }
  return steps > 0 ? seconds / static_cast<double>(steps) : -1;
}

std::string estimate_text(const SweepPlan& plan, const SweepTable& table) {
  int64_t left = 0;
  for (const SweepPoint& p : plan.points) {
    const int64_t n = steps_left(p, sweep_point_state(p));
    if (n < 0) return "unknown: a run's steps come from train.epochs and its data";
    left += n;
  }
  if (left == 0) return "nothing left to run";
  const double per_step = seconds_per_step(table);
  if (per_step < 0) return "unknown until the first run finishes";
  return fmt::format("about {} for {} steps left ({:.1f} s per step, from the {} finished run{})",
                     format_duration(per_step * static_cast<double>(left)), left, per_step,
                     table.runs.size(), table.runs.size() == 1 ? "" : "s");
}

std::string state_text(const SweepPointState& s) {
  switch (s.kind) {
    case SweepPointState::Kind::Finished:
      return "finished (summary.json): skipped";
    case SweepPointState::Kind::Partial:
      return fmt::format("resumes from step {}", s.checkpoint_step);
    case SweepPointState::Kind::New:
      return "new";
  }
  return "?";
}

struct Console {
  bool quiet = false;
  template <class... Args>
  void print(fmt::format_string<Args...> f, Args&&... args) const {
    if (quiet) return;
    fmt::print(f, std::forward<Args>(args)...);
    std::fflush(stdout);
  }
};

}  // namespace

std::vector<std::string> split_sweep_values(const std::string& argument, const std::string& value) {
  std::vector<std::string> items;
  std::string current;
  int depth = 0;
  char quote = 0;
  for (char c : value) {
    if (quote) {
      if (c == quote) quote = 0;
    } else if (c == '"' || c == '\'') {
      quote = c;
    } else if (c == '[' || c == '{') {
      ++depth;
    } else if (c == ']' || c == '}') {
      if (--depth < 0)
        throw Error(
            fmt::format("loom sweep: argument `{}`: `{}` closes a bracket that was not "
                        "opened",
                        argument, c));
    } else if (c == ',' && depth == 0) {
      items.push_back(trim(current));
      current.clear();
      continue;
    }
    current += c;
  }
  if (quote || depth != 0)
    throw Error(fmt::format("loom sweep: argument `{}`: unclosed {} in the value", argument,
                            quote ? "quote" : "bracket"));
  items.push_back(trim(current));
  if (items.size() > 1)
    for (size_t i = 0; i < items.size(); ++i)
      if (items[i].empty())
        throw Error(
            fmt::format("loom sweep: argument `{}`: value {} of the list is empty; write "
                        "key=v1,v2,... with a value between every two commas",
                        argument, i + 1));
  return items;
}

SweepPlan make_sweep_plan(const SweepRequest& req) {
  if (req.recipe_path.empty())
    throw Error(
        "loom sweep: no recipe given; pass recipes/<name>.yaml, then key=v1,v2,... to sweep");
  SweepPlan plan;
  plan.recipe_path = req.recipe_path;
  std::map<std::string, std::string> given;  // canonical key -> argument
  std::set<std::string> fixed_keys;
  std::vector<std::string> axis_texts;
  for (const std::string& text : req.assignments) {
    const Assignment a = parse_assignment(text);
    if (auto [it, inserted] = given.emplace(a.key, text); !inserted)
      throw Error(fmt::format("loom sweep: `{}` is given twice (`{}` and `{}`); keep one", a.key,
                              it->second, text));
    if (a.values.size() == 1) {
      plan.fixed_overrides.push_back(text);
      fixed_keys.insert(a.key);
      continue;
    }
    check_axis_values(a);
    plan.axes.push_back({a.key, a.values});
    axis_texts.push_back(text);
  }
  if (plan.axes.empty())
    throw Error(
        "loom sweep: nothing to sweep; give at least one key with a comma-separated list "
        "of values, e.g. mix.foldoc=0,0.15,0.5,1.0 (a single value is an ordinary "
        "override applied to every run)");

  // The recipe at the first values: its sources and output.dir (and early errors for keys).
  std::vector<std::string> probe_overrides = plan.fixed_overrides;
  for (const SweepAxis& a : plan.axes) probe_overrides.push_back(a.key + "=" + a.values.front());
  const Recipe probe = load_point_recipe(req.recipe_path, probe_overrides, "the recipe");
  for (const DataSourceRecipe& s : probe.data.sources) plan.source_names.push_back(s.name);

  resolve_complement(plan, fixed_keys, axis_texts);
  resolve_domain_general(plan, req);
  std::string dir = req.out_dir;
  if (dir.empty()) {
    dir = probe.output.dir;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    dir += "-sweep";
  }
  plan.sweep_dir = fs::path(dir).lexically_normal().string();
  build_points(plan);
  check_eval_settings(plan);
  return plan;
}

SweepPointState sweep_point_state(const SweepPoint& point) {
  const RunPaths paths = RunPaths::of(point.dir);
  if (fs::exists(paths.recipe)) {
    const std::string diff =
        first_difference(read_text(paths.recipe), recipe_to_yaml(point.recipe));
    if (!diff.empty())
      throw Error(fmt::format(
          "loom sweep: {} holds a run of a different recipe than point {} ({}); remove that "
          "folder to run the point afresh, or choose another sweep folder with --out",
          point.dir, point.name, diff));
  }
  SweepPointState s;
  if (fs::exists(paths.summary)) {
    s.kind = SweepPointState::Kind::Finished;
    return s;
  }
  const auto checkpoints = list_checkpoints(paths.checkpoints);
  if (!checkpoints.empty()) {
    s.kind = SweepPointState::Kind::Partial;
    s.checkpoint_step = checkpoints.back().first;
  }
  return s;
}

SweepTable collect_sweep_table(const SweepPlan& plan) {
  SweepTable t;
  std::string grid;
  for (const SweepAxis& a : plan.axes)
    grid += fmt::format(" {}={}", a.key, recipe_detail::join(a.values, ","));
  t.title = fmt::format("loom sweep {}{}", plan.recipe_path, grid);
  for (const SweepAxis& a : plan.axes) t.value_keys.push_back(a.key);
  if (!plan.complement_key.empty()) t.value_keys.push_back(plan.complement_key);
  t.swept_keys = static_cast<int>(plan.axes.size());
  t.domain = plan.domain;
  t.general = plan.general;
  t.sources = {plan.domain, plan.general};
  for (const std::string& s : plan.source_names)
    if (s != plan.domain && s != plan.general) t.sources.push_back(s);
  t.notes.push_back(fmt::format("Domain: {} (x axis of plot.svg); general: {} (y axis).",
                                plan.domain, plan.general));
  if (!plan.complement_key.empty())
    t.notes.push_back(fmt::format("{} = 1 - {} (a two-source mix: the shares add up to 1).",
                                  plan.complement_key, plan.complement_of));
  if (!plan.fixed_overrides.empty())
    t.notes.push_back(
        fmt::format("Applied to every run: {}.", recipe_detail::join(plan.fixed_overrides, " ")));
  t.notes.push_back(fmt::format("Run folders under {}/.", plan.sweep_dir));
  for (const SweepPoint& p : plan.points) {
    if (!fs::exists(RunPaths::of(p.dir).summary)) {
      const SweepPointState state = sweep_point_state(p);
      t.missing.push_back(
          fmt::format("{} ({})", p.name,
                      state.kind == SweepPointState::Kind::Partial
                          ? fmt::format("checkpoint at step {}", state.checkpoint_step)
                          : std::string("not started")));
      continue;
    }
    RunOutcome r = read_run_outcome(p.dir);
    r.name = p.name;
    r.values = p.values;
    t.runs.push_back(std::move(r));
  }
  return t;
}

std::string describe_sweep_plan(const SweepPlan& plan) {
  std::string out = fmt::format("loom sweep {}\n", plan.recipe_path);
  for (const SweepAxis& a : plan.axes)
    out += fmt::format("  swept:       {} = {} ({} values)\n", a.key,
                       recipe_detail::join(a.values, ", "), a.values.size());
  out += fmt::format(
      "  grid:        {} point{}{}\n", plan.points.size(), plan.points.size() == 1 ? "" : "s",
      plan.axes.size() > 1 ? " (every combination, the first key varying slowest)" : "");
  if (!plan.complement_key.empty())
    out += fmt::format(
        "  complement:  {} = 1 - {} (two sources: the shares add up to 1; a "
        "share of 0 trains nothing on that source, which is still evaluated)\n",
        plan.complement_key, plan.complement_of);
  else
    for (const SweepAxis& a : plan.axes)
      if (!mix_source(a.key).empty())
        out += fmt::format(
            "  note:        {} is a weight relative to the other sources' "
            "weights (no complement is set)\n",
            a.key);
  if (!plan.fixed_overrides.empty())
    out += fmt::format("  every run:   {}\n", recipe_detail::join(plan.fixed_overrides, " "));
  out +=
      fmt::format("  domain:      {} (x axis); general: {} (y axis)\n", plan.domain, plan.general);
  out += fmt::format("  folder:      {}\n", plan.sweep_dir);
  out += "  runs (one after another, in this process):\n";
  for (size_t i = 0; i < plan.points.size(); ++i) {
    const SweepPoint& p = plan.points[i];
    const TrainRecipe& t = p.recipe.train;
    std::string values;
    for (const auto& [k, v] : p.values)
      values += fmt::format("{}{}={}", values.empty() ? "" : " ", k, v);
    out += fmt::format(
        "    {}/{}  {}: {} x {} tokens, in {}: {}\n", i + 1, plan.points.size(), values,
        t.epochs > 0
            ? fmt::format("{} epoch{}{}", t.epochs, t.epochs == 1 ? "" : "s",
                          t.steps > 0 ? fmt::format(" (at most {} steps)", t.steps) : std::string())
            : fmt::format("{} steps", t.steps),
        t.batch_size * t.grad_accum * p.recipe.data.seq_len, p.dir,
        state_text(sweep_point_state(p)));
  }
  out += fmt::format("  estimate:    {}\n", estimate_text(plan, collect_sweep_table(plan)));
  out += fmt::format(
      "  results:     {0}/results.csv, {0}/results.md, {0}/plot.svg (rewritten "
      "after every run)\n",
      plan.sweep_dir);
  return out;
}

SweepOutcome run_sweep(const SweepPlan& plan, const SweepOptions& options) {
  const Console out{options.quiet};
  out.print("{}", describe_sweep_plan(plan));
  fs::create_directories(plan.sweep_dir);
  SweepOutcome outcome;
  auto write_results = [&] {
    outcome.table = collect_sweep_table(plan);
    const auto paths = write_sweep_results(outcome.table, plan.sweep_dir);
    outcome.results_csv = paths[0];
    outcome.results_md = paths[1];
    outcome.plot_svg = paths[2];
  };
  write_results();
  const double t_start = now_seconds();
  const size_t n = plan.points.size();
  for (size_t i = 0; i < n; ++i) {
    const SweepPoint& p = plan.points[i];
    const SweepPointState state = sweep_point_state(p);
    if (state.kind == SweepPointState::Kind::Finished) {
      ++outcome.skipped;
      out.print("sweep {}/{}: {} finished earlier (summary.json): skipped\n", i + 1, n, p.name);
      continue;
    }
    out.print("\nsweep {}/{}: {}{}\n", i + 1, n, p.name,
              state.kind == SweepPointState::Kind::Partial
                  ? fmt::format(" (resuming from step {})", state.checkpoint_step)
                  : "");
    TrainOptions train_options;
    train_options.resume = true;  // from the latest checkpoint when there is one
    train_options.quiet = options.quiet;
    train_options.after_step = options.after_step;
    const double t0 = now_seconds();
    TrainResult r;
    try {
      r = train_recipe_file(plan.recipe_path, p.overrides, train_options);
    } catch (const Interrupted&) {
      write_results();
      throw;  // Ctrl-C during the run's export: the caller's exit code for a signal
    } catch (const Error& e) {
      write_results();  // names the points after this one (and this one, if unfinished)
      if (fs::exists(RunPaths::of(p.dir).summary))  // the run finished; what came after failed
        throw Error(
            fmt::format("sweep {}/{}: {} trained, then failed: {}\nThe run is complete "
                        "in {} (make its exports with `loom export {}`); the results of "
                        "the finished runs are in {}",
                        i + 1, n, p.name, e.what(), p.dir, p.dir, outcome.results_md));
      throw Error(
          fmt::format("sweep {}/{}: {} failed: {}\nThe results of the finished runs are "
                      "in {}; fix the cause and run the same `loom sweep` command again "
                      "(finished runs are skipped)",
                      i + 1, n, p.name, e.what(), outcome.results_md));
    }
    ++outcome.ran;
    write_results();
    if (r.interrupted_by != 0) {
      outcome.interrupted_by = r.interrupted_by;
      out.print(
          "sweep {}/{}: {} interrupted at step {}; run the same `loom sweep` command again "
          "to continue (finished runs are skipped, this one resumes from its checkpoint)\n",
          i + 1, n, p.name, r.steps_done);
      return outcome;
    }
    out.print("sweep {}/{}: {} done in {}; {} of {} runs finished, {} elapsed; {}\n", i + 1, n,
              p.name, format_duration(now_seconds() - t0), outcome.table.runs.size(), n,
              format_duration(now_seconds() - t_start), estimate_text(plan, outcome.table));
  }
  for (const RunOutcome& r : outcome.table.runs)
    if (r.stopped) outcome.stopped.push_back(fmt::format("{}: {}", r.name, r.stop_reason));
  out.print("\n{}\n", sweep_results_markdown(outcome.table));
  out.print("results:       {}\n               {}\n               {}\n", outcome.results_csv,
            outcome.results_md, outcome.plot_svg);
  return outcome;
}

}  // namespace loom
