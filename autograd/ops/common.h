// Internal helpers shared by the op families in autograd/ops/*.cpp (not part of the public API):
// argument checks that name the op, dense f32 access, strided copies and the parallel-loop
// helpers. The vectorized row kernels are in vec_kernels.h.
//
// Threading: our loops use OpenMP. GEMMs (autograd/kernels/gemm.h) are called from the calling
// thread, outside our parallel regions, so they can split each product over the OpenMP threads.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "autograd/check.h"
#include "autograd/tape.h"
#include "autograd/tensor.h"

namespace loom::ops_detail {

// Loops over fewer elements than this run on one thread (an OpenMP region costs microseconds).
inline constexpr int64_t kParallelMinElements = int64_t{1} << 15;

// Throws "<op>: <what> must be f32, got <dtype> <shape>".
void check_f32(const char* op, const char* what, const Tensor& t);
void check_defined(const char* op, const char* what, const Tensor& t);

// A new zero-filled f32 tensor (Storage zero-fills).
inline Tensor new_f32(const Shape& shape) { return Tensor::zeros(shape, DType::F32); }
// A new f32 tensor left unset, for outputs every element of which the op writes (saves the
// zero-fill and its page faults on every activation).
inline Tensor empty_f32(const Shape& shape) { return Tensor::empty(shape, DType::F32); }
// The output of an op run with OutputUse::GraphOnly: zeros that cost neither memory nor a fill.
// Every such tensor views one read-only mapping of zero pages (grown as needed); writing to it
// is a segfault, not a silent change of every other such output.
Tensor graph_only_f32(const Shape& shape);

// Copies a strided f32 array of `shape` from src (src_strides) to dst (dst_strides), parallel
// over outer rows. Strides are in elements.
void copy_strided(const float* src, const Shape& src_strides, float* dst, const Shape& dst_strides,
                  const Shape& shape);

// t itself when contiguous, else an unrecorded contiguous copy. For gradients inside vjps and
// for frozen values; differentiable inputs go through the recorded contiguous() op instead.
Tensor dense(const Tensor& t);

// A view sharing x's storage.
Tensor make_view(const Tensor& x, Shape shape, Shape strides, int64_t offset);

// out[c] = sum over rows of g[r * cols + c] (g dense [rows x cols]); accumulate adds into out.
void sum_rows(const float* g, int64_t rows, int64_t cols, float* out, bool accumulate);
// y[r * cols + c] += v[c] for every row (a bias added to each output row), rows in parallel.
void add_to_rows(float* y, int64_t rows, int64_t cols, const float* v);

// The [cols x rows] transpose of a contiguous [rows x cols] matrix (small ones: LoRA factors).
std::vector<float> transposed(const float* m, int64_t rows, int64_t cols);

// Normalizes a possibly negative dim; throws naming the op when out of range.
int64_t normalize_dim(const char* op, int64_t dim, int64_t ndim);

// Runs f(begin, end) over [0, n) split into one contiguous range per OpenMP thread (16-element
// aligned), or once on the calling thread when n is small.
template <class F>
void parallel_ranges(int64_t n, F&& f) {
  if (n < kParallelMinElements) {
    if (n > 0) f(int64_t{0}, n);
    return;
  }
#pragma omp parallel
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t begin = n * t / nt / 16 * 16;
    const int64_t end = t + 1 == nt ? n : n * (t + 1) / nt / 16 * 16;
    if (end > begin) f(begin, end);
  }
}

}  // namespace loom::ops_detail
