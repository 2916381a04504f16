// Inference without the tape: a decoder with a key/value cache for generation, the generation
// loop, and windowed perplexity for `loom eval`.
//
// KvCacheDecoder runs the same block as LlamaModel::block_forward (norms, projections through
// Linear::forward so biases and attached adapters apply, rope, grouped-query attention, SwiGLU)
// under NoGradGuard, but its attention reads the keys and values of every earlier position from
// a per-layer f32 cache instead of recomputing them:
//   prefill(prompt)  the prompt's tokens in one batch (M = prompt length for every projection),
//                    their keys/values appended to the cache; logits of the last token only.
//   decode(token)    one token at position n_past(), appended likewise; logits [V].
// Rope angles come from LlamaModel::rope_table at the absolute positions, so the cached keys are
// exactly the keys the full forward computes. Logits match LlamaModel::forward_hidden + logits
// on the same sequence up to f32 summation order (tests/test_inference.cpp).
//
// Precision: Precision::F32 by default: quantized weights are dequantized exactly to f32 and the
// products run in f32. Precision::Auto uses the bf16 kernels of the training path. llama.cpp
// instead rounds the activations of every quantized product to 8 bits (Q8_1 / Q8_0 blocks) and
// keeps an f16 KV cache; on SmolLM2 that 8-bit rounding turns any 1-ulp difference into rounding
// flips that grow layer after layer, so the two engines' logits differ by about as much as
// llama.cpp's own logits differ between its f16 and f32 KV cache (max 1.1-1.4, mean 0.15-0.2 on
// logits up to ~30). tests/test_inference.cpp (LlamaCpp.*) states what is compared.
//
// Perplexity (evaluate_perplexity) cuts the token stream into non-overlapping windows of `ctx`
// tokens (the tail shorter than a window is dropped), runs each window from an empty context
// (positions 0..ctx-1) through the training forward without recording, and scores predictions
// with the chunked cross-entropy:
//   SecondHalf (default)  llama.cpp's `perplexity` tool: in each window only the predictions made
//                         at positions ctx/2 .. ctx-2 count (tokens ctx/2+1 .. ctx-1), so every
//                         scored token sees at least ctx/2 tokens of context; ctx-1-ctx/2 per
//                         window (255 of 512). Numbers are comparable with llama.cpp's.
//   All                   every prediction in the window: positions 0 .. ctx-2 (ctx-1 per window).
// Like llama.cpp, a model whose tokenizer adds BOS gets each window's first token replaced by BOS
// (PerplexityOptions::first_token_override; `loom eval` sets it); SmolLM2 adds none.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "layers/chat_format.h"
#include "layers/llama.h"
#include "layers/sampling.h"

namespace loom {

struct DecoderOptions {
  // Positions the cache holds (prompt + generated tokens). 0: the model's
  // max_position_embeddings (or 4096 when the model does not say).
  int64_t context_size = 0;
  Precision precision = Precision::F32;
};

class KvCacheDecoder {
 public:
  // The model must outlive the decoder. The cache grows with the positions it holds, up to
  // cache_bytes().
  KvCacheDecoder(const LlamaModel& model, const DecoderOptions& options = {});

  // Runs `tokens` at positions n_past() .. n_past() + n - 1 and appends their keys and values.
  // Returns the logits of the last of them [V]. Throws when the cache would overflow.
  std::vector<float> prefill(std::span<const int32_t> tokens);
  // The same, returning the logits of every one of them, row-major [n x V].
  std::vector<float> prefill_all(std::span<const int32_t> tokens);
  // One token: prefill of a single id.
  std::vector<float> decode(int32_t token);

  int64_t n_past() const { return n_past_; }
  int64_t context_size() const { return context_size_; }
  int64_t cache_bytes() const;  // when full: 2 x layers x kv_dim x context_size f32
  Precision precision() const { return precision_; }
  void reset() { n_past_ = 0; }  // forget the cached positions (the memory is kept)

 private:
  // Final-norm hidden states [1, n, D] of the new tokens; appends to the cache.
  Tensor run(std::span<const int32_t> tokens);
  // Attention of the new queries q [1, n, Hq, Dh] over cached positions 0 .. n_past_+n-1 of
  // `layer`, whose keys/values for the new tokens are already stored -> [1, n, Hq*Dh].
  Tensor attend(int64_t layer, const Tensor& q, int64_t n) const;
  void store(int64_t layer, const Tensor& k, const Tensor& v, int64_t n);

  const LlamaModel& model_;
  Precision precision_;
  int64_t context_size_ = 0;
  int64_t n_past_ = 0;
  // Per layer, [position][kv head][head_dim] (rows of kv_dim): one head's keys are a matrix with
  // leading dimension kv_dim. Grown as positions are added (doubling, at most context_size).
  std::vector<std::vector<float>> k_cache_, v_cache_;
};

// ---- generation -------------------------------------------------------------------------------

struct GenerationOptions {
  int64_t max_tokens = 256;       // generated tokens at most (stop tokens not counted)
  SamplingParams sampling;
  std::vector<int32_t> stop_ids;  // generation ends when one is sampled (it is not emitted)
};

struct GenerationStats {
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;  // emitted through on_token
  int64_t decode_steps = 0;      // single-token forwards (generated_tokens - 1, or fewer)
  double prefill_seconds = 0;
  double decode_seconds = 0;
  bool stopped_by_token = false;    // a stop id was sampled
  bool stopped_by_context = false;  // the cache was full
  double prefill_tokens_per_second() const;
  double decode_tokens_per_second() const;
};

// Prefills `prompt` (not empty) into a decoder (which may already hold earlier turns), then
// samples up to max_tokens tokens, calling on_token with each as soon as it is chosen; on_token
// returning false ends the generation.
GenerationStats generate(KvCacheDecoder& decoder, std::span<const int32_t> prompt,
                         const GenerationOptions& options,
                         const std::function<bool(int32_t)>& on_token);

// Greedy continuation of `prompt`, n tokens, without stop ids: for parity tests.
std::vector<int32_t> greedy_tokens(const LlamaModel& model, std::span<const int32_t> prompt,
                                   int64_t n, const DecoderOptions& options = {});

// ---- chat prompts -----------------------------------------------------------------------------

// The messages rendered as the model's chat template would render them with
// add_generation_prompt, in the built-in format the template is recognized as
// (layers/chat_format.h; inst_is_token: the vocabulary has [INST] as a token, which makes a
// Mistral template mistral-v3). ChatML: a default system message written literally in the
// template (SmolLM2: "You are a helpful AI assistant named SmolLM...") is put first when the
// messages have none, as the template does (unless default_system is false). A template of
// another format, or none, throws saying so: loom does not evaluate Jinja. Tokenize the pieces
// with encode_chat_pieces, as training does.
std::vector<ChatPiece> chat_prompt_pieces(const std::string& chat_template, bool inst_is_token,
                                          const std::vector<ChatMessage>& messages,
                                          bool default_system = true);
// The same pieces' texts joined.
std::string render_chat_prompt(const std::string& chat_template,
                               const std::vector<ChatMessage>& messages, bool default_system = true,
                               bool inst_is_token = false);

// ---- perplexity -------------------------------------------------------------------------------

enum class PerplexityScoring : uint8_t { SecondHalf, All };
std::string_view perplexity_scoring_name(PerplexityScoring s);  // "second-half", "all"
PerplexityScoring parse_perplexity_scoring(std::string_view name);  // throws naming --scoring

struct PerplexityOptions {
  int64_t ctx = 512;    // tokens per window
  int64_t batch = 1;    // windows per forward
  int64_t max_windows = 0;  // 0: every whole window of the text
  PerplexityScoring scoring = PerplexityScoring::SecondHalf;
  // Of the forward's products: Auto (bf16 where the CPU has AVX512_BF16) is faster than F32 and
  // moves SmolLM2's perplexity by 0.03% (bench/README.md).
  Precision precision = Precision::Auto;
  // Replace each window's first token with this id (llama.cpp does so with BOS when the model's
  // add_bos_token is true); -1: keep the text's token.
  int32_t first_token_override = -1;
};

struct PerplexityResult {
  int64_t windows = 0;
  int64_t tokens_evaluated = 0;  // windows * ctx: tokens run through the model
  int64_t tokens_scored = 0;     // predictions counted
  double nll_sum = 0;            // sum of -log p over the scored predictions
  double seconds = 0;
  std::vector<double> window_nll;  // per window: sum of -log p of its scored predictions
  double perplexity() const;
  double tokens_per_second() const;  // tokens_evaluated / seconds
};

// Windows that evaluate_perplexity will run for this many tokens.
int64_t perplexity_windows(int64_t n_tokens, const PerplexityOptions& options);
// Predictions counted per window.
int64_t scored_per_window(const PerplexityOptions& options);

// progress (optional) is called after each batch of windows with the totals so far.
PerplexityResult evaluate_perplexity(const LlamaModel& model, std::span<const int32_t> tokens,
                                     const PerplexityOptions& options,
                                     const std::function<void(const PerplexityResult&)>& progress = {});

}  // namespace loom
