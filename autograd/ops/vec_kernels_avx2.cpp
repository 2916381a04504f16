// The AVX2 + FMA build of the vector kernels: vec_kernels_impl.h compiled with the flags the
// build gives *_avx2.cpp files. For CPUs without AVX-512 (most laptops and desktops, Zen 2/3);
// only reached through vec_kernels(), after the CPU check.
#include "autograd/ops/vec_kernels.h"

#include <bit>
#include <cstdint>

namespace {
#include "autograd/ops/vec_kernels_impl.h"
}  // namespace

namespace loom::ops_detail {

const VecKernels& vec_kernels_avx2_table() {
  static const VecKernels table = vk_table("avx2");
  return table;
}

}  // namespace loom::ops_detail
