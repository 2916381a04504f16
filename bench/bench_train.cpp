// The LoRA training step of SmolLM2-135M (models/SmolLM2-135M-Instruct.Q4_1.gguf): LoRA r=16,
// alpha 32, on all seven projections, batch 4 x 512 random tokens, all threads, with the frozen
// base stored as f32, bf16 or NF4 (QLoRA), beside a PyTorch CPU reference of the same model
// shape and adapters (scripts/bench_train_torch.py, f32 and bf16 autocast) when the repo's
// .venv has torch. Each configuration runs in its own child process, so its peak RSS (VmHWM) is
// its own. Prints tokens/s, peak RSS and a per-phase breakdown of loom's step (forward + loss,
// backward, clip + AdamW), then the ratios, and for each loom configuration the share of its
// GEMM ceiling it reaches: the step's GEMM work per token against oneDNN's matmul rate probed in
// the same child (bf16, or f32 on a CPU without AVX512_BF16, where loom's step runs f32): a
// figure that carries across machines. Results: bench/README.md.
//
//   bench_train [--model PATH] [--steps N] [--batch B] [--seq T] [--configs f32,bf16,nf4]
//               [--no-torch] [--torch f32,bf16] [--no-checkpoint] [--no-keep-attention]
//               [--rounds R]
//
// tokens/s is B*T over the median timed step (a 2-vCPU machine shared with other work has steps
// 20-40% slower than others now and then); the best step is printed beside it. --rounds R runs
// the whole set of children R times, interleaved (loom, PyTorch, loom, PyTorch, ...), and pools
// each configuration's steps: the machine's drift over minutes then reaches loom and PyTorch
// alike instead of whichever ran during a slow spell.
#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <oneapi/dnnl/dnnl.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/kernels/cpu.h"
#include "autograd/kernels/gemm.h"
#include "autograd/tape.h"
#include "layers/llama.h"
#include "lora/lora_model.h"
#include "trainer/clip.h"
#include "trainer/metrics.h"
#include "trainer/optimizer.h"

namespace {

using loom::Tensor;

struct Args {
  std::string model = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  int steps = 3;
  int64_t batch = 4, seq = 512;
  std::vector<std::string> configs = {"f32", "bf16", "nf4"};
  bool torch = true;
  std::vector<std::string> torch_precisions = {"f32", "bf16"};  // --torch: which references
  bool checkpoint = true;  // loom's activation checkpointing (--no-checkpoint: off, to measure)
  // model.keep_attention (--no-keep-attention: off, the recompute runs attention and q/k/v again
  // for less memory)
  bool keep_attention = true;
  int rounds = 1;          // times the whole set of children runs, interleaved
  std::string child;  // run one loom configuration and print its JSON line
};

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double rss_mb() { return static_cast<double>(loom::rss_bytes()) / 1048576.0; }

// The step's frozen-weight and attention GEMM work per token (the rank-r LoRA products are not
// counted): the projections' forward and input gradient (and their recompute with
// checkpointing, less the down projection's, whose output the recompute skips, and with bf16
// attention products and keep_attention less q/k/v's, whose outputs attention keeps), the LM
// head's forward and input gradient (computed in the chunked loss), and causal attention
// (forward: 2 products over T/2 keys on average, backward: 5; the recompute takes the forward's
// output with keep_attention, else runs the forward again).
double step_gemm_flops_per_token(const loom::ModelConfig& c, int64_t seq, bool checkpoint,
                                 bool bf16_attention, bool keep_attention) {
  const double D = static_cast<double>(c.hidden_size), I = static_cast<double>(c.intermediate_size);
  const double q = static_cast<double>(c.q_dim()), kv = static_cast<double>(c.kv_dim());
  const double qkv = D * q + 2 * D * kv;
  const double block = qkv + q * D + 3 * D * I, down = I * D;
  const double recompute =
      2 * block - 2 * down - (bf16_attention && keep_attention ? 2 * qkv : 0.0);
  const double proj = 2 * block + 2 * block + (checkpoint ? recompute : 0.0);
  const double head = 4.0 * static_cast<double>(c.vocab_size) * D;
  const double attn_fwd = 2.0 * static_cast<double>(seq) * q;
  const double attn = attn_fwd * (1.0 + 2.5 + (checkpoint && !keep_attention ? 1.0 : 0.0));
  return static_cast<double>(c.n_layers) * (proj + attn) + head;
}

// GFLOP/s of oneDNN's matmul here and now, on a block's widest shape (M tokens, the hidden size
// to the SwiGLU width), best of 5 after a warm-up: bf16 where the CPU has AVX512_BF16 (the
// route loom's step takes there), else f32 (loom's step runs f32 there too).
struct GemmProbe {
  double gflops = 0;
  const char* what = "";
};
GemmProbe probe_gemm_gflops(int64_t M, int64_t K, int64_t N) {
  std::vector<float> c(static_cast<size_t>(M * N));
  std::function<void()> call;
  GemmProbe probe;
  std::vector<uint16_t> a16, b16;
  std::vector<float> a32, b32;
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  if (loom::cpu_has_avx512_bf16()) {
    probe.what = "oneDNN bf16";
    a16.assign(static_cast<size_t>(M * K), 0x3f80);
    b16.assign(static_cast<size_t>(N * K), 0x3c00);
    call = [&] { loom::gemm_bf16(M, N, K, 1.0f, a16.data(), K, 1, b16.data(), 1, K, c.data(), N, false); };
  } else {
    probe.what = "oneDNN f32";
    using dnnl::memory;
    a32.assign(static_cast<size_t>(M * K), 1.0f);
    b32.assign(static_cast<size_t>(N * K), 0.5f);
    const auto f32 = memory::data_type::f32;
    const memory::desc ad({M, K}, f32, memory::dims{K, 1}), bd({K, N}, f32, memory::dims{1, K}),
        cd({M, N}, f32, memory::dims{N, 1});
    dnnl::matmul mm(dnnl::matmul::primitive_desc(dnnl::matmul::desc(ad, bd, cd), engine));
    memory am(ad, engine, a32.data()), bm(bd, engine, b32.data()), cm(cd, engine, c.data());
    call = [&, mm, am, bm, cm]() mutable {
      mm.execute(stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
      stream.wait();
    };
  }
  double best = 1e30;
  for (int r = 0; r < 6; ++r) {
    const double t0 = now();
    call();
    if (r > 0) best = std::min(best, now() - t0);
  }
  probe.gflops = 2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K) / best / 1e9;
  return probe;
}

nlohmann::json run_child(const Args& a) {
  loom::LlamaModel model = loom::LlamaModel::load(a.model);
  const double rss_loaded = rss_mb();
  loom::LoraConfig cfg;
  cfg.rank = 16;
  cfg.alpha = 32;
  cfg.targets.modules = {"all-linear"};
  cfg.base_dtype = loom::parse_base_dtype(a.child);
  const double t_convert = now();
  loom::LoraModel lora(model, cfg);
  const double convert_s = now() - t_convert;
  const double rss_converted = rss_mb(), hwm_converted = loom::peak_rss_bytes() / 1048576.0;
  loom::NamedTensors params;
  for (const auto& p : lora.parameters()) params.push_back({p.name, p.tensor});
  loom::AdamW opt(params, loom::AdamWConfig{});
  std::mt19937 rng(7);
  std::vector<int32_t> ids(a.batch * a.seq), targets(ids.size());
  for (auto& x : ids) x = static_cast<int32_t>(rng() % model.config().vocab_size);
  for (size_t i = 0; i < ids.size(); ++i)
    targets[i] = (i + 1) % a.seq == 0 ? -100 : ids[i + 1];
  loom::TokenBatch tb;
  tb.ids = ids;
  tb.batch = a.batch;
  tb.seq_len = a.seq;
  loom::ForwardOptions fwd;  // checkpointing on, precision auto: the training defaults
  fwd.checkpoint_blocks = a.checkpoint;
  fwd.keep_attention = a.keep_attention;
  fwd.attention_precision = fwd.precision;  // as the trainer's step (trainer/train_session.cpp)
  double fwd_s = 0, bwd_s = 0, opt_s = 0, rss_forward = 0;
  std::vector<double> steps, losses;  // losses: every step's, warm-up included (a same-bits check)
  for (int s = 0; s <= a.steps; ++s) {  // step 0 warms up
    const double t0 = now();
    lora.zero_grad();
    const Tensor hidden = model.forward_hidden(tb, fwd);
    const loom::CrossEntropyResult ce = model.loss(hidden, targets);
    const double t1 = now();
    if (s == 0) rss_forward = rss_mb();
    ce.loss.backward();
    const double t2 = now();
    losses.push_back(ce.loss.item());
    loom::clip_grad_norm(params, 1.0);
    opt.step(1e-4);
    const double t3 = now();
    if (s == 0) continue;
    fwd_s += t1 - t0;
    bwd_s += t2 - t1;
    opt_s += t3 - t2;
    steps.push_back(t3 - t0);
  }
  const GemmProbe gemm = probe_gemm_gflops(a.batch * a.seq, model.config().hidden_size,
                                            model.config().intermediate_size);
  double total = 0;
  for (double x : steps) total += x;
  const double tokens = static_cast<double>(a.batch * a.seq) * steps.size();
  return {{"config", "loom-" + a.child + (a.checkpoint ? "" : " (no checkpointing)") +
                         (a.checkpoint && !a.keep_attention ? " (attention not kept)" : "")},
          {"tokens_per_second", tokens / total},
          {"peak_rss_mb", loom::peak_rss_bytes() / 1048576.0},
          {"step_seconds", steps},
          {"losses", losses},
          {"forward_loss_s", fwd_s / steps.size()},
          {"backward_s", bwd_s / steps.size()},
          {"optimizer_s", opt_s / steps.size()},
          {"convert_s", convert_s},
          {"rss_mb_loaded", rss_loaded},
          {"rss_mb_converted", rss_converted},
          {"peak_rss_mb_converted", hwm_converted},
          {"rss_mb_after_forward", rss_forward},
          {"threads", loom::num_threads()},
          {"gemm_mflop_per_token",
           step_gemm_flops_per_token(
               model.config(), a.seq, a.checkpoint,
               loom::resolve_precision(fwd.attention_precision) == loom::Precision::BF16,
               a.keep_attention) /
               1e6},
          {"gemm_probe_gflops", gemm.gflops},
          {"gemm_probe", gemm.what}};
}

// Runs argv in a child process and returns the last line of its stdout parsed as JSON (null on
// failure or exit 77).
nlohmann::json run_json_child(const std::vector<std::string>& argv) {
  int fds[2];
  if (pipe(fds) != 0) return nullptr;
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    std::vector<char*> cargv;
    for (const auto& s : argv) cargv.push_back(const_cast<char*>(s.c_str()));
    cargv.push_back(nullptr);
    execv(cargv[0], cargv.data());
    _exit(127);
  }
  close(fds[1]);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, n);
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fmt::print(stderr, "bench_train: {} exited with {}\n", argv[0],
               WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return nullptr;
  }
  std::istringstream in(out);
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty() && line[0] == '{') last = line;
  return last.empty() ? nlohmann::json() : nlohmann::json::parse(last);
}

}  // namespace

int run(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(k + " needs a value");
      return argv[++i];
    };
    if (k == "--model") a.model = next();
    else if (k == "--steps") a.steps = std::stoi(next());
    else if (k == "--batch") a.batch = std::stoll(next());
    else if (k == "--seq") a.seq = std::stoll(next());
    else if (k == "--no-torch") a.torch = false;
    else if (k == "--torch") {
      a.torch_precisions.clear();
      std::stringstream ss(next());
      for (std::string c; std::getline(ss, c, ',');) a.torch_precisions.push_back(c);
    }
    else if (k == "--no-checkpoint") a.checkpoint = false;
    else if (k == "--no-keep-attention")
      a.keep_attention = false;
    else if (k == "--rounds") a.rounds = std::max(1, std::stoi(next()));
    else if (k == "--child") a.child = next();
    else if (k == "--configs") {
      a.configs.clear();
      std::stringstream ss(next());
      for (std::string c; std::getline(ss, c, ',');) a.configs.push_back(c);
    } else {
      fmt::print(stderr, "bench_train: unknown argument {}\n", k);
      return 2;
    }
  }
  if (!a.child.empty()) {
    fmt::print("{}\n", run_child(a).dump());
    return 0;
  }
  // Children (loom and PyTorch alike, both on libgomp) inherit the OpenMP wait setting loom runs
  // with: GOMP_SPINCOUNT=10000 unless the caller set GOMP_SPINCOUNT or OMP_WAIT_POLICY
  // (autograd/kernels/cpu.h says why).
  auto env_or = [](const char* name) {
    const char* v = std::getenv(name);
    return std::string(v ? v : "unset");
  };
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  fmt::print("bench_train: {} , LoRA r=16 on all 7 projections, B={} T={}, {} threads, {} timed "
             "steps after 1 warm-up{}, GOMP_SPINCOUNT={} OMP_WAIT_POLICY={}\n",
             a.model, a.batch, a.seq, loom::num_threads(), a.steps,
             a.rounds > 1 ? fmt::format(", {} interleaved rounds (steps pooled)", a.rounds) : "",
             env_or("GOMP_SPINCOUNT"), env_or("OMP_WAIT_POLICY"));
  const std::string py = ".venv/bin/python3";
  const bool torch =
      a.torch && std::filesystem::exists(py) && std::filesystem::exists("scripts/bench_train_torch.py");
  if (a.torch && !torch)
    fmt::print("PyTorch reference: SKIPPED (no .venv/bin/python3 or scripts/bench_train_torch.py; "
               "run from the repository root after scripts/setup_python.sh)\n");
  const bool torch_bf16_asked = std::find(a.torch_precisions.begin(), a.torch_precisions.end(),
                                          "bf16") != a.torch_precisions.end();
  if (torch && torch_bf16_asked && !loom::cpu_has_avx512_bf16())
    fmt::print("note: this CPU has no AVX512_BF16; PyTorch's bf16 autocast has no native kernels "
               "here (on a Zen 3 its warm-up and 2 steps took over 18 minutes); `--torch f32` skips it\n");
  std::fflush(stdout);
  // One row per configuration, in first-run order; later rounds pool their steps into it.
  std::vector<nlohmann::json> rows;
  auto pool = [&](nlohmann::json r) {
    if (r.is_null()) return;
    // One line per child as it ends, so a long or interrupted run still shows what it measured.
    std::vector<double> steps = r["step_seconds"].get<std::vector<double>>();
    fmt::print("  {}: steps {} s, peak RSS {:.0f} MB\n", r["config"].get<std::string>(),
               [&] {
                 std::string out;
                 for (double x : steps) out += (out.empty() ? "" : ", ") + fmt::format("{:.2f}", x);
                 return out;
               }(),
               r["peak_rss_mb"].get<double>());
    std::fflush(stdout);
    for (auto& row : rows) {
      if (row["config"] != r["config"]) continue;
      for (double s : r["step_seconds"]) row["step_seconds"].push_back(s);
      row["peak_rss_mb"] = std::max(row["peak_rss_mb"].get<double>(), r["peak_rss_mb"].get<double>());
      row["rounds"] = row.value("rounds", 1) + 1;
      if (r.contains("gemm_probe_gflops"))  // the machine's best moment over the rounds
        row["gemm_probe_gflops"] =
            std::max(row["gemm_probe_gflops"].get<double>(), r["gemm_probe_gflops"].get<double>());
      for (const char* k : {"forward_loss_s", "backward_s", "optimizer_s"})  // running mean
        if (row.contains(k))
          row[k] = row[k].get<double>() +
                   (r[k].get<double>() - row[k].get<double>()) / row["rounds"].get<double>();
      return;
    }
    rows.push_back(std::move(r));
  };
  for (int round = 0; round < a.rounds; ++round) {
    for (const std::string& c : a.configs) {
      std::vector<std::string> argv = {self, "--child", c, "--model", a.model, "--steps",
                                       std::to_string(a.steps), "--batch", std::to_string(a.batch),
                                       "--seq", std::to_string(a.seq)};
      if (!a.checkpoint) argv.push_back("--no-checkpoint");
      if (!a.keep_attention) argv.push_back("--no-keep-attention");
      pool(run_json_child(argv));
    }
    if (!torch) continue;
    for (const std::string& prec : a.torch_precisions)
      pool(run_json_child({py, "scripts/bench_train_torch.py", "--precision", prec, "--batch",
                           std::to_string(a.batch), "--seq", std::to_string(a.seq), "--steps",
                           std::to_string(a.steps), "--threads",
                           std::to_string(loom::num_threads())}));
  }
  // tokens/s of the median and of the best step, loom and PyTorch alike.
  const double tokens = static_cast<double>(a.batch * a.seq);
  auto step_rate = [&](const nlohmann::json& r, bool best) {
    std::vector<double> s = r["step_seconds"].get<std::vector<double>>();
    std::sort(s.begin(), s.end());
    if (s.empty()) return 0.0;
    const size_t n = s.size();
    return tokens / (best ? s.front() : n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]));
  };
  double torch_bf16 = 0, torch_f32 = 0;
  for (const auto& r : rows) {
    if (r["config"] == "torch-bf16") torch_bf16 = step_rate(r, false);
    if (r["config"] == "torch-f32") torch_f32 = step_rate(r, false);
  }
  auto ratio = [](double x, double ref) {
    return ref > 0 ? fmt::format("{:.2f}x", x / ref) : std::string("-");
  };
  fmt::print("\n| config | tokens/s (median step) | best step | peak RSS (MB) | vs torch bf16 | vs torch f32 | forward+loss s | backward s | optimizer s |\n");
  fmt::print("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const auto& r : rows) {
    const double tps = step_rate(r, false);
    auto phase = [&](const char* k) {
      return r.contains(k) ? fmt::format("{:.2f}", r[k].get<double>()) : std::string("-");
    };
    fmt::print("| {} | {:.1f} | {:.1f} | {:.0f} | {} | {} | {} | {} | {} |\n",
               r["config"].get<std::string>(), tps, step_rate(r, true),
               r["peak_rss_mb"].get<double>(), ratio(tps, torch_bf16), ratio(tps, torch_f32),
               phase("forward_loss_s"), phase("backward_s"), phase("optimizer_s"));
  }
  // How close each loom step comes to what its GEMMs alone would allow at the rate oneDNN
  // reached in that child: a figure that carries across machines, unlike tokens/s.
  bool header = false;
  for (const auto& r : rows) {
    if (!r.contains("gemm_mflop_per_token") || r["gemm_probe_gflops"].get<double>() <= 0) continue;
    if (!header) {
      fmt::print("\n| config | GEMM work MFLOP/token | probe | GFLOP/s (probe) | GEMM ceiling "
                 "tokens/s | median step, share of the ceiling |\n|---|---:|---|---:|---:|---:|\n");
      header = true;
    }
    const double mflop = r["gemm_mflop_per_token"].get<double>();
    const double rate = r["gemm_probe_gflops"].get<double>();
    const double ceiling = rate * 1e3 / mflop;
    fmt::print("| {} | {:.0f} | {} matmul | {:.0f} | {:.0f} | {:.0f}% |\n",
               r["config"].get<std::string>(), mflop, r["gemm_probe"].get<std::string>(), rate,
               ceiling, 100.0 * step_rate(r, false) / ceiling);
  }
  if (header)
    fmt::print("(GEMM work: frozen-weight projections, LM head and causal attention products, "
               "forward, input gradient and recompute; the LoRA products not counted)\n");
  fmt::print("\ntargets: loom >= 4x torch bf16 tokens/s; peak RSS <= 1024 MB with the NF4 base\n");
  return 0;
}

int main(int argc, char** argv) {
  loom::ensure_blas_coretype(argc, argv);
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr,
                 "bench_train: error: %s (paths are relative to the repository root: run "
                 "it from there)\n",
                 e.what());
    return 1;
  }
}
