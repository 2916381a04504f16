// Metrics JSONL and the console progress line (metrics.h).
#include "trainer/metrics.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>

#include "autograd/check.h"

namespace loom {

MetricsWriter::MetricsWriter(std::string path, bool truncate) : path_(std::move(path)) {
  const std::filesystem::path parent = std::filesystem::path(path_).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  out_.open(path_, truncate ? std::ios::trunc : std::ios::app);
  if (!out_) throw Error(fmt::format("cannot open the metrics file {} for writing", path_));
}

void MetricsWriter::write(const nlohmann::json& record) {
  // nlohmann writes NaN/Inf as null; invalid UTF-8 in strings is replaced, not thrown on.
  out_ << record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
  out_.flush();
  if (!out_) throw Error(fmt::format("writing to the metrics file {} failed (disk full?)", path_));
}

namespace {

// A "Key:   123 kB" line of /proc/self/status, in bytes; 0 when absent.
int64_t status_bytes(const std::string& key) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(key, 0) == 0) return std::stoll(line.substr(key.size())) * 1024;  // kB
  }
  return 0;
}

}  // namespace

int64_t peak_rss_bytes() { return status_bytes("VmHWM:"); }
int64_t rss_bytes() { return status_bytes("VmRSS:"); }

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(std::llround(seconds));
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
}

std::string format_progress(const ProgressSnapshot& s, bool bar) {
  std::string drawn;
  if (bar && s.total_steps > 0) {
    constexpr int64_t kWidth = 20;
    const int64_t step = std::clamp<int64_t>(s.step, 0, s.total_steps);
    const int64_t filled = step * kWidth / s.total_steps;
    std::string cells(kWidth, '.');
    for (int64_t i = 0; i < filled; ++i) cells[static_cast<size_t>(i)] = '=';
    if (filled < kWidth) cells[static_cast<size_t>(filled)] = '>';
    drawn = fmt::format(" [{}] {:3d}%", cells, step * 100 / s.total_steps);
  }
  return fmt::format("step {}/{}{}  loss {:.4f}  lr {:.2e}{}  {:.0f} tok/s{}  ETA {}", s.step,
                     s.total_steps, drawn, s.loss, s.lr,
                     s.grad_norm < 0 ? std::string() : fmt::format("  gnorm {:.3g}", s.grad_norm),
                     s.tokens_per_second,
                     s.rss_mb < 0 ? std::string() : fmt::format("  RSS {:.0f} MB", s.rss_mb),
                     s.eta_seconds < 0 ? std::string("?") : format_duration(s.eta_seconds));
}

ProgressLine::ProgressLine(int64_t total_steps, int64_t start_step, int64_t print_every,
                           std::FILE* out, std::optional<bool> is_tty, Clock clock)
    : total_steps_(total_steps),
      start_step_(start_step),
      print_every_(print_every),
      out_(out),
      tty_(is_tty.value_or(::isatty(::fileno(out)) != 0)),
      clock_(clock ? std::move(clock) : Clock([] {
        return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
            .count();
      })),
      start_time_(clock_()) {
  LOOM_CHECK(print_every >= 1, "progress: print_every must be >= 1, found {}", print_every);
  last_.step = start_step;
  last_.total_steps = total_steps;
}

void ProgressLine::emit(const std::string& text) {
  if (tty_) {
    // Pad over the rest of a longer previous line.
    std::string line = text;
    if (line.size() < line_width_) line.append(line_width_ - line.size(), ' ');
    std::fprintf(out_, "\r%s", line.c_str());
    line_width_ = text.size();
  } else {
    std::fprintf(out_, "%s\n", text.c_str());
  }
  std::fflush(out_);
}

void ProgressLine::update(int64_t step, double loss, double lr, int64_t tokens, double grad_norm,
                          double rss_mb) {
  tokens_ += tokens;
  last_.grad_norm = grad_norm;
  last_.rss_mb = rss_mb;
  const double elapsed = clock_() - start_time_ - excluded_;
  const int64_t done = step - start_step_;
  last_.step = step;
  last_.loss = loss;
  last_.lr = lr;
  last_.tokens_per_second = elapsed > 0 ? static_cast<double>(tokens_) / elapsed : 0.0;
  last_.eta_seconds = done > 0 && elapsed > 0
                          ? elapsed / static_cast<double>(done) *
                                static_cast<double>(std::max<int64_t>(0, total_steps_ - step))
                          : -1.0;
  const bool due = step == start_step_ + 1 || step % print_every_ == 0 || step >= total_steps_;
  if (tty_ || due) emit(format_progress(last_, tty_));
}

void ProgressLine::message(const std::string& line) {
  if (tty_ && line_width_ > 0) {
    std::fprintf(out_, "\r%s\r", std::string(line_width_, ' ').c_str());
    line_width_ = 0;
    std::fprintf(out_, "%s\n", line.c_str());
    emit(format_progress(last_, true));
    return;
  }
  std::fprintf(out_, "%s\n", line.c_str());
  std::fflush(out_);
}

void ProgressLine::finish() {
  if (tty_ && line_width_ > 0) {
    std::fprintf(out_, "\n");
    std::fflush(out_);
    line_width_ = 0;
  }
}

}  // namespace loom
