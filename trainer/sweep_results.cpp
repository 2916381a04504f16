// A sweep's results (sweep_results.h): run summaries read back, the CSV and Markdown tables,
// the plot.
#include "trainer/sweep_results.h"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "autograd/check.h"
#include "trainer/metrics.h"
#include "trainer/recipe_fields.h"
#include "trainer/run_dir.h"

namespace loom {

namespace fs = std::filesystem;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// A number from the summary; JSON null (how a NaN is written) reads as NaN.
double number_at(const nlohmann::json& j, const std::string& key, const std::string& path,
                 const std::string& where) {
  if (!j.contains(key))
    throw Error(
        fmt::format("{}: {} has no \"{}\"; expected a loom run summary (summary.json "
                    "written by `loom train`)",
                    path, where, key));
  const nlohmann::json& v = j.at(key);
  if (v.is_null()) return kNaN;
  if (!v.is_number())
    throw Error(fmt::format("{}: {}.{}: expected a number, found {}", path, where, key, v.dump()));
  return v.get<double>();
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(fmt::format("{}: cannot open (no such file or not readable)", path));
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    throw Error(fmt::format("{}: not a JSON object; expected a loom run summary", path));
  return j;
}

// Perplexity of the eval `phase` ("before" / "after") of one source; NaN when not evaluated.
double perplexity_of(const nlohmann::json& source, const char* phase, const std::string& path,
                     const std::string& where) {
  if (!source.contains(phase)) return kNaN;
  return number_at(source.at(phase), "perplexity", path, where + "." + phase);
}

std::string csv_cell(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::string csv_number(double v) {
  return std::isfinite(v) ? fmt::format("{}", v) : "";
}
std::string csv_count(int64_t v) {
  return v >= 0 ? fmt::format("{}", v) : "";
}

std::string md_cell(const std::string& s) {
  std::string out;
  for (char c : s) out += c == '|' ? std::string("\\|") : std::string(1, c);
  return out;
}

std::string md_ppl(double v) {
  return std::isfinite(v) ? fmt::format("{:.2f}", v) : "n/a";
}

std::string md_gain(const SourceOutcome& s) {
  if (!std::isfinite(s.gain())) return "n/a";
  return fmt::format("{:+.2f} ({:+.1f}%)", s.gain(), s.gain_percent());
}

std::string md_tokens(int64_t v) {
  if (v < 0) return "n/a";
  // 1234567 -> "1,234,567"
  std::string digits = fmt::format("{}", v), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string value_of(const RunOutcome& run, const std::string& key) {
  for (const auto& [k, v] : run.values)
    if (k == key) return v;
  return "";
}

// "mix.foldoc=0.15": the swept values of a run (the complement left out: it follows).
std::string point_label(const RunOutcome& run, int swept_keys) {
  std::string label;
  for (size_t i = 0; i < run.values.size() && i < static_cast<size_t>(swept_keys); ++i)
    label +=
        fmt::format("{}{}={}", label.empty() ? "" : " ", run.values[i].first, run.values[i].second);
  return label;
}

SourceOutcome outcome_or_empty(const RunOutcome& run, const std::string& name) {
  const SourceOutcome* s = run.source(name);
  if (s) return *s;
  SourceOutcome empty;
  empty.name = name;
  return empty;
}

// Base numbers of the domain and general sources are the same in every run (same model, same
// held-out documents) unless a swept key changes them.
bool bases_agree(const SweepTable& t) {
  const RunOutcome& first = t.runs.front();
  for (const RunOutcome& r : t.runs)
    for (const std::string& name : {t.domain, t.general}) {
      const double a = outcome_or_empty(first, name).base_perplexity;
      const double b = outcome_or_empty(r, name).base_perplexity;
      if (!(std::abs(a - b) <= 1e-9 * std::max(1.0, std::abs(a)))) return false;
    }
  return true;
}

}  // namespace

const SourceOutcome* RunOutcome::source(const std::string& name) const {
  for (const SourceOutcome& s : sources)
    if (s.name == name) return &s;
  return nullptr;
}

RunOutcome read_run_outcome(const std::string& run_dir) {
  const RunPaths paths = RunPaths::of(run_dir);
  const nlohmann::json j = read_json(paths.summary);
  RunOutcome r;
  r.dir = run_dir;
  r.name = fs::path(run_dir).filename().string();
  if (!j.contains("eval") || !j.at("eval").is_object())
    throw Error(
        fmt::format("{}: no \"eval\" object (per-source perplexities); expected a loom "
                    "run summary",
                    paths.summary));
  for (const auto& [name, e] : j.at("eval").items()) {
    if (!e.is_object())
      throw Error(fmt::format("{}: eval.{}: expected an object with before/after, found {}",
                              paths.summary, name, e.dump()));
    SourceOutcome s;
    s.name = name;
    s.base_perplexity = perplexity_of(e, "before", paths.summary, "eval." + name);
    s.final_perplexity = perplexity_of(e, "after", paths.summary, "eval." + name);
    if (j.contains("delivered") && j.at("delivered").contains(name))
      s.train_tokens = static_cast<int64_t>(
          number_at(j.at("delivered").at(name), "tokens", paths.summary, "delivered." + name));
    r.sources.push_back(std::move(s));
  }
  r.steps = static_cast<int64_t>(number_at(j, "steps", paths.summary, "the summary"));
  r.wall_seconds = number_at(j, "wall_seconds", paths.summary, "the summary");
  r.tokens_per_second = number_at(j, "tokens_per_second", paths.summary, "the summary");
  r.stopped = j.value("stopped", false);
  r.stop_reason = j.value("stop_reason", "");
  return r;
}

std::string sweep_results_csv(const SweepTable& t) {
  std::vector<std::string> header = t.value_keys;
  for (const std::string& s : t.sources)
    for (const char* col : {"base_ppl", "final_ppl", "gain", "gain_pct", "train_tokens"})
      header.push_back(s + "_" + col);
  for (const char* col : {"steps", "wall_seconds", "tokens_per_second", "stopped", "run_dir"})
    header.emplace_back(col);
  std::string out;
  auto line = [&](const std::vector<std::string>& cells) {
    for (size_t i = 0; i < cells.size(); ++i) {
      if (i > 0) out += ',';
      out += csv_cell(cells[i]);
    }
    out += "\n";
  };
  line(header);
  for (const RunOutcome& r : t.runs) {
    std::vector<std::string> cells;
    for (const std::string& k : t.value_keys) cells.push_back(value_of(r, k));
    for (const std::string& name : t.sources) {
      const SourceOutcome s = outcome_or_empty(r, name);
      cells.push_back(csv_number(s.base_perplexity));
      cells.push_back(csv_number(s.final_perplexity));
      cells.push_back(csv_number(s.gain()));
      cells.push_back(csv_number(s.gain_percent()));
      cells.push_back(csv_count(s.train_tokens));
    }
    cells.push_back(fmt::format("{}", r.steps));
    cells.push_back(csv_number(r.wall_seconds));
    cells.push_back(csv_number(r.tokens_per_second));
    cells.push_back(r.stopped ? "true" : "false");
    cells.push_back(r.dir);
    line(cells);
  }
  return out;
}

std::string sweep_results_markdown(const SweepTable& t) {
  std::string out = fmt::format("# {}\n\n", t.title);
  for (const std::string& note : t.notes) out += fmt::format("- {}\n", note);
  out += fmt::format(
      "- Perplexity: held-out documents of each source, before training (base, step 0) and "
      "after; gain = base - final (positive is better), % of the base. Train tokens: what the "
      "run delivered from each source.\n\n");
  std::string missing;
  if (!t.missing.empty())
    missing = fmt::format(
        "\nNot finished ({} of {} points; run the same `loom sweep` command again to continue "
        "them): {}.\n",
        t.missing.size(), t.missing.size() + t.runs.size(), recipe_detail::join(t.missing, ", "));
  if (t.runs.empty()) return out + "No run has finished yet.\n" + missing;

  std::vector<std::string> header = t.value_keys;
  for (const std::string& s : t.sources) {
    header.push_back(s + " base");
    header.push_back(s + " final");
    header.push_back(s + " gain");
  }
  for (const std::string& s : t.sources) header.push_back(s + " train tokens");
  header.emplace_back("steps");
  header.emplace_back("wall");
  std::string row = "|", rule = "|";
  for (const std::string& h : header) {
    row += fmt::format(" {} |", md_cell(h));
    rule += "---|";
  }
  out += row + "\n" + rule + "\n";
  for (const RunOutcome& r : t.runs) {
    row = "|";
    for (const std::string& k : t.value_keys) row += fmt::format(" {} |", md_cell(value_of(r, k)));
    for (const std::string& name : t.sources) {
      const SourceOutcome s = outcome_or_empty(r, name);
      row += fmt::format(" {} | {} | {} |", md_ppl(s.base_perplexity), md_ppl(s.final_perplexity),
                         md_gain(s));
    }
    for (const std::string& name : t.sources)
      row += fmt::format(" {} |", md_tokens(outcome_or_empty(r, name).train_tokens));
    row += fmt::format(" {}{} | {} |", r.steps, r.stopped ? " (stopped)" : "",
                       format_duration(r.wall_seconds));
    out += row + "\n";
  }
  out += "\n";
  if (bases_agree(t)) {
    const RunOutcome& first = t.runs.front();
    std::string base;
    for (const std::string& name : t.sources)
      base += fmt::format("{}{} {}", base.empty() ? "" : ", ", name,
                          md_ppl(outcome_or_empty(first, name).base_perplexity));
    out += fmt::format("Base model (every run's step-0 eval agrees): {}.\n", base);
  } else {
    out +=
        "The runs' base (step-0) perplexities differ: a swept key changes the model or the "
        "held-out documents, so compare each run with its own base.\n";
  }
  for (const RunOutcome& r : t.runs)
    if (r.stopped) out += fmt::format("\nStopped early: {}: {}\n", r.name, r.stop_reason);
  return out + missing;
}

ScatterPlot sweep_plot(const SweepTable& t) {
  ScatterPlot plot;
  plot.title = fmt::format("held-out perplexity: {} (domain) vs {} (general)", t.domain, t.general);
  plot.subtitle = t.title + " -- lower is better on both axes";
  plot.x_label = fmt::format("{} perplexity (domain)", t.domain);
  plot.y_label = fmt::format("{} perplexity (general)", t.general);
  const bool one_base = !t.runs.empty() && bases_agree(t);
  for (const RunOutcome& r : t.runs) {
    const SourceOutcome d = outcome_or_empty(r, t.domain), g = outcome_or_empty(r, t.general);
    if (!one_base || &r == &t.runs.front())
      plot.points.push_back(
          {d.base_perplexity, g.base_perplexity,
           one_base ? "base model" : "base (" + point_label(r, t.swept_keys) + ")", true});
  }
  for (const RunOutcome& r : t.runs) {
    const SourceOutcome d = outcome_or_empty(r, t.domain), g = outcome_or_empty(r, t.general);
    plot.points.push_back(
        {d.final_perplexity, g.final_perplexity, point_label(r, t.swept_keys), false});
  }
  // A line through the runs reads as a trade-off curve only when one thing varies.
  plot.connect = t.swept_keys == 1;
  return plot;
}

std::vector<std::string> write_sweep_results(const SweepTable& t, const std::string& dir) {
  const fs::path d(dir);
  const std::string csv = (d / "results.csv").string(), md = (d / "results.md").string();
  write_file_atomic(csv, sweep_results_csv(t));
  write_file_atomic(md, sweep_results_markdown(t));
  std::string svg;
  if (!t.runs.empty()) {
    svg = (d / "plot.svg").string();
    write_file_atomic(svg, render_scatter_svg(sweep_plot(t)));
  }
  return {csv, md, svg};
}

}  // namespace loom
