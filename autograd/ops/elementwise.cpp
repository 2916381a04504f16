// Elementwise binary ops with NumPy broadcasting (add, sub, mul) and scale by a constant.
// One strided kernel walks the output row by row (rows parallel, the last dim innermost); the
// vjp reduces the output gradient back to each operand's shape over its broadcast dims.
#include "autograd/ops.h"
#include "autograd/ops/common.h"

namespace loom {

using namespace ops_detail;

namespace {

enum class BinOp { Add, Sub, Mul };

const char* op_name(BinOp op) {
  switch (op) {
    case BinOp::Add: return "add";
    case BinOp::Sub: return "sub";
    case BinOp::Mul: return "mul";
  }
  return "?";
}

Shape broadcast_shape(const char* op, const Shape& a, const Shape& b) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    LOOM_CHECK(da == db || da == 1 || db == 1,
               "{}: shapes {} and {} do not broadcast (dim {} is {} vs {})", op, shape_str(a),
               shape_str(b), i, da, db);
    out[i] = da == 1 ? db : da;
  }
  return out;
}

// Strides of t seen as a tensor of out_shape: 0 along broadcast (size-1 or missing) dims.
Shape broadcast_strides(const Tensor& t, const Shape& out_shape) {
  const size_t n = out_shape.size(), k = t.shape().size();
  Shape s(n, 0);
  for (size_t i = 0; i < k; ++i) {
    const size_t o = n - k + i;
    s[o] = t.shape()[i] == 1 ? 0 : t.strides()[i];
  }
  return s;
}

// out (dense, out_shape) = f(a, b) over the broadcast operands.
template <class F>
void binary_map(const float* a, const Shape& sa, const float* b, const Shape& sb,
                const Shape& out_shape, float* out, F f) {
  const int64_t nd = static_cast<int64_t>(out_shape.size());
  const int64_t n = shape_numel(out_shape);
  if (n == 0) return;
  if (nd == 0) {
    out[0] = f(a[0], b[0]);
    return;
  }
  const int64_t inner = out_shape[nd - 1];
  const int64_t rows = n / inner;
  const int64_t ia = sa[nd - 1], ib = sb[nd - 1];
#pragma omp parallel for schedule(static) if (n >= kParallelMinElements)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t oa = 0, ob = 0, rem = r;
    for (int64_t d = nd - 2; d >= 0; --d) {
      const int64_t i = rem % out_shape[d];
      rem /= out_shape[d];
      oa += i * sa[d];
      ob += i * sb[d];
    }
    const float* pa = a + oa;
    const float* pb = b + ob;
    float* po = out + r * inner;
    if (ia == 1 && ib == 1) {
      for (int64_t j = 0; j < inner; ++j) po[j] = f(pa[j], pb[j]);
    } else if (ia == 1 && ib == 0) {
      const float vb = pb[0];
      for (int64_t j = 0; j < inner; ++j) po[j] = f(pa[j], vb);
    } else if (ia == 0 && ib == 1) {
      const float va = pa[0];
      for (int64_t j = 0; j < inner; ++j) po[j] = f(va, pb[j]);
    } else {
      for (int64_t j = 0; j < inner; ++j) po[j] = f(pa[j * ia], pb[j * ib]);
    }
  }
}

// Sums a dense gradient g of out_shape down to target_shape (which broadcasts to out_shape).
Tensor sum_to_shape(const Tensor& g, const Shape& target_shape) {
  const Shape& out_shape = g.shape();
  if (out_shape == target_shape) return g;
  Tensor result = new_f32(target_shape);
  float* dst = result.data_f32();
  const float* src = g.data_f32();
  const int64_t n = g.numel();
  const int64_t tn = result.numel();
  // Common case: the target is a trailing block of the output shape (bias-like): column sums.
  Shape stripped = target_shape;
  while (!stripped.empty() && stripped.front() == 1) stripped.erase(stripped.begin());
  const bool suffix = stripped.size() <= out_shape.size() &&
                      std::equal(stripped.begin(), stripped.end(), out_shape.end() - stripped.size());
  if (suffix) {
    sum_rows(src, tn == 0 ? 0 : n / tn, tn, dst, false);
    return result;
  }
  // General case: one pass over the output, accumulating into the target's broadcast position.
  const Shape ts = broadcast_strides(result, out_shape);
  const int64_t nd = static_cast<int64_t>(out_shape.size());
  Shape index(nd, 0);
  int64_t off = 0;
  for (int64_t i = 0; i < n; ++i) {
    dst[off] += src[i];
    for (int64_t d = nd - 1; d >= 0; --d) {
      off += ts[d];
      if (++index[d] < out_shape[d]) break;
      off -= ts[d] * out_shape[d];
      index[d] = 0;
    }
  }
  return result;
}

Tensor binary(BinOp op, const Tensor& a, const Tensor& b, OutputUse use = OutputUse::Read) {
  const char* name = op_name(op);
  check_f32(name, "a", a);
  check_f32(name, "b", b);
  const Shape out_shape = broadcast_shape(name, a.shape(), b.shape());
  const bool compute = use == OutputUse::Read;
  Tensor out = compute ? empty_f32(out_shape) : graph_only_f32(out_shape);
  const Shape sa = broadcast_strides(a, out_shape), sb = broadcast_strides(b, out_shape);
  const float* pa = a.data_f32();
  const float* pb = b.data_f32();
  float* po = out.data_f32();
  if (compute) switch (op) {
      case BinOp::Add:
        binary_map(pa, sa, pb, sb, out_shape, po, [](float x, float y) { return x + y; });
        break;
      case BinOp::Sub:
        binary_map(pa, sa, pb, sb, out_shape, po, [](float x, float y) { return x - y; });
        break;
      case BinOp::Mul:
        binary_map(pa, sa, pb, sb, out_shape, po, [](float x, float y) { return x * y; });
        break;
    }
  const bool need_a = a.requires_grad(), need_b = b.requires_grad();
  const Shape shape_a = a.shape(), shape_b = b.shape();
  if (op != BinOp::Mul) {
    const float sign_b = op == BinOp::Sub ? -1.0f : 1.0f;
    return record(out, name, {a, b}, [=](const Tensor& g, const Tensor&) {
      Tensor gd = dense(g);
      Tensor ga, gb;
      if (need_a) ga = sum_to_shape(gd, shape_a);
      if (need_b) gb = sign_b < 0 ? scale(sum_to_shape(gd, shape_b), -1.0f) : sum_to_shape(gd, shape_b);
      return std::vector<Tensor>{ga, gb};
    });
  }
  // mul: d/da = g * b, d/db = g * a (each summed to its operand's shape).
  Tensor saved_a = need_b ? a : Tensor();
  Tensor saved_b = need_a ? b : Tensor();
  return record(out, name, {a, b}, [=](const Tensor& g, const Tensor&) {
    Tensor gd = dense(g);
    const Shape sg = gd.strides();
    auto times = [&](const Tensor& other) {
      Tensor prod = empty_f32(out_shape);
      binary_map(gd.data_f32(), sg, other.data_f32(), broadcast_strides(other, out_shape), out_shape,
                 prod.data_f32(), [](float x, float y) { return x * y; });
      return prod;
    };
    Tensor ga, gb;
    if (need_a) ga = sum_to_shape(times(saved_b), shape_a);
    if (need_b) gb = sum_to_shape(times(saved_a), shape_b);
    return std::vector<Tensor>{ga, gb};
  });
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) { return binary(BinOp::Add, a, b); }
Tensor add(const Tensor& a, const Tensor& b, OutputUse use) {
  return binary(BinOp::Add, a, b, use);
}
Tensor sub(const Tensor& a, const Tensor& b) { return binary(BinOp::Sub, a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary(BinOp::Mul, a, b); }

Tensor scale(const Tensor& x, float factor) {
  check_f32("scale", "x", x);
  Tensor xd = dense(x);
  Tensor out = empty_f32(x.shape());
  const float* px = xd.data_f32();
  float* po = out.data_f32();
  const int64_t n = x.numel();
#pragma omp parallel for simd schedule(static) if (n >= kParallelMinElements)
  for (int64_t i = 0; i < n; ++i) po[i] = factor * px[i];
  return record(out, "scale", {x}, [factor](const Tensor& g, const Tensor&) {
    Tensor gd = dense(g);
    Tensor gx = empty_f32(g.shape());
    const float* pg = gd.data_f32();
    float* p = gx.data_f32();
    const int64_t n = g.numel();
#pragma omp parallel for simd schedule(static) if (n >= kParallelMinElements)
    for (int64_t i = 0; i < n; ++i) p[i] = factor * pg[i];
    return std::vector<Tensor>{gx};
  });
}

}  // namespace loom
