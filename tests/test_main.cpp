// Shared main for the GoogleTest programs: sets up OpenBLAS' core type like the loom binary.
#include <gtest/gtest.h>

#include "autograd/kernels/cpu.h"

int main(int argc, char** argv) {
  loom::ensure_blas_coretype(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
