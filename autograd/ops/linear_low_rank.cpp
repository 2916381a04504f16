// linear_low_rank: a frozen linear plus a trainable low-rank update (LoRA) as one op,
//
//   y = x W^T + bias + scale (x_lr A^T) B^T,
//
// so a LoRA projection makes one output tensor instead of four (base, x A^T B^T, its scaled copy,
// the sum) and one backward instead of four. u = x_lr A^T [M x r], kept for dB, is an f32
// skinny product (skinny.h: the activations read once, unpacked; when x_lr is x, made by the
// product while it rounds x, so x is read once for both); a checkpointed block keeps it from its
// first run for the recompute (keep_for_recompute). u B^T joins the base product (on the bf16
// route as r more columns of the reduction, so y is written once; on the f32 route an sgemm into
// y), and when x_lr is x itself the low-rank input gradient t A joins the base's dX product the
// same way (no second [M x K] tensor, no tape add). t = dY B, dA and dB are skinny products too.
#include <vector>

#include "autograd/kernels/gemm.h"
#include "autograd/kernels/skinny.h"
#include "autograd/ops.h"
#include "autograd/ops/common.h"

namespace loom {

using namespace ops_detail;

Tensor linear_low_rank(const Tensor& x_in, const Tensor& weight, const Tensor& bias_in,
                       const Tensor& x_lr_in, const Tensor& a_in, const Tensor& b_in, float scale,
                       Precision precision, OutputUse use) {
  const char* op = "linear_low_rank";
  check_f32(op, "x", x_in);
  check_f32(op, "x_lr", x_lr_in);
  check_f32(op, "a", a_in);
  check_f32(op, "b", b_in);
  check_defined(op, "weight", weight);
  LOOM_CHECK(weight.dim() == 2 && !weight.requires_grad() && weight.is_contiguous(),
             "{}: weight '{}' must be a frozen, contiguous 2-D [out, in] tensor, got {}{}", op,
             weight.name(), shape_str(weight.shape()),
             weight.requires_grad() ? " that requires grad" : "");
  const int64_t N = weight.size(0), K = weight.size(1);
  LOOM_CHECK(x_in.dim() >= 1 && x_in.shape().back() == K && x_lr_in.shape() == x_in.shape(),
             "{}: x {} and x_lr {} must both be [..., {}] for weight '{}' {}", op,
             shape_str(x_in.shape()), shape_str(x_lr_in.shape()), K, weight.name(),
             shape_str(weight.shape()));
  LOOM_CHECK(a_in.dim() == 2 && a_in.size(1) == K && a_in.size(0) > 0,
             "{}: a '{}' is {}, expected [rank, {}]", op, a_in.name(), shape_str(a_in.shape()), K);
  const int64_t R = a_in.size(0);
  LOOM_CHECK(b_in.dim() == 2 && b_in.size(0) == N && b_in.size(1) == R,
             "{}: b '{}' is {}, expected [{}, {}] (out x rank)", op, b_in.name(),
             shape_str(b_in.shape()), N, R);
  if (bias_in.defined()) {
    check_f32(op, "bias", bias_in);
    LOOM_CHECK(bias_in.dim() == 1 && bias_in.size(0) == N, "{}: bias {} does not match [{}]", op,
               shape_str(bias_in.shape()), N);
  }
  const bool same_input = x_lr_in.impl() == x_in.impl();
  const Tensor x = contiguous(x_in);
  const Tensor x_lr = same_input ? x : contiguous(x_lr_in);
  const Tensor a = contiguous(a_in), b = contiguous(b_in);
  const Tensor bias = bias_in.defined() ? contiguous(bias_in) : Tensor();
  const int64_t M = K == 0 ? 0 : x.numel() / K;
  Shape out_shape = x.shape();
  out_shape.back() = N;
  const bool compute = use == OutputUse::Read;
  Tensor y = !compute                  ? graph_only_f32(out_shape)
             : M > 0 && N > 0 && K > 0 ? empty_f32(out_shape)
                                       : new_f32(out_shape);
  const WeightView wv{weight.dtype(), weight.data_bytes(), N, K};
  // u = x_lr A^T, saved for dB; a checkpoint's recompute takes it from the first run.
  // GraphOnly (nothing reads y): u is still needed for dB, the two products into y are not.
  // When x_lr is x and y is computed, the product makes u itself (linear_forward_group: x read
  // once for u and its rounding).
  const bool products_run = compute && M > 0 && N > 0 && K > 0;
  std::vector<float> a_t;
  MadeColumns made;
  const Tensor u = keep_for_recompute([&] {
    Tensor v = empty_f32({M, R});
    if (M > 0 && N > 0 && K > 0) {
      a_t = transposed(a.data_f32(), R, K);
      if (products_run && same_input)
        made = MadeColumns{v.data_f32(), a_t.data(), R};
      else
        skinny_product(M, K, R, 1.0f, x_lr.data_f32(), K, a_t.data(), v.data_f32(), R);
    } else if (M > 0) {
      std::fill_n(v.data_f32(), M * R, 0.0f);
    }
    return v;
  });
  if (products_run && made.cols > 0) {
    const GroupProduct product{wv, y.data_f32(), N, b.data_f32(), R, 0, scale};
    linear_forward_group(x.data_f32(), M, K, u.data_f32(), R, R, {&product, 1}, precision, made);
  } else if (products_run) {
    linear_forward_low_rank(x.data_f32(), M, K, wv, u.data_f32(), R, b.data_f32(), R, scale,
                            y.data_f32(), N, false, precision);
  }
  if (compute && bias.defined() && M > 0) add_to_rows(y.data_f32(), M, N, bias.data_f32());

  const bool need_x = x.requires_grad(), need_x_lr = !same_input && x_lr.requires_grad();
  const bool need_a = a.requires_grad(), need_b = b.requires_grad();
  const bool need_bias = bias.defined() && bias.requires_grad();
  const bool lr_into_dx = same_input && need_x;
  const Tensor saved_x_lr = need_a ? x_lr : Tensor();
  const Tensor saved_u = need_b ? u : Tensor();
  std::vector<Tensor> inputs{x, x_lr, a, b, bias};
  if (same_input) inputs[1] = Tensor();  // one gradient, delivered to x
  return record(y, op, std::move(inputs), [=](const Tensor& g_in, const Tensor&) {
    const Tensor g = dense(g_in);
    const float* pg = g.data_f32();
    const bool work = M > 0 && N > 0 && K > 0;
    // From the captured weight (not wv's raw pointer), so the node keeps the weight alive.
    const WeightView w_view{weight.dtype(), weight.data_bytes(), N, K};
    Tensor dx, dx_lr, da, db, dbias;
    // t = dY B [M x r]: the gradient reaching u, unscaled; with dB [N x r] = scale dY^T u in the
    // same pass over dY, and with dX too when the term folds into it (linear_backward_low_rank:
    // dY read once for all three).
    Tensor t = work ? empty_f32({M, R}) : Tensor();
    if (need_b) db = work ? empty_f32({N, R}) : new_f32({N, R});
    const bool together = work && need_b && lr_into_dx;
    if (together) {
      dx = empty_f32(x.shape());
      linear_backward_low_rank(pg, M, N, w_view, a.data_f32(), b.data_f32(), R, scale,
                               saved_u.data_f32(), R, t.data_f32(), R, db.data_f32(), dx.data_f32(),
                               K, false, precision);
    } else if (work && need_b) {
      skinny_product_reduce(M, N, R, pg, N, 1.0f, b.data_f32(), t.data_f32(), R, scale,
                            saved_u.data_f32(), R, db.data_f32());
    } else if (work) {
      skinny_product(M, N, R, 1.0f, pg, N, b.data_f32(), t.data_f32(), R);
    }
    if (need_x && !together) {
      dx = work ? empty_f32(x.shape()) : new_f32(x.shape());
      if (work) {
        if (lr_into_dx)
          linear_backward_input_low_rank(pg, M, N, w_view, t.data_f32(), R, a.data_f32(), R, scale,
                                         dx.data_f32(), K, false, precision);
        else
          linear_backward_input(pg, M, N, w_view, dx.data_f32(), K, false, precision);
      }
    }
    if (need_x_lr) {
      dx_lr = work ? empty_f32(x_lr.shape()) : new_f32(x_lr.shape());
      if (work)
        sgemm(false, false, M, K, R, scale, t.data_f32(), R, a.data_f32(), K, 0.0f,
              dx_lr.data_f32(), K);
    }
    if (need_a) {  // dA [r x K] = scale t^T x_lr
      da = work ? empty_f32({R, K}) : new_f32({R, K});
      if (work) {
        std::vector<float> da_t(static_cast<size_t>(K * R));  // dA^T [K x r]
        skinny_reduce(M, K, R, scale, saved_x_lr.data_f32(), K, t.data_f32(), R, da_t.data());
        const std::vector<float> d = transposed(da_t.data(), K, R);
        std::copy(d.begin(), d.end(), da.data_f32());
      }
    }
    if (need_bias) {
      dbias = new_f32({N});
      sum_rows(pg, M, N, dbias.data_f32(), false);
    }
    return std::vector<Tensor>{dx, dx_lr, da, db, dbias};
  });
}

}  // namespace loom
