// embedding: gathers rows of a [V, D] table for token ids. A frozen table of any storage dtype
// is dequantized row by row (rows are block-aligned); an f32 trainable table gets a dense
// scatter-add gradient.
#include "autograd/ops.h"
#include "autograd/ops/common.h"
#include "autograd/quant/quant.h"

namespace loom {

using namespace ops_detail;

Tensor embedding(const Tensor& table_in, std::span<const int32_t> ids, const Shape& ids_shape) {
  check_defined("embedding", "table", table_in);
  LOOM_CHECK(table_in.dim() == 2, "embedding: table '{}' must be 2-D [vocab, dim], got {}",
             table_in.name(), shape_str(table_in.shape()));
  const int64_t V = table_in.shape()[0], D = table_in.shape()[1];
  const int64_t n = static_cast<int64_t>(ids.size());
  Shape out_shape = ids_shape.empty() ? Shape{n} : ids_shape;
  LOOM_CHECK(shape_numel(out_shape) == n, "embedding: ids shape {} holds {} ids, but {} were given",
             shape_str(out_shape), shape_numel(out_shape), n);
  for (int64_t i = 0; i < n; ++i) {
    LOOM_CHECK(ids[i] >= 0 && ids[i] < V,
               "embedding: token id {} at position {} is out of range for table '{}' with {} rows",
               ids[i], i, table_in.name(), V);
  }
  const bool is_f32 = table_in.dtype() == DType::F32;
  LOOM_CHECK(is_f32 || table_in.is_contiguous(), "embedding: {} table '{}' must be contiguous",
             dtype_name(table_in.dtype()), table_in.name());
  const Tensor table = is_f32 ? contiguous(table_in) : table_in;
  if (!is_f32 && is_quantized(table.dtype())) {
    const int64_t block = dtype_info(table.dtype()).block_elems;
    LOOM_CHECK(D % block == 0, "embedding: {} table '{}' rows of {} are not a multiple of the {}-element block",
               dtype_name(table.dtype()), table.name(), D, block);
  }
  out_shape.push_back(D);
  Tensor out = new_f32(out_shape);
  float* po = out.data_f32();
  if (is_f32) {
    const float* pt = table.data_f32();
#pragma omp parallel for schedule(static) if (n * D >= kParallelMinElements)
    for (int64_t i = 0; i < n; ++i)
      std::memcpy(po + i * D, pt + static_cast<int64_t>(ids[i]) * D, static_cast<size_t>(D) * sizeof(float));
  } else {
    const DType dt = table.dtype();
    const void* data = table.data_bytes();
#pragma omp parallel for schedule(static) if (n * D >= kParallelMinElements)
    for (int64_t i = 0; i < n; ++i)
      dequantize(dt, data, V * D, static_cast<int64_t>(ids[i]) * D, D, po + i * D);
  }
  if (!table.requires_grad()) return out;
  auto saved_ids = std::make_shared<std::vector<int32_t>>(ids.begin(), ids.end());
  return record(out, "embedding", {table}, [saved_ids, V, D](const Tensor& g_in, const Tensor&) {
    const Tensor g = dense(g_in);
    Tensor dt = new_f32({V, D});
    const float* pg = g.data_f32();
    float* pd = dt.data_f32();
    // Sequential scatter-add: ids repeat, and n x D is small next to the rest of a step.
    const int64_t count = static_cast<int64_t>(saved_ids->size());
    for (int64_t i = 0; i < count; ++i) {
      float* row = pd + static_cast<int64_t>((*saved_ids)[i]) * D;
      const float* gi = pg + i * D;
      for (int64_t j = 0; j < D; ++j) row[j] += gi[j];
    }
    return std::vector<Tensor>{dt};
  });
}

}  // namespace loom
