// Internal helpers shared by the op families (see common.h).
#include "autograd/ops/common.h"

#include <omp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>

namespace loom::ops_detail {

Tensor graph_only_f32(const Shape& shape) {
  static std::mutex mutex;
  static std::shared_ptr<Storage> zeros;
  const int64_t nbytes = std::max<int64_t>(shape_numel(shape), 1) * int64_t{sizeof(float)};
  std::lock_guard<std::mutex> lock(mutex);
  if (!zeros || zeros->nbytes() < nbytes) {
    const int64_t page = sysconf(_SC_PAGESIZE);
    const size_t capacity = static_cast<size_t>((nbytes + page - 1) / page * page);
    void* p = mmap(nullptr, capacity, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    LOOM_CHECK(p != MAP_FAILED, "out of memory mapping {:.1f} MB of zeros for {}: {}",
               static_cast<double>(capacity) / 1048576.0, shape_str(shape), std::strerror(errno));
    // Tensors made before keep the smaller mapping alive through their storage.
    zeros = Storage::borrow(p, static_cast<int64_t>(capacity),
                            std::shared_ptr<void>(p, [capacity](void* q) { munmap(q, capacity); }));
  }
  return Tensor::from_storage(zeros, shape, DType::F32);
}

void check_defined(const char* op, const char* what, const Tensor& t) {
  LOOM_CHECK(t.defined(), "{}: {} is an undefined tensor", op, what);
}

void check_f32(const char* op, const char* what, const Tensor& t) {
  check_defined(op, what, t);
  LOOM_CHECK(t.dtype() == DType::F32, "{}: {} must be f32, got {} {}", op, what,
             dtype_name(t.dtype()), shape_str(t.shape()));
}

void copy_strided(const float* src, const Shape& src_strides, float* dst, const Shape& dst_strides,
                  const Shape& shape) {
  const int64_t nd = static_cast<int64_t>(shape.size());
  if (nd == 0) {
    dst[0] = src[0];
    return;
  }
  const int64_t n = shape_numel(shape);
  if (n == 0) return;
  const int64_t inner = shape[nd - 1];
  const int64_t rows = n / inner;
  const int64_t s_in = src_strides[nd - 1];
  const int64_t d_in = dst_strides[nd - 1];
#pragma omp parallel for schedule(static) if (n >= kParallelMinElements)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t so = 0, dof = 0, rem = r;
    for (int64_t d = nd - 2; d >= 0; --d) {
      const int64_t i = rem % shape[d];
      rem /= shape[d];
      so += i * src_strides[d];
      dof += i * dst_strides[d];
    }
    const float* s = src + so;
    float* o = dst + dof;
    if (s_in == 1 && d_in == 1) {
      std::memcpy(o, s, static_cast<size_t>(inner) * sizeof(float));
    } else {
      for (int64_t j = 0; j < inner; ++j) o[j * d_in] = s[j * s_in];
    }
  }
}

Tensor dense(const Tensor& t) {
  if (t.is_contiguous()) return t;
  LOOM_CHECK(t.dtype() == DType::F32, "dense: non-contiguous {} tensor {}", dtype_name(t.dtype()),
             shape_str(t.shape()));
  Tensor out = empty_f32(t.shape());
  copy_strided(t.data_f32(), t.strides(), out.data_f32(), out.strides(), t.shape());
  return out;
}

Tensor make_view(const Tensor& x, Shape shape, Shape strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = x.storage();
  impl->offset = offset;
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->dtype = x.dtype();
  impl->name = x.name();
  return Tensor(std::move(impl));
}

void sum_rows(const float* g, int64_t rows, int64_t cols, float* out, bool accumulate) {
  // Parallel over column blocks: each thread owns its columns, so no reduction across threads.
  constexpr int64_t kBlock = 256;
  const int64_t n_blocks = (cols + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMinElements && n_blocks > 1)
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t c0 = b * kBlock;
    const int64_t c1 = std::min(cols, c0 + kBlock);
    float acc[kBlock];
    for (int64_t c = c0; c < c1; ++c) acc[c - c0] = accumulate ? out[c] : 0.0f;
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = g + r * cols;
      for (int64_t c = c0; c < c1; ++c) acc[c - c0] += row[c];
    }
    for (int64_t c = c0; c < c1; ++c) out[c] = acc[c - c0];
  }
}

std::vector<float> transposed(const float* m, int64_t rows, int64_t cols) {
  std::vector<float> t(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) t[c * rows + r] = m[r * cols + c];
  return t;
}

void add_to_rows(float* y, int64_t rows, int64_t cols, const float* v) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMinElements)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) y[r * cols + c] += v[c];
}

int64_t normalize_dim(const char* op, int64_t dim, int64_t ndim) {
  const int64_t d = dim < 0 ? dim + ndim : dim;
  LOOM_CHECK(d >= 0 && d < ndim, "{}: dim {} is out of range for a {}-d tensor", op, dim, ndim);
  return d;
}

}  // namespace loom::ops_detail
