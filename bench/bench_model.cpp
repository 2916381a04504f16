// Model benchmark on SmolLM2-135M-Instruct (Q4_1 GGUF):
//   1. the training path: forward + backward tokens/s and peak RSS at B=4, T=512, activation
//      checkpointing on, the loss through cross_entropy_chunked. The embeddings are made leaves
//      that require a gradient, so backward runs through every block (the base is frozen; this is
//      the work a LoRA step does, without the adapters' own small products and optimizer);
//   2. `loom eval`'s path: perplexity tokens/s over non-overlapping windows of 512 tokens
//      (llama.cpp's scoring), in f32 (eval's default) and bf16 products;
//   3. llama.cpp's perplexity throughput on the same text and windows, through
//      scripts/make_llamacpp_golden.py --perplexity-only (llama-cpp-python, 2 threads), when the
//      repo's .venv has llama_cpp.
// The text is Debian's /usr/share/common-licenses GPL-3, GPL-2, Apache-2.0, MPL-2.0 and LGPL-2.1
// joined by blank lines (~24k tokens), the text the llama.cpp parity test uses.
// Usage: bench_model [--model PATH] [--steps N] [--eval-windows N] [--no-llamacpp] [--quick]
// Results and how they were taken: bench/README.md ("Model: training step and eval").
#include <fmt/format.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/check.h"
#include "autograd/kernels/cpu.h"
#include "autograd/tape.h"
#include "layers/gguf.h"
#include "layers/inference.h"
#include "layers/tokenizer.h"

namespace {

using namespace loom;
namespace fs = std::filesystem;

// The repo root: this file is <root>/bench/bench_model.cpp (CMake compiles it by absolute path).
fs::path source_dir() { return fs::path(__FILE__).parent_path().parent_path(); }

struct Options {
  std::string model = (source_dir() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf").string();
  int steps = 3;
  int64_t batch = 4, seq = 512;
  int64_t eval_windows = 0;  // 0: all
  bool llamacpp = true;
};

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

std::string license_text() {
  std::string text;
  for (const char* name : {"GPL-3", "GPL-2", "Apache-2.0", "MPL-2.0", "LGPL-2.1"}) {
    const std::string path = std::string("/usr/share/common-licenses/") + name;
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(fmt::format("bench_model: cannot read {} (Debian base-files)", path));
    std::ostringstream ss;
    ss << in.rdbuf();
    if (!text.empty()) text += "\n\n";
    text += ss.str();
  }
  return text;
}

void bench_training(const LlamaModel& model, const std::vector<int32_t>& text_ids, const Options& o) {
  const int64_t n = o.batch * o.seq;
  LOOM_CHECK(static_cast<int64_t>(text_ids.size()) > n, "bench_model: the text has {} tokens, need {}",
             text_ids.size(), n + 1);
  const std::vector<int32_t> ids(text_ids.begin(), text_ids.begin() + n);
  const std::vector<int32_t> targets(text_ids.begin() + 1, text_ids.begin() + n + 1);
  TokenBatch batch;
  batch.ids = ids;
  batch.batch = o.batch;
  batch.seq_len = o.seq;
  fmt::print("training path: B={} T={} ({} tokens/step), checkpointing on, cross_entropy_chunked, "
             "embeddings require grad; 1 warm-up + {} timed steps\n",
             o.batch, o.seq, n, o.steps);
  double best = 1e30, total = 0;
  float loss = 0;
  for (int step = 0; step <= o.steps; ++step) {
    const double t0 = now();
    Tensor x = model.embed(batch).detach();
    x.set_requires_grad(true);
    ForwardOptions fwd;  // checkpoint_blocks = true, precision Auto
    const Tensor hidden = model.forward_from_embeddings(x, batch, fwd);
    const CrossEntropyResult ce = model.loss(hidden, targets);
    ce.loss.backward();
    LOOM_CHECK(x.grad().defined(), "bench_model: no gradient reached the embeddings");
    const double dt = now() - t0;
    loss = ce.loss.item();
    fmt::print("  step {}{}: {:.2f} s, {:.1f} tokens/s, loss {:.4f}\n", step,
               step == 0 ? " (warm-up)" : "", dt, n / dt, loss);
    std::fflush(stdout);
    if (step > 0) {
      best = std::min(best, dt);
      total += dt;
    }
  }
  fmt::print("training path: {:.1f} tokens/s (mean of {} steps), best {:.1f}; peak RSS {:.0f} MB; "
             "load average {}\n",
             n * o.steps / total, o.steps, n / best, peak_rss_mb(), load_average());
}

PerplexityResult bench_eval(const LlamaModel& model, const std::vector<int32_t>& ids, const Options& o,
                            Precision precision, const char* label) {
  PerplexityOptions p;
  p.ctx = 512;
  p.batch = 4;
  p.max_windows = o.eval_windows;
  p.precision = precision;
  fmt::print("eval ({}): {} windows of {}, scoring second-half, {} windows per forward\n", label,
             perplexity_windows(static_cast<int64_t>(ids.size()), p), p.ctx, p.batch);
  std::fflush(stdout);
  const PerplexityResult r = evaluate_perplexity(model, ids, p);
  fmt::print("eval ({}): perplexity {:.4f}, {} tokens in {:.1f} s: {:.1f} tokens/s; load average {}\n",
             label, r.perplexity(), r.tokens_evaluated, r.seconds, r.tokens_per_second(), load_average());
  return r;
}

void bench_llamacpp(const std::string& text, const Options& o) {
  const fs::path python = source_dir() / ".venv" / "bin" / "python3";
  const fs::path script = source_dir() / "scripts" / "make_llamacpp_golden.py";
  if (!fs::exists(python)) {
    fmt::print("llama.cpp: SKIPPED (no {}; run scripts/setup_python.sh)\n", python.string());
    return;
  }
  const fs::path text_file = fs::temp_directory_path() / fmt::format("loom_bench_text_{}.txt", getpid());
  std::ofstream(text_file, std::ios::binary) << text;
  const std::string cmd = fmt::format("'{}' '{}' --perplexity-only --text '{}' --ctx 512 2>/dev/null",
                                      python.string(), script.string(), text_file.string());
  fmt::print("llama.cpp: {}\n", cmd);
  std::fflush(stdout);
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  while (p && std::fgets(buf, sizeof buf, p)) out += buf;
  const int rc = p ? pclose(p) : -1;
  fs::remove(text_file);
  if (rc != 0 || out.empty()) {
    fmt::print("llama.cpp: SKIPPED (the script exited with {}: llama_cpp not importable?)\n", rc);
    return;
  }
  fmt::print("llama.cpp: {}", out);
  (void)o;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw Error(fmt::format("bench_model: {} needs a value", a));
      return argv[++i];
    };
    if (a == "--model") o.model = value();
    else if (a == "--steps") o.steps = std::stoi(value());
    else if (a == "--eval-windows") o.eval_windows = std::stoll(value());
    else if (a == "--no-llamacpp") o.llamacpp = false;
    else if (a == "--quick") {
      o.steps = 1;
      o.eval_windows = 4;
      o.llamacpp = false;
    } else
      throw Error(fmt::format("bench_model: unknown option '{}' (--model PATH, --steps N, "
                              "--eval-windows N, --no-llamacpp, --quick)",
                              a));
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  // libgomp's default wait policy spins idle threads, which on a shared 2-core machine starves
  // the threads doing the work (bench/README.md); the policy is read when libgomp loads, so set
  // it and start again, as bench_train does for its children.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);
    std::perror("bench_model: re-exec with OMP_WAIT_POLICY=passive failed");
  }
  ensure_blas_coretype(argc, argv);
  try {
    const Options o = parse(argc, argv);
    if (!fs::exists(o.model)) {
      fmt::print(stderr, "bench_model: SKIPPED: {} is missing (scripts/fetch_models.sh)\n", o.model);
      return 0;
    }
    fmt::print("bench_model: {}\ncpu: {}; threads {}; OMP_WAIT_POLICY={}\n", o.model, cpu_summary(),
               num_threads(), std::getenv("OMP_WAIT_POLICY"));
    const GgufFile file = GgufFile::open(o.model);
    const LlamaModel model = LlamaModel::from_gguf(file);
    const auto tok = load_tokenizer(file);
    const std::string text = license_text();
    const std::vector<int32_t> ids = tok->encode(text, false, false);
    fmt::print("text: common-licenses, {} bytes, {} tokens; RSS after loading {:.0f} MB\n", text.size(),
               ids.size(), peak_rss_mb());
    bench_training(model, ids, o);
    bench_eval(model, ids, o, Precision::F32, "f32");
    bench_eval(model, ids, o, Precision::Auto, resolve_precision(Precision::Auto) == Precision::BF16
                                                   ? "bf16"
                                                   : "auto = f32 on this CPU");
    if (o.llamacpp) bench_llamacpp(text, o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_model: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
