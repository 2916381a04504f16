// The dtype traits table (see dtype.h).
#include "autograd/dtype.h"

#include <array>

#include "autograd/check.h"
#include "autograd/quant/nf4.h"

namespace loom {
namespace {

constexpr std::array<DTypeInfo, 9> kInfo = {{
    {"f32", 1, 4, false, 0},
    {"bf16", 1, 2, false, 30},
    {"f16", 1, 2, false, 1},
    {"nf4", 64, 0, true, -1},
    {"q8_0", 32, 34, true, 8},
    {"q4_0", 32, 18, true, 2},
    {"q4_1", 32, 20, true, 3},
    {"q4_k", 256, 144, true, 12},
    {"q6_k", 256, 210, true, 14},
}};

}  // namespace

const DTypeInfo& dtype_info(DType t) {
  auto i = static_cast<size_t>(t);
  LOOM_CHECK(i < kInfo.size(), "dtype_info: unknown dtype id {}", i);
  return kInfo[i];
}

int64_t storage_bytes(DType t, int64_t n) {
  const DTypeInfo& info = dtype_info(t);
  LOOM_CHECK(n % info.block_elems == 0, "storage_bytes: {} elements is not a multiple of the {} block of {}",
             n, info.name, info.block_elems);
  if (t == DType::NF4) return nf4_storage_bytes(n);
  return n / info.block_elems * info.block_bytes;
}

DType parse_dtype(std::string_view name) {
  std::string valid;
  for (size_t i = 0; i < kInfo.size(); ++i) {
    if (kInfo[i].name == name) return static_cast<DType>(i);
    valid += (i ? ", " : "") + std::string(kInfo[i].name);
  }
  throw Error(fmt::format("unknown dtype '{}': expected one of {}", name, valid));
}

DType dtype_from_ggml(int ggml_type) {
  for (size_t i = 0; i < kInfo.size(); ++i)
    if (kInfo[i].ggml_type == ggml_type) return static_cast<DType>(i);
  std::string valid;
  for (size_t i = 0; i < kInfo.size(); ++i)
    if (kInfo[i].ggml_type >= 0) valid += fmt::format("{}{} ({})", valid.empty() ? "" : ", ", kInfo[i].name, kInfo[i].ggml_type);
  throw Error(fmt::format("GGML tensor type {} is not supported by loom; supported: {}", ggml_type, valid));
}

}  // namespace loom
