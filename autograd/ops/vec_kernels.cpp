// The portable build of the vector kernels (any x86-64) and the runtime choice between it, the
// AVX2 build (vec_kernels_avx2.cpp) and the AVX-512 build (vec_kernels_avx512.cpp).
#include "autograd/ops/vec_kernels.h"

#include <bit>
#include <cstdint>

#include "autograd/kernels/cpu.h"

namespace {
#include "autograd/ops/vec_kernels_impl.h"
}  // namespace

namespace loom::ops_detail {

// Defined in vec_kernels_avx512.cpp; must only be called on a CPU with AVX-512 (+BF16 family).
const VecKernels& vec_kernels_avx512_table();
// Defined in vec_kernels_avx2.cpp; must only be called on a CPU with AVX2 + FMA + F16C.
const VecKernels& vec_kernels_avx2_table();

const VecKernels& vec_kernels_portable() {
  static const VecKernels table = vk_table("portable");
  return table;
}

const VecKernels* vec_kernels_avx512() {
  return cpu_has_avx512_bf16() ? &vec_kernels_avx512_table() : nullptr;
}

const VecKernels* vec_kernels_avx2() {
  const CpuFeatures& f = cpu_features();
  return f.avx2 && f.fma && f.f16c ? &vec_kernels_avx2_table() : nullptr;
}

const VecKernels& vec_kernels() {
  static const VecKernels* chosen = [] {
    if (const VecKernels* fast = vec_kernels_avx512()) return fast;
    if (const VecKernels* avx2 = vec_kernels_avx2()) return avx2;
    return &vec_kernels_portable();
  }();
  return *chosen;
}

float vec_exp_reference(float x) { return vk_exp(x); }

uint32_t dropout_hash_key(uint64_t seed) {
  return vk_hash32(static_cast<uint32_t>(seed) ^ vk_hash32(static_cast<uint32_t>(seed >> 32) + 0x632BE5ABu));
}

uint32_t dropout_threshold(float p) {
  return static_cast<uint32_t>(static_cast<double>(p) * 16777216.0 + 0.5);
}

bool dropout_keep(uint32_t index, uint32_t key, uint32_t threshold) {
  return vk_dropout_keep(index, key, threshold);
}

}  // namespace loom::ops_detail
