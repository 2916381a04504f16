// W + s B A row blocks (lora/delta.h).
#include "lora/delta.h"

#include <Eigen/Core>
#include <exception>
#include <mutex>
#include <vector>

#include "autograd/check.h"
#include "autograd/quant/quant.h"

namespace loom {

namespace {

using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Rows per block: about 64K weights, at least one row; the dtype's blocks never straddle rows
// (quantized weights are row-aligned), so any row range is a valid dequantize range.
int64_t rows_per_block(int64_t in) {
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(in, 1));
}

}  // namespace

void for_each_adapted_rows(const Tensor& weight_in, const Tensor& a_in, const Tensor& b_in,
                           float scale, const WeightRowsFn& fn) {
  LOOM_CHECK(weight_in.defined() && weight_in.dim() == 2, "lora: base weight '{}' must be 2-D",
             weight_in.defined() ? weight_in.name() : std::string("<undefined>"));
  const int64_t out = weight_in.size(0), in = weight_in.size(1);
  const Tensor weight = weight_in.is_contiguous() ? weight_in : weight_in.clone();
  const bool has_delta = b_in.defined();
  std::vector<float> a, b;
  int64_t rank = 0;
  if (has_delta) {
    LOOM_CHECK(a_in.defined() && a_in.dim() == 2 && b_in.dim() == 2 && a_in.size(1) == in &&
                   b_in.size(0) == out && a_in.size(0) == b_in.size(1),
               "lora: A {} and B {} do not fit base weight '{}' {}: expected A [r, {}], B [{}, r]",
               a_in.defined() ? shape_str(a_in.shape()) : "<undefined>", shape_str(b_in.shape()),
               weight_in.name(), shape_str(weight_in.shape()), in, out);
    a = a_in.to_vector();
    b = b_in.to_vector();
    rank = a_in.size(0);
  }
  const int64_t block = rows_per_block(in);
  const int64_t n_blocks = (out + block - 1) / block;
  std::exception_ptr error;
  std::mutex error_mutex;
#pragma omp parallel if (n_blocks > 1)
  {
    RowMajor rows;
#pragma omp for schedule(dynamic)
    for (int64_t blk = 0; blk < n_blocks; ++blk) {
      try {
        const int64_t r0 = blk * block, nr = std::min(block, out - r0);
        rows.resize(nr, in);
        dequantize(weight.dtype(), weight.data_bytes(), weight.numel(), r0 * in, nr * in,
                   rows.data());
        if (has_delta) {
          const Eigen::Map<const RowMajor> am(a.data(), rank, in);
          const Eigen::Map<const RowMajor> bm(b.data() + r0 * rank, nr, rank);
          const RowMajor delta = bm * am;  // B @ A, then W + s * that, as PEFT
          rows += scale * delta;
        }
        fn(r0, nr, rows.data());
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace loom
