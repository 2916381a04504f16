// What a run reports as it goes: a JSONL metrics file (one JSON object per line, flushed after
// each, appended to on resume) and the console progress line (step/total, loss, lr, tokens/s,
// ETA) -- rewritten in place with '\r' when stderr is a terminal, a plain line every N steps
// otherwise (logs, CI).
#pragma once

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace loom {

class MetricsWriter {
 public:
  // Opens `path` for appending (creating it and its directory); `truncate` starts it afresh.
  explicit MetricsWriter(std::string path, bool truncate = false);
  // Writes `record` as one line and flushes. Non-finite numbers are written as null (JSON has
  // no NaN). Throws if the line cannot be written (disk full).
  void write(const nlohmann::json& record);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ofstream out_;
};

// Peak resident set size of this process in bytes (VmHWM), 0 where unknown.
int64_t peak_rss_bytes();
// Resident set size now, in bytes (VmRSS), 0 where unknown.
int64_t rss_bytes();

// "45s", "12m03s", "2h05m"; "?" for a negative or non-finite duration.
std::string format_duration(double seconds);

struct ProgressSnapshot {
  int64_t step = 0;  // steps completed
  int64_t total_steps = 0;
  double loss = 0;
  double lr = 0;
  double tokens_per_second = 0;
  double eta_seconds = -1;  // < 0: unknown yet
  double grad_norm = -1;    // global gradient norm before clipping; < 0: not shown
  double rss_mb = -1;       // resident memory now; < 0: not shown
};
// "step 120/1000  loss 2.3456  lr 1.80e-04  gnorm 0.812  1234 tok/s  RSS 560 MB  ETA 12m03s"
// With `bar` (a terminal), "step 10/40 [=====>...............]  25%  loss ...".
std::string format_progress(const ProgressSnapshot& s, bool bar = false);

class ProgressLine {
 public:
  using Clock = std::function<double()>;  // seconds, monotonic
  // `start_step` is where this process began (after a resume), so rates and ETA count only the
  // steps it ran. `is_tty` defaults to whether `out` is a terminal; `clock` to steady_clock.
  ProgressLine(int64_t total_steps, int64_t start_step, int64_t print_every,
               std::FILE* out = stderr, std::optional<bool> is_tty = std::nullopt,
               Clock clock = {});
  // After step `step` completed, having trained on `tokens` tokens in it.
  void update(int64_t step, double loss, double lr, int64_t tokens, double grad_norm = -1,
              double rss_mb = -1);
  // Leaves `seconds` of other work (an evaluation, a checkpoint) out of tokens/s and the ETA.
  void exclude_time(double seconds) { excluded_ += seconds; }
  // Prints a whole line (an eval result, a warning) without garbling the progress line.
  void message(const std::string& line);
  // Ends an in-place line with a newline.
  void finish();

  ProgressSnapshot snapshot() const { return last_; }

 private:
  void emit(const std::string& text);

  int64_t total_steps_;
  int64_t start_step_;
  int64_t print_every_;
  std::FILE* out_;
  bool tty_;
  Clock clock_;
  double start_time_;
  double excluded_ = 0;
  int64_t tokens_ = 0;
  size_t line_width_ = 0;  // of the in-place line now shown (0: none)
  ProgressSnapshot last_;
};

}  // namespace loom
