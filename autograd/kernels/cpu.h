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

// Debian's OpenBLAS misdetects Zen 5 as Haswell (AVX2 kernels, half speed) unless
// OPENBLAS_CORETYPE is in the environment before the library loads. Call first thing in main():
// if the CPU has AVX-512 and the variable is unset, it sets OPENBLAS_CORETYPE=SkylakeX and
// re-executes the program (argv unchanged). Set LOOM_NO_REEXEC=1 to disable.
void ensure_blas_coretype(int argc, char** argv);

// Thread counts: OpenMP (our kernels, oneDNN) and OpenBLAS never run nested, both use all cores.
int num_threads();
std::string blas_core_name();  // what OpenBLAS chose, e.g. "SkylakeX" / "Haswell"

}  // namespace loom
