// Differentiable ops: everything a Llama-family transformer and its loss need, forward and
// vector-Jacobian product (vjp) side by side in autograd/ops/<family>.cpp.
//
// Conventions:
// - Activations and gradients are f32. Frozen weights (linear, embedding, the lm head of
//   cross_entropy_chunked) may be stored in any dtype and get no gradient; f32 weights with
//   requires_grad (LoRA A/B, trainable norms, ...) get theirs.
// - Outputs are new contiguous tensors, except the views (reshape of a contiguous tensor,
//   transpose, permute, slice), which share the input's storage.
// - An op records itself on the tape only when grad mode is on and an input requires grad.
// - Errors throw loom::Error starting with the op's name and saying what shape/dtype was
//   expected and what was found.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "autograd/kernels/gemm.h"
#include "autograd/tensor.h"

namespace loom {

// ---- elementwise (ops/elementwise.cpp) -------------------------------------------------------
// NumPy broadcasting: shapes align from the right; each dim pair is equal or one of them is 1.
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& x, float factor);  // factor * x

// ---- reductions and softmax (ops/reduce.cpp) -------------------------------------------------
Tensor sum(const Tensor& x);   // all elements -> shape [] (accumulated in double)
Tensor mean(const Tensor& x);  // all elements -> shape []
Tensor softmax(const Tensor& x);      // along the last dim
Tensor log_softmax(const Tensor& x);  // along the last dim

// ---- views and copies (ops/views.cpp) ---------------------------------------------------------
// reshape: one dim may be -1. A view when x is contiguous (any dtype), else an f32 copy.
Tensor reshape(const Tensor& x, const Shape& shape);
Tensor transpose(const Tensor& x, int64_t dim0, int64_t dim1);   // view (f32)
Tensor permute(const Tensor& x, const std::vector<int64_t>& dims);  // view (f32)
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t length);  // narrow; view (f32)
Tensor concat(const std::vector<Tensor>& xs, int64_t dim);  // copy (f32)
Tensor contiguous(const Tensor& x);  // x itself when contiguous, else a parallel f32 copy

// ---- linear and matmul (ops/linear.cpp) -------------------------------------------------------
// Whether anything will read an op's output values. GraphOnly: the op records its node as usual
// (every gradient comes out the same) but returns read-only zeros of the output's shape (shared
// zero pages: no memory, no fill; writing to them faults) instead of computing them -- for outputs
// a checkpointed block's recompute never reads: its last projection's and the residual sum after
// it, which only carry the graph back to the block's input, and q/k/v's and rope's when attention
// kept its operands (AttentionOptions::keep_for_recompute).
enum class OutputUse : uint8_t { Read, GraphOnly };
// add with an OutputUse: GraphOnly records the sum's node over read-only zeros (a checkpointed
// block's recompute ends with it: the graph's root, whose values nobody reads).
Tensor add(const Tensor& a, const Tensor& b, OutputUse use);

// y[..., N] = x[..., K] . W^T + bias. W is [N, K] in any storage dtype. A frozen W (no
// requires_grad) gets no gradient: the input gradient uses linear_backward_input only. An f32 W
// with requires_grad also gets dW = dY^T . X. bias: optional f32 [N], frozen or trainable.
// `precision` is passed to the GEMM kernels (Precision::F32 for exact f32 products).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(),
              Precision precision = Precision::Auto, OutputUse use = OutputUse::Read);
// A frozen linear plus a trainable low-rank update (LoRA), as one op (ops/linear_low_rank.cpp):
//   y[..., N] = x . W^T + bias + scale * (x_lr . A^T) . B^T
// W [N, K] frozen, any storage dtype, through the `precision` GEMMs; A [r, K] and B [N, r] f32
// (gradients when they require grad), their products always f32. x_lr is the low-rank branch's
// input, x's shape: x itself, or e.g. dropout(x). Equals add(linear(x, W, bias),
// scale(linear(linear(x_lr, A), B), scale)) up to f32 rounding, with one output tensor.
Tensor linear_low_rank(const Tensor& x, const Tensor& weight, const Tensor& bias,
                       const Tensor& x_lr, const Tensor& a, const Tensor& b, float scale,
                       Precision precision = Precision::Auto, OutputUse use = OutputUse::Read);
// A trainable low-rank update of a frozen weight, as linear_low_rank takes it: the output gets
// scale (x_lr . A^T) . B^T. x_lr has the input's shape (the input itself, or dropout of it); A
// [r, in] and B [out, r] are f32, and their products run in f32. (Also the LM head's LoRA in
// the chunked loss: logits = hidden . W^T + the term.)
struct LowRankTerm {
  Tensor x_lr, a, b;
  float scale = 1.0f;
};
// One projection of linear_group: a frozen weight [N, K] of any storage dtype, an optional f32
// bias [N], an optional low-rank term.
struct GroupLinear {
  Tensor weight, bias;
  std::optional<LowRankTerm> low_rank;
};
// Several projections reading the same x [..., K] (a block's q/k/v, its gate/up) as one op, one
// output per projection: outputs[i] equals linear_low_rank(x, weight_i, bias_i, x_lr_i, a_i, b_i,
// scale_i) (linear() without a term) up to f32 rounding. x is rounded to bf16 once for all of
// them (gemm.h linear_forward_group); the terms whose x_lr is x itself share one x . A^T
// product, one dA reduction over x and the input gradient, which all projections write into
// one dX. OutputUse::GraphOnly: the outputs are zeros (no products), the gradients the same.
std::vector<Tensor> linear_group(const Tensor& x, const std::vector<GroupLinear>& linears,
                                 Precision precision = Precision::Auto,
                                 OutputUse use = OutputUse::Read);
// swiglu(gate, up) of a group's two projections [gate, up] (a Llama MLP's first half):
// swiglu(linear_group(x, gate_up)[0], [1]). Where nothing needs a gradient (a checkpointed
// block's first run), neither has a bias and the AMX tile route runs (gemm.h
// linear_forward_group_combined), the two products' blocks are combined while in cache and
// never written out, with the same bits.
Tensor linear_group_swiglu(const Tensor& x, const std::vector<GroupLinear>& gate_up,
                           Precision precision = Precision::Auto);
// f32 matrix product over the last two dims: a [..., M, K] . b [..., K, N] -> [..., M, N].
// Batch dims must match, or one operand is 2-D (shared by every batch element).
Tensor matmul(const Tensor& a, const Tensor& b);

// ---- embedding (ops/embedding.cpp) ------------------------------------------------------------
// Rows of table [V, D] (any dtype, frozen; or f32 trainable) for each id. ids_shape is the
// shape of ids (e.g. {B, T}); empty means {ids.size()}. Output: ids_shape + [D].
Tensor embedding(const Tensor& table, std::span<const int32_t> ids, const Shape& ids_shape = {});

// ---- normalization (ops/norm.cpp) -------------------------------------------------------------
// Llama's RMSNorm over the last dim: x * rsqrt(mean(x^2) + eps) * weight. weight [D] is f32
// (trainable or frozen) or a frozen bf16/f16 tensor.
Tensor rms_norm(const Tensor& x, const Tensor& weight, float eps);

// ---- rotary position embedding (ops/rope.cpp) -------------------------------------------------
enum class RopeStyle : uint8_t {
  Interleaved,  // pairs (2i, 2i+1): llama.cpp's LLAMA rope, for GGUF-permuted Q/K
  Half,         // pairs (i, i + rotary_dim/2): Hugging Face rotate_half / GPT-NeoX
};

// Llama 3.x frequency scaling (Hugging Face rope_type "llama3").
struct Llama3RopeScaling {
  float factor = 8.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int64_t original_max_position_embeddings = 8192;
};

struct RopeConfig {
  float theta = 10000.0f;   // rope_theta / rope.freq_base
  int64_t rotary_dim = 0;   // dims rotated (even); 0 means the whole head dim
  RopeStyle style = RopeStyle::Half;
  std::optional<Llama3RopeScaling> llama3_scaling;
};

// inv_freq[i] for i < rotary_dim/2: theta^(-2i/rotary_dim), then Llama-3 scaling if set.
std::vector<float> rope_inv_freq(const RopeConfig& config, int64_t head_dim);

// cos/sin of position * inv_freq for each token, [n_tokens x rotary_dim/2]. Build it once per
// batch and share it over every layer's q and k.
struct RopeTable {
  RopeStyle style = RopeStyle::Half;
  int64_t head_dim = 0;
  int64_t rotary_dim = 0;
  int64_t n_tokens = 0;
  std::vector<float> cos;
  std::vector<float> sin;
};
std::shared_ptr<const RopeTable> make_rope_table(std::span<const int32_t> positions,
                                                 const RopeConfig& config, int64_t head_dim);

// x [B, T, H, D]. The table (or positions) has T entries (shared over the batch) or B*T.
// OutputUse::GraphOnly: zeros instead of the rotation (its gradient needs no values).
Tensor rope(const Tensor& x, const std::shared_ptr<const RopeTable>& table,
            OutputUse use = OutputUse::Read);
Tensor rope(const Tensor& x, std::span<const int32_t> positions, const RopeConfig& config);

// ---- attention (ops/attention.cpp) ------------------------------------------------------------
struct AttentionOptions {
  bool causal = true;
  // Optional, T or B*T entries: a query attends only to keys with the same document id (and,
  // with causal, at earlier-or-same positions). For packed sequences. Copied by the op.
  std::span<const int32_t> document_ids;
  float scale = 0.0f;  // 0 means 1/sqrt(D)
  // Of the four (backward: five) products per block. BF16 (or Auto on a CPU with AVX512_BF16):
  // q, k, v, dO and the probabilities are rounded to bf16 for them, accumulation, softmax and
  // logsumexp stay f32 (as FlashAttention does); F32 keeps every product in f32.
  Precision precision = Precision::F32;
  // Inside a checkpointed function: keep the output and logsumexp from the first run for the
  // recompute (keep_for_recompute) instead of computing them again; with bf16 products also the
  // rounded q, k, v the products read, so the recompute's q, k, v values are not read at all
  // (their producers may run OutputUse::GraphOnly) and the backward does not round them again.
  bool keep_for_recompute = false;
};
// q [B, T, Hq, D], k and v [B, T, Hkv, D], Hq a multiple of Hkv (grouped-query attention)
// -> [B, T, Hq, D]. Fused: saves the per-row logsumexp, recomputes probabilities in backward.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v,
                 const AttentionOptions& options = {});

// ---- activations (ops/activation.cpp) ---------------------------------------------------------
Tensor silu(const Tensor& x);                         // x * sigmoid(x)
Tensor swiglu(const Tensor& gate, const Tensor& up);  // silu(gate) * up, same shapes

// ---- dropout (ops/dropout.cpp) ----------------------------------------------------------------
// Keeps each element with probability 1-p, scaled by 1/(1-p). The mask is a hash of (seed,
// element index), so recomputation (checkpoint) reproduces it. p = 0 returns x.
Tensor dropout(const Tensor& x, float p, uint64_t seed);
bool dropout_keeps(uint64_t seed, int64_t index, float p);  // the mask, for tests

// ---- cross-entropy over a large vocabulary (ops/cross_entropy.cpp) ---------------------------
struct CrossEntropyOptions {
  // Rows of logits alive at a time (chunk_rows x V floats). 0 picks at most 128 MB: 32M / V rows
  // in multiples of 32, between 16 and 512 (512 rows, 96 MB, for a 49152 vocabulary).
  int64_t chunk_rows = 0;
  int32_t ignore_index = -100;
  Precision precision = Precision::Auto;  // of the hidden . W^T products
  // When set, added to every chunk's logits (u = x_lr A^T is made per chunk, [rows x r]); the
  // gradients of A, B and x_lr come from the same pass.
  std::optional<LowRankTerm> low_rank;
};
struct CrossEntropyResult {
  Tensor loss;           // scalar []: mean over counted targets (0 when none)
  int64_t n_tokens = 0;  // targets that counted (not ignore_index)
  double loss_sum = 0;   // summed loss, for perplexity over several batches
};
// hidden [..., D] (N rows), weight [V, D] (any dtype frozen, or f32 trainable), N targets.
// Never materializes [N x V]: logits are made chunk_rows rows at a time. When a gradient will be
// needed (grad mode on, an input requires grad) it is computed in the same pass and backward only
// scales it, so evaluate under NoGradGuard to skip that work.
CrossEntropyResult cross_entropy_chunked(const Tensor& hidden, const Tensor& weight,
                                         std::span<const int32_t> targets,
                                         const CrossEntropyOptions& options = {});

}  // namespace loom
