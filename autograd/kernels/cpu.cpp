// Runtime CPU feature detection (cpuid + xgetbv), OpenBLAS core-type setup and thread counts.
#include "autograd/kernels/cpu.h"

#include <cblas.h>
#include <cpuid.h>
#include <fmt/format.h>
#include <omp.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "autograd/kernels/tile_gemm.h"

namespace loom {
namespace {

uint64_t read_xcr0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

CpuFeatures detect() {
  CpuFeatures f;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27);
  const bool avx = c & (1u << 28);
  // The OS must save the wide registers on context switch, or the instructions fault.
  const uint64_t xcr0 = osxsave ? read_xcr0() : 0;
  const bool os_ymm = (xcr0 & 0x6) == 0x6;
  const bool os_zmm = os_ymm && (xcr0 & 0xE0) == 0xE0;  // opmask, ZMM_Hi256, Hi16_ZMM
  f.fma = os_ymm && avx && (c & (1u << 12));
  f.f16c = os_ymm && avx && (c & (1u << 29));

  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  f.avx2 = os_ymm && avx && (b & (1u << 5));
  f.avx512f = os_zmm && (b & (1u << 16));
  f.avx512bw = f.avx512f && (b & (1u << 30));
  f.avx512vl = f.avx512f && (b & (1u << 31));
  __cpuid_count(7, 1, a, b, c, d);
  f.avx512bf16 = f.avx512f && (a & (1u << 5));
  return f;
}

// Holds OPENBLAS_CORETYPE as it was before ensure_blas_coretype re-executed ("" if unset).
constexpr const char* kInheritedCoretypeVar = "LOOM_INHERITED_OPENBLAS_CORETYPE";
// Set in the re-executed process.
constexpr const char* kReexecutedVar = "LOOM_REEXECUTED";
// libgomp spin rounds before an idle thread sleeps (its default is 300,000).
constexpr const char* kSpinCount = "10000";

bool env_set(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && v[0] != '\0';
}

// OpenBLAS core names whose kernels already use AVX-512 (no re-exec needed).
bool is_avx512_blas_core(std::string_view core) {
  return core == "SkylakeX" || core == "Cooperlake" || core == "SapphireRapids";
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

bool cpu_has_avx512_bf16() {
  const CpuFeatures& f = cpu_features();
  return f.avx512f && f.avx512bw && f.avx512vl && f.avx512bf16;
}

std::string blas_core_name() {
  const char* name = openblas_get_corename();
  return name ? std::string(name) : std::string("unknown");
}

int num_threads() {
  // omp_get_max_threads honours OMP_NUM_THREADS; oneDNN (OpenMP runtime) reads the same value.
  return omp_get_max_threads();
}

std::string cpu_summary() {
  const CpuFeatures& f = cpu_features();
  std::string isa = f.avx512f ? "avx512" : f.avx2 ? "avx2" : "sse";
  if (cpu_has_avx512_bf16()) isa += " bf16";
  if (amx_tiles_available()) isa += " amx";
  return fmt::format("{}, {} threads, OpenBLAS {}", isa, num_threads(), blas_core_name());
}

void ensure_blas_coretype(int argc, char** argv) {
  if (env_set("LOOM_NO_REEXEC")) return;
  // Set by the re-executed process: never loop, even if a library ignored its variable.
  if (std::getenv(kReexecutedVar) != nullptr) return;
  const CpuFeatures& f = cpu_features();
  const std::string core = blas_core_name();
  // OpenBLAS picked AVX2 kernels, by its own detection or because OPENBLAS_CORETYPE (e.g.
  // "Haswell") was inherited.
  const bool fix_core = f.avx512f && f.avx512bw && f.avx512vl && !is_avx512_blas_core(core);
  // libgomp's default lets an idle thread spin ~300k rounds before sleeping: free on an idle
  // machine, ruinous beside other work (a training step measured 7 vs 146 tokens/s with a
  // concurrent build). A short spin keeps the idle-machine speed (bench/README.md).
  const bool fix_spin = !env_set("GOMP_SPINCOUNT") && !env_set("OMP_WAIT_POLICY");
  if (!fix_core && !fix_spin) return;
  if (argc < 1 || argv == nullptr || argv[argc] != nullptr) return;
  // Both variables are read by the libraries' constructors, which already ran in this process:
  // start the program again with them set, remembering the inherited OPENBLAS_CORETYPE (empty:
  // unset) so that benchmarks can measure the original setup.
  const char* inherited_env = std::getenv("OPENBLAS_CORETYPE");
  const bool had_inherited = inherited_env != nullptr;
  const std::string inherited = had_inherited ? inherited_env : "";
  if (fix_core) {
    if (!inherited.empty())
      std::fprintf(stderr,
                   "loom: OPENBLAS_CORETYPE=%s in the environment gives AVX2 kernels on this "
                   "AVX-512 CPU; re-running with SkylakeX (set LOOM_NO_REEXEC=1 to keep %s)\n",
                   inherited.c_str(), inherited.c_str());
    setenv(kInheritedCoretypeVar, inherited.c_str(), 1);
    setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
  }
  if (fix_spin) setenv("GOMP_SPINCOUNT", kSpinCount, 1);
  setenv(kReexecutedVar, "1", 1);
  execv("/proc/self/exe", argv);
  // Still here: exec failed. Carry on with the slower setup rather than stop the run.
  std::fprintf(stderr,
               "loom: warning: could not re-execute with OPENBLAS_CORETYPE=SkylakeX and "
               "GOMP_SPINCOUNT=%s (%s); OpenBLAS keeps its %s kernels. Set the variables "
               "yourself to avoid this.\n",
               kSpinCount, std::strerror(errno), core.c_str());
  if (fix_core) {
    if (had_inherited) setenv("OPENBLAS_CORETYPE", inherited.c_str(), 1);
    else unsetenv("OPENBLAS_CORETYPE");
    unsetenv(kInheritedCoretypeVar);
  }
  if (fix_spin) unsetenv("GOMP_SPINCOUNT");
  unsetenv(kReexecutedVar);
}

}  // namespace loom
