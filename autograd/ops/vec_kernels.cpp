// The portable build of the vector kernels (any x86-64) and the runtime choice between it and
// the AVX-512 build (vec_kernels_avx512.cpp).
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

const VecKernels& vec_kernels_portable() {
  static const VecKernels table = vk_table("portable");
  return table;
}

const VecKernels* vec_kernels_avx512() {
  return cpu_has_avx512_bf16() ? &vec_kernels_avx512_table() : nullptr;
}

const VecKernels& vec_kernels() {
  static const VecKernels* chosen = [] {
    const VecKernels* fast = vec_kernels_avx512();
    return fast ? fast : &vec_kernels_portable();
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
