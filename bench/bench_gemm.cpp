// GEMM benchmark: GFLOP/s of loom's linear-layer products, Y = X.W^T (forward) and dX = dY.W
// (input gradient), for SmolLM2-135M's weight shapes at M = 2048 tokens and each frozen-weight
// storage dtype, side by side with references measured in the same run:
//   - plain OpenBLAS cblas_sgemm (its own 2 pthreads) in child processes -- this program re-runs
//     itself with --blas-child and LOOM_NO_REEXEC=1 and parses the output -- with
//       * the environment loom was started with (here OPENBLAS_CORETYPE=Haswell is inherited),
//       * no OPENBLAS_CORETYPE at all (OpenBLAS' own detection),
//       * OPENBLAS_CORETYPE=SkylakeX;
//     a child also keeps OpenBLAS' threads away from this process' OpenMP threads;
//   - oneDNN's bf16 matmul called directly on pre-rounded bf16 operands.
//
// The machine may be shared, so each figure is the best of several rounds spread over the whole
// run (a round times every row of every shape once, children included); each timing window waits
// until other processes are quiet, and a window in which they used more than 10% of a core (from
// /proc/stat minus our own CPU time) is retried and, if still disturbed, not counted. Rows with
// no clean window are marked.
// Usage: bench_gemm [--quick]   (--quick: M=256, two shapes, two rounds, for CI smoke runs)
// Results and how they were taken: bench/README.md.
#include <cblas.h>
#include <fmt/format.h>
#include <oneapi/dnnl/dnnl.hpp>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "autograd/check.h"
#include "autograd/kernels/cpu.h"
#include "autograd/kernels/gemm.h"
#include "autograd/quant/quant.h"

namespace {

using namespace loom;

struct Shape {
  int64_t K, N;
};

struct Options {
  bool quick = false;
  bool blas_child = false;
  int64_t M = 2048;
  std::vector<Shape> shapes;
  int rounds = 5;
  double window_seconds = 0.2;  // one timing window: repeated calls, at least one
  int attempts = 3;             // windows tried per row, product and round until one is clean
  double max_quiet_wait = 10;   // seconds to wait for other processes to go quiet before a window
  double quiet_budget = 900;    // ... and in all; past it, windows are timed without waiting
};

Options parse(int argc, char** argv) {
  Options o;
  std::optional<double> child_budget;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") o.quick = true;
    else if (a == "--blas-child") o.blas_child = true;
    else if (a == "--quiet-budget" && i + 1 < argc) child_budget = std::atof(argv[++i]);  // internal
    else throw Error(fmt::format("bench_gemm: unknown argument '{}'; expected --quick", a));
  }
  if (o.quick) {
    o.M = 256;
    o.shapes = {{576, 576}, {576, 1536}};
    o.rounds = 2;
    o.window_seconds = 0.02;
    o.attempts = 1;
    o.max_quiet_wait = 0;
    o.quiet_budget = 0;
  } else {
    o.shapes = {{576, 576}, {576, 192}, {576, 1536}, {1536, 576}, {576, 49152}};
  }
  if (child_budget) o.quiet_budget = *child_budget;  // what the parent has left
  return o;
}

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double gflop(const Options& o, const Shape& s) {
  return 2.0 * double(o.M) * double(s.N) * double(s.K) / 1e9;
}

// Busy CPU seconds of the whole machine (incl. steal: our vCPU not running) and of this process.
struct CpuClock {
  double machine = 0, own = 0;
};

CpuClock cpu_clock() {
  CpuClock c;
  std::ifstream stat("/proc/stat");
  std::string cpu;
  long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0,
            steal = 0;
  stat >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
  c.machine = double(user + nice + system + irq + softirq + steal) / double(sysconf(_SC_CLK_TCK));
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  c.own = double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
          1e-6 * double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
  return c;
}

struct Windows {
  long clean = 0, discarded = 0;
  double waited = 0;  // seconds spent waiting for quiet
};
Windows g_windows;

// Best time of one product so far, from clean windows (and from any, as a fallback).
struct Best {
  double clean = 1e30, any = 1e30;
  bool has_clean() const { return clean < 1e30; }
  double seconds() const { return has_clean() ? clean : any; }
};

// CPU seconds other processes used over the interval between two clocks.
double foreign_seconds(const CpuClock& c0, const CpuClock& c1) {
  return (c1.machine - c0.machine) - (c1.own - c0.own);
}

// Sleeps in 0.25 s steps until other processes use under 5% of a core (at most max_quiet_wait
// per window and quiet_budget per process): measuring while another program computes only produces windows to discard, and a
// preempted OpenMP thread makes the whole team wait (slowdowns of 10-50x were seen).
void wait_for_quiet(const Options& o) {
  const double start = now();
  while (now() - start < o.max_quiet_wait && g_windows.waited < o.quiet_budget) {
    const CpuClock c0 = cpu_clock();
    usleep(250000);
    g_windows.waited += 0.25;
    if (foreign_seconds(c0, cpu_clock()) <= 0.05 * 0.25 + 1e-9) return;
  }
}

void time_window(const Options& o, const std::function<void()>& fn, Best& best) {
  for (int attempt = 0; attempt < o.attempts; ++attempt) {
    wait_for_quiet(o);
    const CpuClock c0 = cpu_clock();
    const double start = now();
    double fastest = 1e30;
    do {
      const double t0 = now();
      fn();
      fastest = std::min(fastest, now() - t0);
    } while (now() - start < o.window_seconds);
    const double wall = now() - start;
    const CpuClock c1 = cpu_clock();
    const double foreign = foreign_seconds(c0, c1);
    best.any = std::min(best.any, fastest);
    // /proc/stat counts in clock ticks (10 ms): allow two of them on short windows.
    if (foreign <= std::max(0.1 * wall, 0.02)) {
      best.clean = std::min(best.clean, fastest);
      ++g_windows.clean;
      return;
    }
    ++g_windows.discarded;
  }
}

struct Pair {
  double fwd = 0, bwd = 0;  // GFLOP/s
  bool clean = true;        // both from undisturbed windows
};

// One benchmark row: its two products and their best times so far.
struct Row {
  Row(std::string l, std::function<void()> f, std::function<void()> b)
      : label(std::move(l)), fwd(std::move(f)), bwd(std::move(b)) {}
  std::string label;
  std::function<void()> fwd, bwd;
  Best best_fwd, best_bwd;
  void warm_up() {
    fwd();
    bwd();
  }
  void time_round(const Options& o) {
    time_window(o, fwd, best_fwd);
    time_window(o, bwd, best_bwd);
  }
  Pair rate(const Options& o, const Shape& s) const {
    return {gflop(o, s) / best_fwd.seconds(), gflop(o, s) / best_bwd.seconds(),
            best_fwd.has_clean() && best_bwd.has_clean()};
  }
};

// Deterministic values in [-scale, scale) (xorshift; the distribution does not matter here).
std::vector<float> random_vector(int64_t n, float scale, uint64_t seed) {
  std::vector<float> v(static_cast<size_t>(n));
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (float& f : v) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    f = scale * (float(x >> 40) / float(1 << 23) - 1.0f);
  }
  return v;
}

// Buffers for one shape: activations and gradients in f32, the master weight in f32.
struct Operands {
  std::vector<float> X, Y, dY, dX, W;
};

Operands make_operands(const Options& o, const Shape& s) {
  Operands op;
  op.X = random_vector(o.M * s.K, 1.0f, 1);
  op.dY = random_vector(o.M * s.N, 1.0f, 2);
  op.W = random_vector(s.N * s.K, 0.05f, 3);
  op.Y.resize(static_cast<size_t>(o.M * s.N));
  op.dX.resize(static_cast<size_t>(o.M * s.K));
  return op;
}

// Plain OpenBLAS as any program would call it (not loom::sgemm, which splits over OpenMP).
Row blas_row(const Options& o, const Shape& s, Operands& op) {
  const int M = static_cast<int>(o.M), N = static_cast<int>(s.N), K = static_cast<int>(s.K);
  return {"OpenBLAS",
          [&op, M, N, K] {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, op.X.data(), K,
                        op.W.data(), K, 0.0f, op.Y.data(), N);
          },
          [&op, M, N, K] {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, N, 1.0f, op.dY.data(),
                        N, op.W.data(), K, 0.0f, op.dX.data(), K);
          }};
}

// oneDNN's bf16 matmul on operands already rounded to bf16 (conversion not timed): the ceiling
// the loom bf16 route is built on. A CPU without AVX512_BF16 has no bf16 route (oneDNN 2.6 has no
// bf16 matmul for it either), so there the reference is oneDNN's f32 matmul on the f32 operands.
struct OnednnOperands {
  std::vector<bf16_t> X, dY, W;
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
};

std::function<void()> onednn_call(OnednnOperands& d, dnnl::memory::desc a, dnnl::memory::desc b,
                                  dnnl::memory::desc c, void* pa, void* pb, float* pc) {
  dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), d.engine);
  dnnl::matmul mm(pd);
  dnnl::memory ma(a, d.engine, pa), mb(b, d.engine, pb), mc(c, d.engine, pc);
  dnnl::stream strm = d.stream;
  return [=]() mutable {
    mm.execute(strm, {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}});
    strm.wait();
  };
}

Row onednn_row(const Options& o, const Shape& s, Operands& op, OnednnOperands& d) {
  using dnnl::memory;
  const int64_t M = o.M, N = s.N, K = s.K;
  const bool bf16 = cpu_has_avx512_bf16();
  const memory::data_type in = bf16 ? memory::data_type::bf16 : memory::data_type::f32;
  const memory::data_type out = memory::data_type::f32;
  void *x = op.X.data(), *dy = op.dY.data(), *w = op.W.data();
  if (bf16) {
    d.X.resize(op.X.size());
    d.dY.resize(op.dY.size());
    d.W.resize(op.W.size());
    convert_f32_to_bf16(op.X.data(), d.X.data(), int64_t(d.X.size()));
    convert_f32_to_bf16(op.dY.data(), d.dY.data(), int64_t(d.dY.size()));
    convert_f32_to_bf16(op.W.data(), d.W.data(), int64_t(d.W.size()));
    x = d.X.data();
    dy = d.dY.data();
    w = d.W.data();
  }
  return {bf16 ? "oneDNN bf16 matmul" : "oneDNN f32 matmul",
          onednn_call(d, memory::desc({M, K}, in, memory::dims{K, 1}),
                      memory::desc({K, N}, in, memory::dims{1, K}),
                      memory::desc({M, N}, out, memory::dims{N, 1}), x, w, op.Y.data()),
          onednn_call(d, memory::desc({M, N}, in, memory::dims{N, 1}),
                      memory::desc({N, K}, in, memory::dims{K, 1}),
                      memory::desc({M, K}, out, memory::dims{K, 1}), dy, w, op.dX.data())};
}

struct LoomWeight {
  std::string label;
  DType dtype;
  Precision precision;
  std::vector<uint8_t> bytes;
};

Row loom_row(const Options& o, const Shape& s, Operands& op, const LoomWeight& lw) {
  const WeightView w{lw.dtype, lw.bytes.data(), s.N, s.K};
  const int64_t M = o.M;
  const Precision p = lw.precision;
  return {lw.label,
          [&op, w, M, s, p] {
            linear_forward(op.X.data(), M, s.K, w, op.Y.data(), s.N, false, p);
          },
          [&op, w, M, s, p] {
            linear_backward_input(op.dY.data(), M, s.N, w, op.dX.data(), s.K, false, p);
          }};
}

// --blas-child: one round of plain OpenBLAS (whatever core it picked) over the shapes, one
// parsable line per shape, then the window counts.
int run_blas_child(const Options& o) {
  for (const Shape& s : o.shapes) {
    Operands op = make_operands(o, s);
    Row row = blas_row(o, s, op);
    row.warm_up();
    row.time_round(o);
    std::printf("BLAS %lld %lld %.9g %d %.9g %d %s\n", static_cast<long long>(s.K),
                static_cast<long long>(s.N), row.best_fwd.seconds(), int(row.best_fwd.has_clean()),
                row.best_bwd.seconds(), int(row.best_bwd.has_clean()), blas_core_name().c_str());
    std::fflush(stdout);
  }
  std::printf("WINDOWS %ld %ld %.2f\n", g_windows.clean, g_windows.discarded, g_windows.waited);
  return 0;
}

// One OpenBLAS reference: how its child is started and its best times per shape.
struct Reference {
  Reference(std::string l, std::optional<std::string> c) : label(std::move(l)), coretype(std::move(c)) {}
  std::string label;
  std::optional<std::string> coretype;  // OPENBLAS_CORETYPE for the child; nullopt: unset
  std::string core = "?";               // what OpenBLAS reported
  std::map<std::pair<int64_t, int64_t>, std::pair<Best, Best>> best;  // fwd, bwd seconds

  Pair rate(const Options& o, const Shape& s) const {
    const auto& [f, b] = best.at({s.K, s.N});
    return {gflop(o, s) / f.seconds(), gflop(o, s) / b.seconds(), f.has_clean() && b.has_clean()};
  }
};

void merge(Best& best, double seconds, bool clean) {
  best.any = std::min(best.any, seconds);
  if (clean) best.clean = std::min(best.clean, seconds);
}

// Runs one round of this program as a --blas-child and merges its times into ref.
void run_blas_child_round(const Options& o, Reference& ref) {
  char exe[4096];
  const ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (len <= 0) throw Error("bench_gemm: cannot read /proc/self/exe to start the BLAS child");
  exe[len] = '\0';
  const std::string env = ref.coretype ? fmt::format("OPENBLAS_CORETYPE='{}'", *ref.coretype)
                                       : std::string("-u OPENBLAS_CORETYPE");
  const std::string cmd =
      fmt::format("env {} LOOM_NO_REEXEC=1 '{}' --blas-child{} --quiet-budget {:.2f}", env, exe,
                  o.quick ? " --quick" : "", std::max(0.0, o.quiet_budget - g_windows.waited));
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) throw Error(fmt::format("bench_gemm: could not start '{}'", cmd));
  size_t shapes = 0;
  char line[512];
  while (std::fgets(line, sizeof(line), pipe)) {
    long long K = 0, N = 0;
    double f = 0, b = 0;
    int f_clean = 0, b_clean = 0;
    long clean = 0, discarded = 0;
    double waited = 0;
    char core[64] = {0};
    if (std::sscanf(line, "BLAS %lld %lld %lf %d %lf %d %63s", &K, &N, &f, &f_clean, &b,
                    &b_clean, core) == 7) {
      auto& [bf, bb] = ref.best[{K, N}];
      merge(bf, f, f_clean);
      merge(bb, b, b_clean);
      ref.core = core;
      ++shapes;
    } else if (std::sscanf(line, "WINDOWS %ld %ld %lf", &clean, &discarded, &waited) == 3) {
      g_windows.clean += clean;
      g_windows.discarded += discarded;
      g_windows.waited += waited;
    }
  }
  const int status = pclose(pipe);
  if (status != 0 || shapes != o.shapes.size())
    throw Error(fmt::format("bench_gemm: BLAS child '{}' exited with status {} after {} of {} "
                            "shapes",
                            cmd, status, shapes, o.shapes.size()));
}

// The OpenBLAS references: as started (before ensure_blas_coretype), OpenBLAS' own detection,
// and SkylakeX. The first is "default", the last "SkylakeX".
std::vector<Reference> blas_references() {
  // ensure_blas_coretype keeps the value it replaced; without a re-exec the environment is as
  // started.
  std::optional<std::string> started;
  if (const char* kept = std::getenv("LOOM_INHERITED_OPENBLAS_CORETYPE")) {
    if (kept[0] != '\0') started = kept;
  } else if (const char* now_set = std::getenv("OPENBLAS_CORETYPE")) {
    started = now_set;
  }
  std::vector<Reference> refs;
  if (started)
    refs.push_back({fmt::format("OpenBLAS, inherited OPENBLAS_CORETYPE={}", *started), started});
  refs.push_back({"OpenBLAS, own detection", std::nullopt});
  // SkylakeX kernels need AVX-512; elsewhere OpenBLAS' own choice is the last reference.
  const CpuFeatures& f = cpu_features();
  if (f.avx512f && f.avx512bw && f.avx512vl)
    refs.push_back({"OpenBLAS, SkylakeX", std::string("SkylakeX")});
  return refs;
}

std::string ratios(const Pair& p, const Pair& ref) {
  return fmt::format("{:.2f} / {:.2f}", p.fwd / ref.fwd, p.bwd / ref.bwd);
}

// Sums of seconds over the shapes, per row label, in first-seen order.
struct Totals {
  std::vector<std::string> order;
  std::map<std::string, std::pair<double, double>> seconds;
  double gflop = 0;  // per product, all shapes
  void add(const std::string& label, double shape_gflop, const Pair& p) {
    if (!seconds.count(label)) order.push_back(label);
    seconds[label].first += shape_gflop / p.fwd;
    seconds[label].second += shape_gflop / p.bwd;
  }
  double both(const std::string& label) const {
    const auto& t = seconds.at(label);
    return 2 * gflop / (t.first + t.second);
  }
};

const char* verdict(bool met) { return met ? "met" : "NOT met"; }

// Everything one shape needs across the rounds (rows point into it: never moved).
struct ShapeState {
  Shape s;
  Operands op;
  OnednnOperands dnn;
  std::vector<LoomWeight> weights;
  std::vector<Row> rows;
};

int run(const Options& o) {
  const bool bf16_cpu = cpu_has_avx512_bf16();
  const std::vector<std::pair<std::string, std::pair<DType, Precision>>> loom_rows = {
      {"loom f32 W, Precision::F32", {DType::F32, Precision::F32}},
      {bf16_cpu ? "loom f32 W, Auto (bf16)" : "loom f32 W, Auto (f32 here)",
       {DType::F32, Precision::Auto}},
      {"loom bf16 W", {DType::BF16, Precision::Auto}},
      {"loom nf4 W", {DType::NF4, Precision::Auto}},
      {"loom q4_0 W", {DType::Q4_0, Precision::Auto}},
      {"loom q4_k W", {DType::Q4_K, Precision::Auto}},
      {"loom q8_0 W", {DType::Q8_0, Precision::Auto}},
  };
  std::vector<std::unique_ptr<ShapeState>> states;
  for (const Shape& s : o.shapes) {
    auto st = std::make_unique<ShapeState>();
    st->s = s;
    st->op = make_operands(o, s);
    st->weights.reserve(loom_rows.size());
    for (const auto& [label, dp] : loom_rows)
      st->weights.push_back(
          {label, dp.first, dp.second, quantize(dp.first, st->op.W.data(), s.N * s.K)});
    st->rows.push_back(onednn_row(o, s, st->op, st->dnn));
    for (const LoomWeight& lw : st->weights) st->rows.push_back(loom_row(o, s, st->op, lw));
    for (Row& r : st->rows) r.warm_up();
    states.push_back(std::move(st));
  }
  std::vector<Reference> refs = blas_references();
  for (int round = 0; round < o.rounds; ++round) {
    for (Reference& ref : refs) run_blas_child_round(o, ref);
    for (auto& st : states)
      for (Row& r : st->rows) r.time_round(o);
  }
  for (Reference& ref : refs)
    if (!ref.coretype) ref.label += fmt::format(" ({})", ref.core);

  const Reference& dflt = refs.front();
  const Reference& skx = refs.back();  // SkylakeX, or OpenBLAS' own choice without AVX-512
  const std::string dnn_label = states.front()->rows.front().label;
  fmt::print("# bench_gemm{}: M = {} tokens, GFLOP/s = 2*M*N*K / best time, best of {} rounds\n",
             o.quick ? " --quick" : "", o.M, o.rounds);
  fmt::print("# loom: {}; oneDNN {}.{}.{}\n", cpu_summary(), dnnl_version()->major,
             dnnl_version()->minor, dnnl_version()->patch);
  fmt::print("# timing windows: {} clean, {} discarded (other processes used > 10% of a core), "
             "{:.0f} s spent waiting for quiet; rows marked (disturbed) had no clean window\n",
             g_windows.clean, g_windows.discarded, g_windows.waited);
  if (!bf16_cpu)
    fmt::print("# this CPU has no AVX512_BF16: loom's Auto rows run the f32 route and the oneDNN "
               "reference is its f32 matmul\n");
  fmt::print("# ratio columns: fwd / bwd of (row / reference); references: {} on ready {} "
             "operands, \"{}\", and \"{}\" as the default (child processes)\n\n",
             dnn_label, bf16_cpu ? "bf16" : "f32", skx.label, dflt.label);
  fmt::print("| K -> N | what | fwd GFLOP/s | bwd GFLOP/s | vs {} | vs {} | vs OpenBLAS "
             "default |\n",
             dnn_label, skx.coretype ? "OpenBLAS " + *skx.coretype : std::string("OpenBLAS own"));
  fmt::print("|---|---|---:|---:|---:|---:|---:|\n");
  Totals totals;
  for (const auto& st : states) {
    const Shape& s = st->s;
    totals.gflop += gflop(o, s);
    const std::string shape = fmt::format("{} -> {}", s.K, s.N);
    const Pair dnn = st->rows[0].rate(o, s), skx_p = skx.rate(o, s), dflt_p = dflt.rate(o, s);
    auto print = [&](const std::string& label, const Pair& p) {
      fmt::print("| {} | {}{} | {:.0f} | {:.0f} | {} | {} | {} |\n", shape, label,
                 p.clean ? "" : " (disturbed)", p.fwd, p.bwd, ratios(p, dnn), ratios(p, skx_p),
                 ratios(p, dflt_p));
      totals.add(label, gflop(o, s), p);
    };
    for (const Reference& r : refs) print(r.label, r.rate(o, s));
    for (const Row& r : st->rows) print(r.label, r.rate(o, s));
  }
  fmt::print("\nAll shapes together (total GFLOP / total time):\n\n");
  fmt::print("| what | fwd GFLOP/s | bwd GFLOP/s | fwd+bwd GFLOP/s |\n|---|---:|---:|---:|\n");
  for (const std::string& label : totals.order) {
    const auto& t = totals.seconds.at(label);
    fmt::print("| {} | {:.0f} | {:.0f} | {:.0f} |\n", label, totals.gflop / t.first,
               totals.gflop / t.second, totals.both(label));
  }
  const double bf16 = totals.both("loom bf16 W"), nf4 = totals.both("loom nf4 W"),
               q4k = totals.both("loom q4_k W"), f32 = totals.both("loom f32 W, Precision::F32");
  if (!bf16_cpu) {
    fmt::print("\nTargets (fwd+bwd, all shapes; set for the AVX512_BF16 CI machine): bf16 and "
               "nf4 / q4_k against bf16: not applicable here (no AVX512_BF16: those rows run "
               "f32); f32 (Precision::F32) >= 350 GFLOP/s: {:.0f}, {}\n",
               f32, verdict(f32 >= 350));
    return 0;
  }
  fmt::print("\nTargets (fwd+bwd, all shapes): bf16 >= 500 GFLOP/s: {:.0f}, {}; nf4 >= 0.8 x "
             "bf16: {:.2f}, {}; q4_k >= 0.8 x bf16: {:.2f}, {}; f32 (Precision::F32) >= 350 "
             "GFLOP/s: {:.0f}, {}\n",
             bf16, verdict(bf16 >= 500), nf4 / bf16, verdict(nf4 >= 0.8 * bf16), q4k / bf16,
             verdict(q4k >= 0.8 * bf16), f32, verdict(f32 >= 350));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  loom::ensure_blas_coretype(argc, argv);
  try {
    const Options o = parse(argc, argv);
    return o.blas_child ? run_blas_child(o) : run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gemm: %s\n", e.what());
    return 1;
  }
}
