// The Llama-family decoder (llama, mistral, qwen2) on loom's autograd tape: weights, loading
// from GGUF and from Hugging Face directories, and the training-path forward.
//
//   x = embed(ids)                                        [B, T, D]
//   per block:  h = rms_norm(x);  q, k, v = wq h, wk h, wv h   (+ biases: qwen2, llama bias)
//               q, k = rope(q), rope(k);  x += wo attention(q, k, v)   (GQA, causal [+ documents])
//               h = rms_norm(x);  x += w_down (silu(w_gate h) * w_up h)
//   hidden = rms_norm(x)                                  [B, T, D]
//   loss = cross_entropy_chunked(hidden, output, targets)    (never the full [B*T, V] logits)
//
// Weights keep the dtype they were stored in (a Q4_1 GGUF stays Q4_1 and is read in place from
// the mapping; a bf16 checkpoint stays bf16) and are frozen. Only biases stored as bf16/f16 are
// widened to f32 (the linear op takes f32 biases; they are tiny).
//
// Each block runs inside checkpoint() when ForwardOptions::checkpoint_blocks is on (the default):
// only the blocks' inputs are kept, and each block is recomputed during backward. The model must
// stay alive (and not be moved) until backward has run: the recorded blocks refer to it.
//
// LoRA attaches to any of the seven projections, and to the LM head (the output projection,
// weights().output), through Linear::adapter (see LinearAdapter). An adapter on the LM head
// enters the chunked loss as a low-rank term (LinearAdapter::low_rank_term).
// Q/K row order: see layers/model_config.h (GGUF llama weights are permuted for llama.cpp's
// interleaved rope; config().rope.style says which layout the loaded weights have).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "autograd/ops.h"
#include "layers/model_config.h"

namespace loom {

class GgufFile;
struct Linear;

// The seven projections of a block, in the order LlamaBlock::projections() lists them, and the
// LM head (Output: Hugging Face "lm_head", GGUF "output"; not in kAllProjections).
enum class Projection : uint8_t { Q, K, V, O, Gate, Up, Down, Output };
inline constexpr Projection kAllProjections[] = {Projection::Q,   Projection::K,    Projection::V,
                                                 Projection::O,   Projection::Gate, Projection::Up,
                                                 Projection::Down};
// Hugging Face module name ("q_proj", ..., "down_proj"), as PEFT's target_modules use them.
std::string_view projection_hf_name(Projection p);
// GGUF tensor stem ("attn_q", ..., "ffn_down"), as llama.cpp adapters name them.
std::string_view projection_gguf_name(Projection p);

// The attach point for LoRA (and DoRA, ...): given a projection's input x [..., in] and its
// frozen base output base_out = x W^T + b [..., out], returns the output the model uses.
// Whatever the adapter records on the tape (its own trainable A/B) gets gradients; with
// checkpointing, apply() runs again during backward, so it must be deterministic.
class LinearAdapter {
 public:
  virtual ~LinearAdapter() = default;
  virtual Tensor apply(const Linear& base, const Tensor& x, const Tensor& base_out,
                       Precision precision) const = 0;
  // The projection's whole output for input x: by default apply() on the plain base output;
  // an adapter may compute the same in one fused op (LoRA: linear_low_rank). `use` as in
  // linear(): GraphOnly allows (does not require) skipping the output's values.
  virtual Tensor forward(const Linear& base, const Tensor& x, Precision precision,
                         OutputUse use = OutputUse::Read) const;
  // On the LM head: the adapter's part of the output as a low-rank term x_lr, A, B, scale (the
  // output is base(x) + scale (x_lr A^T) B^T), which the chunked loss adds chunk by chunk.
  // nullopt when the adapter adds nothing now (merged into the weight). The default throws: an
  // adapter not of that form cannot go on the LM head.
  virtual std::optional<LowRankTerm> low_rank_term(const Linear& base, const Tensor& x) const;
  // Whether low_rank_term() is the adapter's whole effect (plain LoRA; false by default): then
  // projections sharing an input may run as one linear_group (forward_shared_input).
  virtual bool is_low_rank_term() const { return false; }
};

// One projection: a frozen weight of any storage dtype, an optional f32 bias, an optional
// adapter. kind, layer and the names follow from its slot in the block (the LlamaModel
// constructor sets them), so adapter targeting can match "q_proj" or "attn_q".
struct Linear {
  Tensor weight;                           // [out, in]
  Tensor bias;                             // f32 [out], or undefined
  std::shared_ptr<LinearAdapter> adapter;  // null: the plain projection
  Projection kind = Projection::Q;
  int64_t layer = 0;
  std::string gguf_name;  // "blk.3.attn_q" (tensors: + ".weight" / ".bias")
  std::string hf_name;    // "model.layers.3.self_attn.q_proj"

  int64_t out_features() const { return weight.size(0); }
  int64_t in_features() const { return weight.size(1); }
  // x [..., in] -> [..., out]: linear(x, weight, bias), then the adapter if attached. With
  // OutputUse::GraphOnly the output's values may be left zero (see linear()).
  Tensor forward(const Tensor& x, Precision precision, OutputUse use = OutputUse::Read) const;
};

// The outputs of projections that read the same x (a block's q/k/v, its gate/up), in order: one
// linear_group when each is plain or carries a plain low-rank adapter (LoRA, not DoRA), else
// each Linear::forward. `use` as in linear().
std::vector<Tensor> forward_shared_input(std::span<const Linear* const> linears, const Tensor& x,
                                         Precision precision, OutputUse use = OutputUse::Read);
// swiglu(gate(x), up(x)), the MLP's first half: linear_group_swiglu when both are plain or
// plain low-rank (in a forward that keeps no gradients, the two products then never written
// out), else the two Linear::forward.
Tensor swiglu_of_shared_input(const Linear& gate, const Linear& up, const Tensor& x,
                              Precision precision);

struct LlamaBlock {
  Tensor attn_norm;  // [D]
  Linear wq, wk, wv, wo;
  Tensor ffn_norm;  // [D]
  Linear w_gate, w_up, w_down;

  std::array<Linear*, 7> projections() { return {&wq, &wk, &wv, &wo, &w_gate, &w_up, &w_down}; }
  std::array<const Linear*, 7> projections() const {
    return {&wq, &wk, &wv, &wo, &w_gate, &w_up, &w_down};
  }
};

struct LlamaWeights {
  Tensor token_embd;  // [V, D]
  std::vector<LlamaBlock> blocks;
  Tensor output_norm;  // [D]
  // The LM head: weight [V, D], the same tensor as token_embd when the embeddings are tied (a
  // merged LM head adapter replaces it with its own tensor: unties it). kind Output, layer -1.
  Linear output;
  // Per-frequency divisors of the rope angles (GGUF rope_freqs.weight, how llama.cpp stores
  // Llama-3.1 scaling), [rotary_dim / 2]; empty when none.
  std::vector<float> rope_freq_factors;
};

// One batch of token rows. Spans are read during the call only.
struct TokenBatch {
  std::span<const int32_t> ids;  // batch * seq_len, row-major
  int64_t batch = 1;
  int64_t seq_len = 0;
  std::span<const int32_t> positions;     // seq_len (shared) or batch*seq_len; empty: 0..T-1
  std::span<const int32_t> document_ids;  // seq_len or batch*seq_len; empty: no document mask
};

struct ForwardOptions {
  bool checkpoint_blocks = true;          // recompute each block in backward (training default)
  Precision precision = Precision::Auto;  // of the projections' GEMMs
  // Of attention's score / value products (AttentionOptions::precision). F32 by default, so an
  // evaluation matches the KV-cache decoder; the training step passes its bf16 precision here,
  // where the products run three times a step (forward, recompute, backward).
  Precision attention_precision = Precision::F32;
  // With checkpoint_blocks: keep each block's attention output and logsumexp from the forward
  // for its backward (tokens x q_dim floats per block) instead of recomputing them, and with
  // bf16 attention products its rounded q, k, v (tokens x (q_dim + 2 kv_dim) bf16 values), so
  // that the recompute skips the q/k/v products and rope.
  bool keep_attention = true;
};

class LlamaModel {
 public:
  // Checks every weight against the config (shapes, dtypes); throws naming the tensor.
  LlamaModel(ModelConfig config, LlamaWeights weights);

  static LlamaModel from_gguf(const GgufFile& file);
  static LlamaModel from_gguf(const std::string& path);
  // A Hugging Face directory: config.json + model.safetensors or model.safetensors.index.json.
  static LlamaModel from_hf(const std::string& dir);
  // A .gguf file or a Hugging Face directory.
  static LlamaModel load(const std::string& path);

  const ModelConfig& config() const { return config_; }
  const LlamaWeights& weights() const { return weights_; }
  LlamaWeights& weights() { return weights_; }
  // Every block's seven projections, block by block: where adapters are attached.
  std::vector<Linear*> projections();
  // Every Linear an adapter can go on: projections() and then the LM head (weights().output).
  std::vector<Linear*> adaptable();
  // True when the LM head's weight is the token embedding's tensor (tied and not merged).
  bool output_tied() const;

  // Token embeddings [B, T, D] (f32).
  Tensor embed(const TokenBatch& batch) const;
  // [B, T, D] after the final norm. The batch's ids are embedded, then every block runs.
  Tensor forward_hidden(const TokenBatch& batch, const ForwardOptions& options = {}) const;
  // The same from given embeddings x [B, T, D] (the batch's ids are not read; its positions and
  // document ids are). Lets a caller take the gradient with respect to the embeddings.
  Tensor forward_from_embeddings(const Tensor& x, const TokenBatch& batch,
                                 const ForwardOptions& options = {}) const;

  // Mean cross-entropy of hidden [..., D] rows against targets (one per row, already shifted;
  // ignore_index rows do not count), through the output weight, chunked over rows.
  CrossEntropyResult loss(const Tensor& hidden, std::span<const int32_t> targets,
                          int32_t ignore_index = -100, Precision precision = Precision::Auto,
                          int64_t chunk_rows = 0) const;
  // Full logits [..., V] of hidden [..., D]: for small evaluations only.
  Tensor logits(const Tensor& hidden, Precision precision = Precision::Auto) const;

  // cos/sin for these positions with this model's rope (theta, scaling, layout).
  std::shared_ptr<const RopeTable> rope_table(std::span<const int32_t> positions) const;
  // One block on x [B, T, D], recorded op by op (no checkpoint). document_ids as in TokenBatch.
  // OutputUse::GraphOnly (a checkpoint's recompute, where only the graph is used): the down
  // projection's output values are not computed, so the returned values are not the block's;
  // with keep_attention and bf16 attention products neither are q, k and v (attention takes
  // what it kept from the first run).
  // keep_attention: AttentionOptions::keep_for_recompute (inside a checkpoint).
  Tensor block_forward(int64_t layer, const Tensor& x, const std::shared_ptr<const RopeTable>& rope,
                       std::span<const int32_t> document_ids, Precision precision,
                       Precision attention_precision = Precision::F32,
                       OutputUse use = OutputUse::Read, bool keep_attention = false) const;

 private:
  void check_batch(const TokenBatch& batch) const;

  ModelConfig config_;
  LlamaWeights weights_;
  std::vector<float> inv_freq_;  // rope frequencies after every scaling
};

}  // namespace loom
