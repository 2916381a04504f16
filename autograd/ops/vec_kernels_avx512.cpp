// The AVX-512 build of the vector kernels: vec_kernels_impl.h compiled with the AVX-512 flags
// the build gives *_avx512.cpp files. Only reached through vec_kernels(), after the CPU check.
#include "autograd/ops/vec_kernels.h"

#include <bit>
#include <cstdint>

namespace {
#include "autograd/ops/vec_kernels_impl.h"
}  // namespace

namespace loom::ops_detail {

const VecKernels& vec_kernels_avx512_table() {
  static const VecKernels table = vk_table("avx512");
  return table;
}

}  // namespace loom::ops_detail
