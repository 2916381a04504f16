// View ops (reshape, transpose, permute, slice) that share storage with their input, and the
// copies (contiguous, concat). Each vjp returns a dense gradient so the tape never has to gather
// a strided one element by element.
#include <numeric>

#include "autograd/ops.h"
#include "autograd/ops/common.h"

namespace loom {

using namespace ops_detail;

Tensor contiguous(const Tensor& x) {
  check_defined("contiguous", "x", x);
  if (x.is_contiguous()) return x;
  Tensor out = dense(x);
  return record(out, "contiguous", {x},
                [](const Tensor& g, const Tensor&) { return std::vector<Tensor>{g}; });
}

Tensor reshape(const Tensor& x, const Shape& shape) {
  check_defined("reshape", "x", x);
  Shape target = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < target.size(); ++i) {
    if (target[i] == -1) {
      LOOM_CHECK(infer < 0, "reshape: more than one -1 in the target shape {}", shape_str(shape));
      infer = static_cast<int64_t>(i);
    } else {
      LOOM_CHECK(target[i] >= 0, "reshape: negative dimension in the target shape {}", shape_str(shape));
      known *= target[i];
    }
  }
  if (infer >= 0) {
    LOOM_CHECK(known > 0 && x.numel() % known == 0,
               "reshape: cannot reshape {} ({} elements) to {}", shape_str(x.shape()), x.numel(),
               shape_str(shape));
    target[infer] = x.numel() / known;
  }
  LOOM_CHECK(shape_numel(target) == x.numel(), "reshape: cannot reshape {} ({} elements) to {} ({} elements)",
             shape_str(x.shape()), x.numel(), shape_str(target), shape_numel(target));
  if (!x.is_contiguous()) {
    LOOM_CHECK(x.dtype() == DType::F32, "reshape: non-contiguous {} tensor {} cannot be reshaped",
               dtype_name(x.dtype()), shape_str(x.shape()));
  }
  Tensor src = contiguous(x);
  Tensor out = make_view(src, target, contiguous_strides(target), src.offset());
  const Shape in_shape = x.shape();
  return record(out, "reshape", {src}, [in_shape](const Tensor& g, const Tensor&) {
    Tensor gd = dense(g);
    return std::vector<Tensor>{make_view(gd, in_shape, contiguous_strides(in_shape), gd.offset())};
  });
}

Tensor permute(const Tensor& x, const std::vector<int64_t>& dims) {
  check_f32("permute", "x", x);
  const int64_t nd = x.dim();
  LOOM_CHECK(static_cast<int64_t>(dims.size()) == nd, "permute: {} dims given for a {}-d tensor {}",
             dims.size(), nd, shape_str(x.shape()));
  std::vector<int64_t> perm(dims.size());
  std::vector<bool> seen(dims.size(), false);
  for (size_t i = 0; i < dims.size(); ++i) {
    perm[i] = normalize_dim("permute", dims[i], nd);
    LOOM_CHECK(!seen[perm[i]], "permute: dim {} repeated", perm[i]);
    seen[perm[i]] = true;
  }
  Shape shape(nd), strides(nd);
  std::vector<int64_t> inverse(nd);
  for (int64_t i = 0; i < nd; ++i) {
    shape[i] = x.shape()[perm[i]];
    strides[i] = x.strides()[perm[i]];
    inverse[perm[i]] = i;
  }
  Tensor out = make_view(x, shape, strides, x.offset());
  return record(out, "permute", {x}, [inverse](const Tensor& g, const Tensor&) {
    // Gradient of a permute is the inverse permute, materialized densely.
    Shape gs(inverse.size()), gst(inverse.size());
    for (size_t i = 0; i < inverse.size(); ++i) {
      gs[i] = g.shape()[inverse[i]];
      gst[i] = g.strides()[inverse[i]];
    }
    return std::vector<Tensor>{dense(make_view(g, gs, gst, g.offset()))};
  });
}

Tensor transpose(const Tensor& x, int64_t dim0, int64_t dim1) {
  check_f32("transpose", "x", x);
  const int64_t nd = x.dim();
  const int64_t d0 = normalize_dim("transpose", dim0, nd);
  const int64_t d1 = normalize_dim("transpose", dim1, nd);
  std::vector<int64_t> perm(nd);
  std::iota(perm.begin(), perm.end(), int64_t{0});
  std::swap(perm[d0], perm[d1]);
  return permute(x, perm);
}

Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t length) {
  check_f32("slice", "x", x);
  const int64_t d = normalize_dim("slice", dim, x.dim());
  const int64_t size = x.shape()[d];
  LOOM_CHECK(start >= 0 && length >= 0 && start + length <= size,
             "slice: range [{}, {}) along dim {} is out of bounds for shape {}", start,
             start + length, d, shape_str(x.shape()));
  Shape shape = x.shape();
  shape[d] = length;
  Tensor out = make_view(x, shape, x.strides(), x.offset() + start * x.strides()[d]);
  const Shape in_shape = x.shape();
  return record(out, "slice", {x}, [in_shape, d, start](const Tensor& g, const Tensor&) {
    Tensor gx = new_f32(in_shape);
    const Shape st = gx.strides();
    copy_strided(g.data_f32(), g.strides(), gx.data_f32() + start * st[d], st, g.shape());
    return std::vector<Tensor>{gx};
  });
}

Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  LOOM_CHECK(!xs.empty(), "concat: no tensors given");
  for (const Tensor& x : xs) check_f32("concat", "input", x);
  const Tensor& first = xs[0];
  const int64_t d = normalize_dim("concat", dim, first.dim());
  Shape shape = first.shape();
  shape[d] = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const Shape& s = xs[i].shape();
    bool ok = s.size() == first.shape().size();
    for (size_t j = 0; ok && j < s.size(); ++j)
      ok = static_cast<int64_t>(j) == d || s[j] == first.shape()[j];
    LOOM_CHECK(ok, "concat: input {} has shape {}, expected {} except along dim {}", i,
               shape_str(s), shape_str(first.shape()), d);
    shape[d] += s[d];
  }
  Tensor out = new_f32(shape);
  const Shape ost = out.strides();
  std::vector<int64_t> starts;
  int64_t at = 0;
  for (const Tensor& x : xs) {
    starts.push_back(at);
    copy_strided(x.data_f32(), x.strides(), out.data_f32() + at * ost[d], ost, x.shape());
    at += x.shape()[d];
  }
  std::vector<Shape> shapes;
  for (const Tensor& x : xs) shapes.push_back(x.shape());
  return record(out, "concat", xs, [shapes, starts, d](const Tensor& g, const Tensor&) {
    std::vector<Tensor> grads;
    for (size_t i = 0; i < shapes.size(); ++i) {
      Tensor gi = new_f32(shapes[i]);
      copy_strided(g.data_f32() + starts[i] * g.strides()[d], g.strides(), gi.data_f32(),
                   gi.strides(), shapes[i]);
      grads.push_back(gi);
    }
    return grads;
  });
}

}  // namespace loom
