// linear_group: projections sharing one input as one op (ops.h). Forward: the terms' u columns
// side by side in one U [M x u_cols] (those reading x itself from one skinny product over x,
// made by linear_forward_group while it rounds x, the others -- dropout inputs -- from their
// own), then linear_forward_group, which rounds [x | U] once and folds each term into its
// weight's reduction. Backward: t = dY B per projection into one T [M x u_cols]; dX from every
// projection's input-gradient product accumulated into one tensor (terms on x folded in); dA for
// the terms on x from one reduction over x.
//
// The tape records one node per output and one "hub" node holding the op's real inputs: each
// output's node stores its gradient and hands the hub a one-element zero, so the hub's vjp runs
// once, after every output's gradient has arrived (the hub is an input of each output, so it
// comes after all of them in the reverse walk).
#include <memory>
#include <vector>

#include "autograd/kernels/gemm.h"
#include "autograd/kernels/skinny.h"
#include "autograd/ops.h"
#include "autograd/ops/common.h"
#include "autograd/ops/vec_kernels.h"

namespace loom {

using namespace ops_detail;

namespace {

struct Part {
  Tensor weight, bias, x_lr, a, b;  // x_lr, a, b undefined without a term
  float scale = 1.0f;
  int64_t N = 0, R = 0, col = 0;  // R = 0: no term; col: first column in U and T
  bool on_x = false;              // the term reads x itself
};

void check_part(const char* op, size_t i, const GroupLinear& l, const Tensor& x, int64_t K) {
  check_defined(op, "weight", l.weight);
  LOOM_CHECK(l.weight.dim() == 2 && !l.weight.requires_grad() && l.weight.is_contiguous() &&
                 l.weight.size(1) == K,
             "{}: projection {}'s weight '{}' must be a frozen, contiguous [out, {}] tensor, got "
             "{}{}",
             op, i, l.weight.name(), K, shape_str(l.weight.shape()),
             l.weight.requires_grad() ? " that requires grad" : "");
  const int64_t N = l.weight.size(0);
  if (l.bias.defined()) {
    check_f32(op, "bias", l.bias);
    LOOM_CHECK(l.bias.dim() == 1 && l.bias.size(0) == N,
               "{}: projection {}'s bias {} does not match [{}]", op, i, shape_str(l.bias.shape()),
               N);
  }
  if (!l.low_rank) return;
  const LowRankTerm& t = *l.low_rank;
  check_f32(op, "x_lr", t.x_lr);
  check_f32(op, "a", t.a);
  check_f32(op, "b", t.b);
  LOOM_CHECK(t.x_lr.shape() == x.shape(), "{}: projection {}'s x_lr {} must have x's shape {}", op,
             i, shape_str(t.x_lr.shape()), shape_str(x.shape()));
  LOOM_CHECK(t.a.dim() == 2 && t.a.size(1) == K && t.a.size(0) > 0,
             "{}: projection {}'s a '{}' is {}, expected [rank, {}]", op, i, t.a.name(),
             shape_str(t.a.shape()), K);
  LOOM_CHECK(t.b.dim() == 2 && t.b.size(0) == N && t.b.size(1) == t.a.size(0),
             "{}: projection {}'s b '{}' is {}, expected [{}, {}] (out x rank)", op, i, t.b.name(),
             shape_str(t.b.shape()), N, t.a.size(0));
}

// linear_group; with `combine`, where nothing needs a gradient and the combined route runs
// (linear_forward_group_combined), the one combined output instead.
std::vector<Tensor> group_forward(const Tensor& x_in, const std::vector<GroupLinear>& linears,
                                  Precision precision, OutputUse use, CombineRows combine) {
  const char* op = "linear_group";
  check_f32(op, "x", x_in);
  LOOM_CHECK(!linears.empty(), "{}: no projections", op);
  LOOM_CHECK(x_in.dim() >= 1, "{}: x must have at least one dimension, got {}", op,
             shape_str(x_in.shape()));
  const int64_t K = x_in.shape().back();
  for (size_t i = 0; i < linears.size(); ++i) check_part(op, i, linears[i], x_in, K);
  const Tensor x = contiguous(x_in);
  const int64_t M = K == 0 ? 0 : x.numel() / K;

  // The parts; terms on x take the first U columns (one product), the others follow.
  std::vector<Part> parts(linears.size());
  int64_t u_cols = 0, shared_cols = 0;
  for (int pass = 0; pass < 2; ++pass)
    for (size_t i = 0; i < linears.size(); ++i) {
      const GroupLinear& l = linears[i];
      Part& p = parts[i];
      if (pass == 0) {
        p.weight = l.weight;
        p.bias = l.bias.defined() ? contiguous(l.bias) : Tensor();
        p.N = l.weight.size(0);
      }
      if (!l.low_rank) continue;
      const bool on_x = l.low_rank->x_lr.impl() == x_in.impl();
      if (on_x != (pass == 0)) continue;
      p.on_x = on_x;
      p.x_lr = on_x ? x : contiguous(l.low_rank->x_lr);
      p.a = contiguous(l.low_rank->a);
      p.b = contiguous(l.low_rank->b);
      p.scale = l.low_rank->scale;
      p.R = p.a.size(0);
      p.col = u_cols;
      u_cols += p.R;
      if (on_x) shared_cols += p.R;
    }

  // U = [x_lr_i A_i^T ...] [M x u_cols]; a checkpoint's recompute takes it from the first run.
  // The columns of terms on x are made by linear_forward_group when it runs (reading x once for
  // them and its rounding of x), else here.
  const bool products_run = M > 0 && K > 0 && use == OutputUse::Read;
  std::vector<float> f_shared;  // [K x shared_cols]: the terms on x's A^T side by side
  MadeColumns made;
  const Tensor u = u_cols == 0 ? Tensor() : keep_for_recompute([&] {
    Tensor v = empty_f32({M, u_cols});
    if (M == 0) return v;
    float* pu = v.data_f32();
    if (shared_cols > 0) {
      f_shared.resize(static_cast<size_t>(K * shared_cols));
      for (const Part& p : parts)
        if (p.on_x) {
          const float* a = p.a.data_f32();
          for (int64_t r = 0; r < p.R; ++r)
            for (int64_t k = 0; k < K; ++k) f_shared[k * shared_cols + p.col + r] = a[r * K + k];
        }
      if (products_run)
        made = MadeColumns{pu, f_shared.data(), shared_cols};
      else
        skinny_product(M, K, shared_cols, 1.0f, x.data_f32(), K, f_shared.data(), pu, u_cols);
    }
    for (const Part& p : parts)
      if (p.R > 0 && !p.on_x) {
        const std::vector<float> a_t = transposed(p.a.data_f32(), p.R, K);
        skinny_product(M, K, p.R, 1.0f, p.x_lr.data_f32(), K, a_t.data(), pu + p.col, u_cols);
      }
    return v;
  });

  // The hub's inputs: x, then per projection its own x_lr (terms not on x), a, b, bias.
  std::vector<Tensor> inputs{x};
  bool biases = false;
  for (const Part& p : parts) {
    inputs.push_back(p.R > 0 && !p.on_x ? p.x_lr : Tensor());
    inputs.push_back(p.a);
    inputs.push_back(p.b);
    inputs.push_back(p.bias);
    biases = biases || p.bias.defined();
  }
  const bool grad = needs_grad(inputs);

  std::vector<GroupProduct> products;
  for (const Part& p : parts) {
    GroupProduct g;
    g.W = WeightView{p.weight.dtype(), p.weight.data_bytes(), p.N, K};
    g.ldy = std::max<int64_t>(p.N, 1);
    if (p.R > 0) g.B = p.b.data_f32(), g.rank = p.R, g.u_col = p.col, g.scale = p.scale;
    products.push_back(g);
  }
  const float* pu = u_cols > 0 ? u.data_f32() : nullptr;
  if (combine != nullptr && products_run && !grad && !biases && parts.size() == 2) {
    Shape shape = x.shape();
    shape.back() = parts[0].N;
    Tensor y = empty_f32(shape);
    if (linear_forward_group_combined(x.data_f32(), M, K, pu, std::max<int64_t>(u_cols, 1), u_cols,
                                      products, precision, made, combine, y.data_f32(),
                                      std::max<int64_t>(parts[0].N, 1)))
      return {y};
  }
  std::vector<Tensor> outputs;
  for (size_t i = 0; i < parts.size(); ++i) {
    Shape shape = x.shape();
    shape.back() = parts[i].N;
    outputs.push_back(use == OutputUse::GraphOnly ? graph_only_f32(shape)
                      : K > 0                     ? empty_f32(shape)
                                                  : new_f32(shape));
    products[i].Y = outputs.back().data_f32();
  }
  if (products_run)
    linear_forward_group(x.data_f32(), M, K, pu, std::max<int64_t>(u_cols, 1), u_cols, products,
                         precision, made);
  for (size_t i = 0; i < parts.size(); ++i)
    if (parts[i].bias.defined() && M > 0 && use == OutputUse::Read)
      add_to_rows(outputs[i].data_f32(), M, parts[i].N, parts[i].bias.data_f32());
  if (!grad) return outputs;

  bool keep_x = false, keep_u = false;
  for (const Part& p : parts) {
    keep_x = keep_x || (p.on_x && p.a.requires_grad());
    keep_u = keep_u || (p.R > 0 && p.b.requires_grad());
  }
  const Tensor saved_x = keep_x ? x : Tensor();
  const Tensor saved_u = keep_u ? u : Tensor();
  auto dys = std::make_shared<std::vector<Tensor>>(parts.size());
  const bool need_x = x.requires_grad();
  Tensor hub =
      record(Tensor::zeros({1}), op, inputs,
             [=](const Tensor&, const Tensor&) {
               std::vector<Tensor> grads(1 + 4 * parts.size());
               const bool work = M > 0 && K > 0;
               // T = [dY_i B_i ...] [M x u_cols], zero in the columns of outputs no gradient
               // reached; with each dB [N x r] = scale dY^T u in the same pass over dY. A term on
               // x whose dB and dX are both wanted makes its T columns, dB and dX together below
               // (linear_backward_low_rank: dY read once for all three).
               Tensor t = work && u_cols > 0 ? new_f32({M, u_cols}) : Tensor();
               std::vector<bool> together(parts.size(), false);
               for (size_t i = 0; i < parts.size(); ++i) {
                 const Part& p = parts[i];
                 const Tensor& dy = (*dys)[i];
                 if (!dy.defined() || p.R == 0) continue;
                 Tensor* g = &grads[1 + 4 * i];
                 if (p.b.requires_grad()) g[2] = new_f32({p.N, p.R});
                 if (!t.defined() || p.N == 0) continue;
                 together[i] = need_x && p.on_x && p.b.requires_grad();
                 if (together[i]) continue;
                 if (p.b.requires_grad())
                   skinny_product_reduce(M, p.N, p.R, dy.data_f32(), p.N, 1.0f, p.b.data_f32(),
                                         t.data_f32() + p.col, u_cols, p.scale,
                                         saved_u.data_f32() + p.col, u_cols, g[2].data_f32());
                 else
                   skinny_product(M, p.N, p.R, 1.0f, dy.data_f32(), p.N, p.b.data_f32(),
                                  t.data_f32() + p.col, u_cols);
               }
               // dX: every projection's dY W (+ scale T A for terms on x) into one tensor.
               if (need_x) {
                 Tensor dx;
                 for (size_t i = 0; i < parts.size(); ++i) {
                   const Part& p = parts[i];
                   const Tensor& dy = (*dys)[i];
                   if (!dy.defined()) continue;
                   const bool first = !dx.defined();
                   if (first) dx = work ? empty_f32(x.shape()) : new_f32(x.shape());
                   if (!work) continue;
                   const WeightView w{p.weight.dtype(), p.weight.data_bytes(), p.N, K};
                   if (together[i])
                     linear_backward_low_rank(
                         dy.data_f32(), M, p.N, w, p.a.data_f32(), p.b.data_f32(), p.R, p.scale,
                         saved_u.data_f32() + p.col, u_cols, t.data_f32() + p.col, u_cols,
                         grads[1 + 4 * i + 2].data_f32(), dx.data_f32(), K, !first, precision);
                   else if (p.on_x)
                     linear_backward_input_low_rank(
                         dy.data_f32(), M, std::max<int64_t>(p.N, 1), w, t.data_f32() + p.col,
                         u_cols, p.a.data_f32(), p.R, p.scale, dx.data_f32(), K, !first, precision);
                   else
                     linear_backward_input(dy.data_f32(), M, std::max<int64_t>(p.N, 1), w,
                                           dx.data_f32(), K, !first, precision);
                 }
                 grads[0] = dx;
               }
               // dA for the terms on x: one reduction over x, scaled per projection.
               std::vector<float> shared_da;  // [K x shared_cols]
               if (work && shared_cols > 0 && saved_x.defined()) {
                 shared_da.resize(static_cast<size_t>(K * shared_cols));
                 skinny_reduce(M, K, shared_cols, 1.0f, saved_x.data_f32(), K, t.data_f32(), u_cols,
                               shared_da.data());
               }
               for (size_t i = 0; i < parts.size(); ++i) {
                 const Part& p = parts[i];
                 const Tensor& dy = (*dys)[i];
                 if (!dy.defined()) continue;
                 Tensor* g = &grads[1 + 4 * i];
                 if (p.R > 0 && !p.on_x && p.x_lr.requires_grad()) {  // dx_lr = scale T A
                   g[0] = work ? empty_f32(x.shape()) : new_f32(x.shape());
                   if (work)
                     sgemm(false, false, M, K, p.R, p.scale, t.data_f32() + p.col, u_cols,
                           p.a.data_f32(), K, 0.0f, g[0].data_f32(), K);
                 }
                 if (p.R > 0 && p.a.requires_grad()) {  // dA [r x K] = scale T^T x_lr
                   g[1] = new_f32({p.R, K});
                   float* da = g[1].data_f32();
                   if (work && p.on_x) {
                     for (int64_t k = 0; k < K; ++k)
                       for (int64_t r = 0; r < p.R; ++r)
                         da[r * K + k] = p.scale * shared_da[k * shared_cols + p.col + r];
                   } else if (work) {
                     std::vector<float> da_t(static_cast<size_t>(K * p.R));
                     skinny_reduce(M, K, p.R, p.scale, p.x_lr.data_f32(), K, t.data_f32() + p.col,
                                   u_cols, da_t.data());
                     const std::vector<float> d = transposed(da_t.data(), K, p.R);
                     std::copy(d.begin(), d.end(), da);
                   }
                 }
                 if (p.bias.defined() && p.bias.requires_grad()) {
                   g[3] = new_f32({p.N});
                   sum_rows(dy.data_f32(), M, p.N, g[3].data_f32(), false);
                 }
               }
               dys->clear();
               return grads;
             });
  for (size_t i = 0; i < outputs.size(); ++i)
    outputs[i] =
        record(outputs[i], "linear_group output", {hub}, [dys, i](const Tensor& g, const Tensor&) {
          (*dys)[i] = dense(g);
          return std::vector<Tensor>{Tensor::zeros({1})};
        });
  return outputs;
}

}  // namespace

std::vector<Tensor> linear_group(const Tensor& x, const std::vector<GroupLinear>& linears,
                                 Precision precision, OutputUse use) {
  return group_forward(x, linears, precision, use, nullptr);
}

Tensor linear_group_swiglu(const Tensor& x, const std::vector<GroupLinear>& gate_up,
                           Precision precision) {
  LOOM_CHECK(gate_up.size() == 2, "linear_group_swiglu: {} projections; expected [gate, up]",
             gate_up.size());
  // The elementwise kernel swiglu() runs, so the combined route gives its bits.
  const std::vector<Tensor> out =
      group_forward(x, gate_up, precision, OutputUse::Read, vec_kernels().swiglu_fwd);
  return out.size() == 1 ? out[0] : swiglu(out[0], out[1]);
}

}  // namespace loom
