// Runtime CPU feature detection and the process setup the BLAS needs.
#pragma once

#include <string>

namespace loom {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512bf16 = false;
};

const CpuFeatures& cpu_features();
bool cpu_has_avx512_bf16();  // AVX512F+BW+VL+BF16: the fast paths in *_avx512.cpp may run
std::string cpu_summary();   // one line for run banners: "avx512 bf16, 2 threads, OpenBLAS SkylakeX"

// OpenBLAS picks its kernels when the library loads, from OPENBLAS_CORETYPE if set, else by
// detection; on this Zen 5 an inherited OPENBLAS_CORETYPE=Haswell (set in our environment)
// gives AVX2 kernels at half speed (Debian's 0.3.21 alone detects it as Cooperlake, AVX-512).
// Call first thing in main(): if the CPU has AVX-512 and OpenBLAS did not choose an AVX-512
// core, it prints a note (when overriding an inherited value), sets OPENBLAS_CORETYPE=SkylakeX
// and re-executes the program (argv unchanged), keeping the inherited value in
// LOOM_INHERITED_OPENBLAS_CORETYPE ("" if it was unset). It re-executes too when neither
// GOMP_SPINCOUNT nor OMP_WAIT_POLICY is set, with GOMP_SPINCOUNT=10000: libgomp's default
// spin-wait of idle threads slows a step ~20x when anything else runs on the machine.
// Set LOOM_NO_REEXEC=1 to disable.
void ensure_blas_coretype(int argc, char** argv);

// Threads for our OpenMP loops and oneDNN (omp_get_max_threads). OpenBLAS is kept
// single-threaded: loom::sgemm splits a product over these OpenMP threads and calls OpenBLAS in
// each, so OpenBLAS' own pthreads never compete with OpenMP for the cores.
int num_threads();
std::string blas_core_name();  // what OpenBLAS chose, e.g. "SkylakeX" / "Haswell"

}  // namespace loom
