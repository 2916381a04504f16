// Chunked cross-entropy over a large vocabulary: mean over counted rows of
//   logsumexp(h W^T) - (h W^T)[target]
// without ever holding [N x V] logits. Rows whose target is ignore_index are dropped up front
// (no GEMM work for them), and logits are made chunk_rows rows at a time.
//
// The gradient is computed in the same pass when it will be needed (grad mode on and an input
// requires grad): with each chunk's logits at hand,
//   dLogits = (softmax - onehot) / count,   dH = dLogits . W,   dW += dLogits^T . H
// and the backward only multiplies dH (and dW) by the incoming scalar. That costs no more memory
// than the gradients themselves and saves recomputing every chunk's logits in backward (a third
// of the op's GEMM work, which is the vocabulary-sized product).
//
// With a low-rank term (LoRA on the LM head) each chunk's logits get s (X_lr A^T) B^T added
// (u = X_lr A^T, [n x r], made per chunk), and with t = dLogits . B [n x r]:
//   dA += s t^T X_lr,   dB += s dLogits^T u,   dX_lr = s t A   (into dH when X_lr is H)
// about 2r / D of the vocabulary product's work on top (6% for r = 16 on SmolLM2).
#include <cmath>

#include "autograd/kernels/gemm.h"
#include "autograd/ops.h"
#include "autograd/ops/common.h"
#include "autograd/ops/vec_kernels.h"

namespace loom {

using namespace ops_detail;

namespace {

struct CeState {
  int64_t N = 0, D = 0, V = 0, chunk = 0;
  Precision precision = Precision::Auto;
  std::vector<int64_t> rows;     // counted rows of hidden, in order
  std::vector<int32_t> targets;  // their targets
};

// Copies counted rows [c0, c0 + n) of hidden into x (dense [n x D]).
void gather_chunk(const CeState& st, const float* hidden, int64_t c0, int64_t n, float* x) {
  for (int64_t r = 0; r < n; ++r)
    std::memcpy(x + r * st.D, hidden + st.rows[static_cast<size_t>(c0 + r)] * st.D,
                static_cast<size_t>(st.D) * sizeof(float));
}

// Adds dense rows x [n x D] into counted rows [c0, c0 + n) of out (the inverse of gather_chunk).
void scatter_add_chunk(const CeState& st, const float* x, int64_t c0, int64_t n, float* out) {
  for (int64_t r = 0; r < n; ++r) {
    float* dst = out + st.rows[static_cast<size_t>(c0 + r)] * st.D;
    const float* src = x + r * st.D;
    for (int64_t j = 0; j < st.D; ++j) dst[j] += src[j];
  }
}

// Checks a low-rank term against hidden [..., D] and weight [V, D]; returns its rank.
int64_t check_low_rank(const LowRankTerm& lr, const Tensor& hidden, int64_t V, int64_t D) {
  const char* op = "cross_entropy_chunked";
  check_f32(op, "low_rank.x_lr", lr.x_lr);
  check_f32(op, "low_rank.a", lr.a);
  check_f32(op, "low_rank.b", lr.b);
  LOOM_CHECK(lr.x_lr.shape() == hidden.shape(), "{}: low-rank input {} must have hidden's shape {}",
             op, shape_str(lr.x_lr.shape()), shape_str(hidden.shape()));
  LOOM_CHECK(lr.a.dim() == 2 && lr.a.size(1) == D && lr.a.size(0) > 0,
             "{}: low-rank a '{}' is {}, expected [rank, {}]", op, lr.a.name(),
             shape_str(lr.a.shape()), D);
  const int64_t R = lr.a.size(0);
  LOOM_CHECK(lr.b.dim() == 2 && lr.b.size(0) == V && lr.b.size(1) == R,
             "{}: low-rank b '{}' is {}, expected [{}, {}] (vocab x rank)", op, lr.b.name(),
             shape_str(lr.b.shape()), V, R);
  return R;
}

}  // namespace

CrossEntropyResult cross_entropy_chunked(const Tensor& hidden_in, const Tensor& weight_in,
                                         std::span<const int32_t> targets,
                                         const CrossEntropyOptions& options) {
  check_f32("cross_entropy_chunked", "hidden", hidden_in);
  check_defined("cross_entropy_chunked", "weight", weight_in);
  LOOM_CHECK(weight_in.dim() == 2, "cross_entropy_chunked: weight '{}' must be 2-D [vocab, dim], got {}",
             weight_in.name(), shape_str(weight_in.shape()));
  auto st = std::make_unique<CeState>();
  st->V = weight_in.shape()[0];
  st->D = weight_in.shape()[1];
  LOOM_CHECK(hidden_in.dim() >= 1 && hidden_in.shape().back() == st->D,
             "cross_entropy_chunked: hidden {} does not match weight '{}' {}: expected [..., {}]",
             shape_str(hidden_in.shape()), weight_in.name(), shape_str(weight_in.shape()), st->D);
  st->N = st->D == 0 ? 0 : hidden_in.numel() / st->D;
  LOOM_CHECK(static_cast<int64_t>(targets.size()) == st->N,
             "cross_entropy_chunked: {} targets for {} rows of hidden {}", targets.size(), st->N,
             shape_str(hidden_in.shape()));
  LOOM_CHECK(options.chunk_rows >= 0, "cross_entropy_chunked: chunk_rows must be positive (or 0 for automatic), got {}",
             options.chunk_rows);
  LOOM_CHECK(weight_in.dtype() == DType::F32 || !weight_in.requires_grad(),
             "cross_entropy_chunked: weight '{}' is {} and requires grad; only f32 weights can be trained",
             weight_in.name(), dtype_name(weight_in.dtype()));
  LOOM_CHECK(weight_in.dtype() == DType::F32 || weight_in.is_contiguous(),
             "cross_entropy_chunked: {} weight '{}' must be contiguous", dtype_name(weight_in.dtype()),
             weight_in.name());
  // Automatic: at most 32M floats (128 MB) of logits, whole multiples of 32 rows, at most 512
  // rows. The vocabulary products' speed depends on the chunk's row count: for SmolLM2's LM head
  // (49152 x 576, Q8_0) the forward + input-gradient products ran at 780-925 GFLOP/s with 512
  // rows, 610-710 with 341 (the old 64 MB rule), 340-430 with 682 (the chunk's outputs per
  // weight tile outgrow L2); 2048 rows then take 4 chunks of 65 ms instead of 7 of 59.
  constexpr int64_t kAutoChunkLogits = int64_t{32} << 20;
  st->chunk =
      options.chunk_rows > 0
          ? options.chunk_rows
          : std::clamp<int64_t>(kAutoChunkLogits / std::max<int64_t>(st->V, 1) / 32 * 32, 16, 512);
  st->precision = options.precision;
  for (int64_t i = 0; i < st->N; ++i) {
    const int32_t t = targets[static_cast<size_t>(i)];
    if (t == options.ignore_index) continue;
    LOOM_CHECK(t >= 0 && t < st->V,
               "cross_entropy_chunked: target {} at row {} is out of range for a vocabulary of {} "
               "(ignore_index is {})",
               t, i, st->V, options.ignore_index);
    st->rows.push_back(i);
    st->targets.push_back(t);
  }
  const int64_t count = static_cast<int64_t>(st->rows.size());

  const Tensor hidden = contiguous(hidden_in);
  const Tensor weight = weight_in.dtype() == DType::F32 ? contiguous(weight_in) : weight_in;
  const int64_t V = st->V, D = st->D;
  // The low-rank term, if any: its input (hidden itself, or e.g. dropout(hidden)) and factors.
  const bool has_lr = options.low_rank.has_value();
  const int64_t R = has_lr ? check_low_rank(*options.low_rank, hidden_in, V, D) : 0;
  const bool same_input = has_lr && options.low_rank->x_lr.impl() == hidden_in.impl();
  const Tensor x_lr = !has_lr ? Tensor() : same_input ? hidden : contiguous(options.low_rank->x_lr);
  const Tensor a = has_lr ? contiguous(options.low_rank->a) : Tensor();
  const Tensor b = has_lr ? contiguous(options.low_rank->b) : Tensor();
  const float lr_scale = has_lr ? options.low_rank->scale : 0.0f;

  const bool with_grad = needs_grad({&hidden, &weight, &x_lr, &a, &b});
  const bool need_h = with_grad && hidden.requires_grad();
  const bool need_w = with_grad && weight.requires_grad();
  const bool need_lr_in = with_grad && has_lr && (same_input ? need_h : x_lr.requires_grad());
  const bool need_a = with_grad && has_lr && a.requires_grad();
  const bool need_b = with_grad && has_lr && b.requires_grad();
  const WeightView wv{weight.dtype(), weight.data_bytes(), V, D};
  Tensor dh = need_h ? new_f32(hidden.shape()) : Tensor();
  Tensor dw = need_w ? new_f32({V, D}) : Tensor();
  Tensor dx_lr = need_lr_in && !same_input ? new_f32(x_lr.shape()) : Tensor();
  Tensor da = need_a ? new_f32({R, D}) : Tensor();
  Tensor db = need_b ? new_f32({V, R}) : Tensor();
  const float inv_count = count > 0 ? 1.0f / static_cast<float>(count) : 0.0f;

  const int64_t chunk = std::min<int64_t>(st->chunk, std::max<int64_t>(count, 1));
  std::vector<float> x(static_cast<size_t>(chunk * D)), dx(need_h ? x.size() : 0);
  // From the block cache, not zero-filled: written in full by each chunk's product (a fresh
  // 100 MB mapping per call, page-faulted in and zeroed, cost ~4% of a training step).
  const Tensor logits_buffer = empty_f32({chunk, V});
  float* const logits_data = logits_buffer.data_f32();
  // Low-rank buffers: the chunk's x_lr rows (when not hidden's), u = x_lr A^T, t = dLogits B,
  // and scale t A (the gradient reaching x_lr) when it is not added into dx.
  std::vector<float> z(has_lr && !same_input ? x.size() : 0);
  std::vector<float> u(static_cast<size_t>(chunk * R)), t(with_grad ? u.size() : 0);
  std::vector<float> dz(need_lr_in && !same_input ? x.size() : 0);
  std::vector<double> row_loss(static_cast<size_t>(count));
  const VecKernels& vk = vec_kernels();
  for (int64_t c0 = 0; c0 < count; c0 += chunk) {
    const int64_t n = std::min(chunk, count - c0);
    gather_chunk(*st, hidden.data_f32(), c0, n, x.data());
    linear_forward(x.data(), n, D, wv, logits_data, V, false, st->precision);
    const float* zc = x.data();  // the chunk's low-rank input rows
    if (has_lr) {
      if (!same_input) {
        gather_chunk(*st, x_lr.data_f32(), c0, n, z.data());
        zc = z.data();
      }
      sgemm(false, true, n, R, D, 1.0f, zc, D, a.data_f32(), D, 0.0f, u.data(), R);
      sgemm(false, true, n, V, R, lr_scale, u.data(), R, b.data_f32(), R, 1.0f, logits_data, V);
    }
#pragma omp parallel for schedule(static) if (n * V >= kParallelMinElements)
    for (int64_t r = 0; r < n; ++r) {
      float* lr = logits_data + r * V;
      const int32_t target = st->targets[static_cast<size_t>(c0 + r)];
      const float mx = vk.max(lr, V);
      const float lse = mx + std::log(vk.sum_exp(lr, V, mx));
      row_loss[static_cast<size_t>(c0 + r)] = static_cast<double>(lse) - static_cast<double>(lr[target]);
      if (with_grad) {  // logits -> dLogits in place
        vk.exp_scale(lr, lr, V, lse, inv_count);
        lr[target] -= inv_count;
      }
    }
    if (!with_grad) continue;
    if (has_lr)  // t [n x r] = dLogits . B, the gradient reaching u (unscaled)
      sgemm(false, false, n, R, V, 1.0f, logits_data, V, b.data_f32(), R, 0.0f, t.data(), R);
    if (need_h) {
      linear_backward_input(logits_data, n, V, wv, dx.data(), D, false, st->precision);
      if (same_input && need_lr_in)
        sgemm(false, false, n, D, R, lr_scale, t.data(), R, a.data_f32(), D, 1.0f, dx.data(), D);
      float* pdh = dh.data_f32();
      for (int64_t r = 0; r < n; ++r)
        std::memcpy(pdh + st->rows[static_cast<size_t>(c0 + r)] * D, dx.data() + r * D,
                    static_cast<size_t>(D) * sizeof(float));
    }
    if (need_lr_in && !same_input) {
      sgemm(false, false, n, D, R, lr_scale, t.data(), R, a.data_f32(), D, 0.0f, dz.data(), D);
      scatter_add_chunk(*st, dz.data(), c0, n, dx_lr.data_f32());
    }
    if (need_a)  // dA [r x D] += scale t^T . X_lr
      sgemm(true, false, R, D, n, lr_scale, t.data(), R, zc, D, 1.0f, da.data_f32(), D);
    if (need_b)  // dB [V x r] += scale dLogits^T . u
      sgemm(true, false, V, R, n, lr_scale, logits_data, V, u.data(), R, 1.0f, db.data_f32(), R);
    if (need_w)  // dW [V x D] += dLogits^T [V x n] . X [n x D]
      sgemm(true, false, V, D, n, 1.0f, logits_data, V, x.data(), D, 1.0f, dw.data_f32(), D);
  }
  double loss_sum = 0.0;
  for (double l : row_loss) loss_sum += l;

  CrossEntropyResult result;
  result.n_tokens = count;
  result.loss_sum = loss_sum;
  Tensor loss = Tensor::full({}, count > 0 ? static_cast<float>(loss_sum / static_cast<double>(count)) : 0.0f);
  // The saved gradients are those of the loss itself: scale them by the incoming gradient.
  // With nothing counted they are zeros.
  // The tape runs a vjp once, so the saved tensors are handed over rather than copied.
  // x_lr is recorded only when it is not hidden (hidden's gradient already holds its part).
  std::vector<Tensor> inputs{hidden, weight, same_input ? Tensor() : x_lr, a, b};
  auto vjp = [dh, dw, dx_lr, da, db](const Tensor& g, const Tensor&) mutable {
    const float factor = g.data_f32()[0];
    std::vector<Tensor> grads{std::move(dh), std::move(dw), std::move(dx_lr), std::move(da),
                              std::move(db)};
    for (Tensor& t : grads) {
      if (!t.defined() || factor == 1.0f) continue;
      float* p = t.data_f32();
      const int64_t n = t.numel();
#pragma omp parallel for simd schedule(static) if (n >= kParallelMinElements)
      for (int64_t i = 0; i < n; ++i) p[i] *= factor;
    }
    return grads;
  };
  result.loss = record(loss, "cross_entropy_chunked", std::move(inputs), std::move(vjp));
  return result;
}

}  // namespace loom
