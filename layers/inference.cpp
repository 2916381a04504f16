// The key/value-cache decoder and the generation loop (layers/inference.h). Perplexity and chat
// prompts are in layers/inference_eval.cpp.
#include "layers/inference.h"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <limits>

#include "autograd/check.h"
#include "autograd/kernels/cpu.h"
#include "autograd/tape.h"

namespace loom {

namespace {

constexpr int64_t kDefaultContext = 4096;
constexpr int64_t kQueryBlock = 128;  // query tokens per attention task (bounds the score matrix)

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

KvCacheDecoder::KvCacheDecoder(const LlamaModel& model, const DecoderOptions& options)
    : model_(model), precision_(options.precision) {
  const ModelConfig& c = model.config();
  context_size_ = options.context_size > 0 ? options.context_size
                  : c.max_position_embeddings > 0 ? c.max_position_embeddings
                                                  : kDefaultContext;
  LOOM_CHECK(context_size_ > 0, "inference: context size {} must be positive", context_size_);
  k_cache_.resize(static_cast<size_t>(c.n_layers));
  v_cache_.resize(static_cast<size_t>(c.n_layers));
}

int64_t KvCacheDecoder::cache_bytes() const {
  const ModelConfig& c = model_.config();
  return 2 * c.n_layers * c.kv_dim() * context_size_ * static_cast<int64_t>(sizeof(float));
}

std::vector<float> KvCacheDecoder::prefill(std::span<const int32_t> tokens) {
  const Tensor hidden = run(tokens);
  const int64_t n = hidden.size(1);
  NoGradGuard no_grad;
  const Tensor last = slice(hidden, 1, n - 1, 1);
  return model_.logits(last, precision_).to_vector();
}

std::vector<float> KvCacheDecoder::prefill_all(std::span<const int32_t> tokens) {
  const Tensor hidden = run(tokens);
  NoGradGuard no_grad;
  return model_.logits(hidden, precision_).to_vector();
}

std::vector<float> KvCacheDecoder::decode(int32_t token) {
  return prefill(std::span<const int32_t>(&token, 1));
}

void KvCacheDecoder::store(int64_t layer, const Tensor& k, const Tensor& v, int64_t n) {
  // k, v [1, n, Hkv, Dh] contiguous: n rows of kv_dim, appended after the n_past_ cached rows.
  const int64_t kv_dim = model_.config().kv_dim();
  const size_t end = static_cast<size_t>((n_past_ + n) * kv_dim);
  for (auto* cache : {&k_cache_, &v_cache_}) {
    std::vector<float>& c = (*cache)[static_cast<size_t>(layer)];
    if (c.size() < end) c.resize(std::max(end, std::min(2 * c.size(), static_cast<size_t>(context_size_ * kv_dim))));
  }
  std::copy_n(k.data_f32(), n * kv_dim, k_cache_[static_cast<size_t>(layer)].data() + n_past_ * kv_dim);
  std::copy_n(v.data_f32(), n * kv_dim, v_cache_[static_cast<size_t>(layer)].data() + n_past_ * kv_dim);
}

Tensor KvCacheDecoder::attend(int64_t layer, const Tensor& q, int64_t n) const {
  const ModelConfig& c = model_.config();
  const int64_t Hq = c.n_heads, Hkv = c.n_kv_heads, Dh = c.head_dim, G = Hq / Hkv;
  const int64_t kv_dim = c.kv_dim();
  const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));
  const float* qs = q.data_f32();  // [1, n, Hq, Dh], contiguous
  Tensor out = Tensor::zeros({1, n, Hq * Dh});
  float* os = out.data_f32();
  const float* kc = k_cache_[static_cast<size_t>(layer)].data();
  const float* vc = v_cache_[static_cast<size_t>(layer)].data();
  const int64_t n_blocks = (n + kQueryBlock - 1) / kQueryBlock;
  const int64_t n_tasks = Hkv * n_blocks;
  std::exception_ptr error;
  // One task: kv head h, query tokens [i0, i1). The group's G query heads are stacked into one
  // [G * rows x Dh] matrix (row g * rows + i), scored against every key the block can see.
#pragma omp parallel for schedule(dynamic) num_threads(n_tasks > 1 ? num_threads() : 1)
  for (int64_t task = 0; task < n_tasks; ++task) {
    try {
      const int64_t h = task / n_blocks, i0 = (task % n_blocks) * kQueryBlock;
      const int64_t rows = std::min(kQueryBlock, n - i0);
      const int64_t keys = n_past_ + i0 + rows;  // the block's last query sees these
      std::vector<float> qb(static_cast<size_t>(G * rows * Dh));
      std::vector<float> scores(static_cast<size_t>(G * rows * keys));
      std::vector<float> ob(static_cast<size_t>(G * rows * Dh));
      for (int64_t g = 0; g < G; ++g)
        for (int64_t i = 0; i < rows; ++i)
          std::copy_n(qs + ((i0 + i) * Hq + h * G + g) * Dh, Dh, qb.data() + (g * rows + i) * Dh);
      const float* kh = kc + h * Dh;  // head h's keys: rows of kv_dim, Dh wide
      const float* vh = vc + h * Dh;
      sgemm(false, true, G * rows, keys, Dh, scale, qb.data(), Dh, kh, kv_dim, 0.0f, scores.data(),
            keys);
      for (int64_t g = 0; g < G; ++g)
        for (int64_t i = 0; i < rows; ++i) {
          float* s = scores.data() + (g * rows + i) * keys;
          const int64_t visible = n_past_ + i0 + i + 1;  // causal: keys 0 .. own position
          const float mx = *std::max_element(s, s + visible);
          double total = 0;
          for (int64_t j = 0; j < visible; ++j) {
            s[j] = std::exp(s[j] - mx);
            total += s[j];
          }
          const float inv = static_cast<float>(1.0 / total);
          for (int64_t j = 0; j < visible; ++j) s[j] *= inv;
          std::fill(s + visible, s + keys, 0.0f);
        }
      sgemm(false, false, G * rows, Dh, keys, 1.0f, scores.data(), keys, vh, kv_dim, 0.0f,
            ob.data(), Dh);
      for (int64_t g = 0; g < G; ++g)
        for (int64_t i = 0; i < rows; ++i)
          std::copy_n(ob.data() + (g * rows + i) * Dh, Dh, os + ((i0 + i) * Hq + h * G + g) * Dh);
    } catch (...) {
#pragma omp critical(loom_inference_attend_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
  return out;
}

Tensor KvCacheDecoder::run(std::span<const int32_t> tokens) {
  const ModelConfig& c = model_.config();
  const int64_t n = static_cast<int64_t>(tokens.size());
  LOOM_CHECK(n > 0, "inference: no tokens to run");
  if (n_past_ + n > context_size_)
    throw Error(fmt::format("inference: {} cached + {} new tokens exceed the context of {} "
                            "positions",
                            n_past_, n, context_size_));
  if (c.sliding_window > 0 && n_past_ + n > c.sliding_window)
    throw Error(fmt::format("inference: {}: position {} is past the sliding window of {} tokens, "
                            "which loom's attention does not implement",
                            c.source, n_past_ + n - 1, c.sliding_window));
  for (int32_t id : tokens)
    if (id < 0 || id >= c.vocab_size)
      throw Error(fmt::format("inference: token id {} is outside the vocabulary of {}", id,
                              c.vocab_size));
  NoGradGuard no_grad;
  const LlamaWeights& w = model_.weights();
  std::vector<int32_t> positions(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) positions[static_cast<size_t>(i)] = static_cast<int32_t>(n_past_ + i);
  const auto rope_cs = model_.rope_table(positions);
  const int64_t Hq = c.n_heads, Hkv = c.n_kv_heads, Dh = c.head_dim;

  Tensor x = embedding(w.token_embd, tokens, {1, n});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LlamaBlock& b = w.blocks[static_cast<size_t>(l)];
    Tensor h = rms_norm(x, b.attn_norm, c.rms_norm_eps);
    Tensor q = rope(reshape(b.wq.forward(h, precision_), {1, n, Hq, Dh}), rope_cs);
    Tensor k = rope(reshape(b.wk.forward(h, precision_), {1, n, Hkv, Dh}), rope_cs);
    Tensor v = contiguous(reshape(b.wv.forward(h, precision_), {1, n, Hkv, Dh}));
    q = contiguous(q);
    k = contiguous(k);
    store(l, k, v, n);
    const Tensor a = attend(l, q, n);
    x = add(x, b.wo.forward(a, precision_));
    h = rms_norm(x, b.ffn_norm, c.rms_norm_eps);
    const Tensor m = swiglu(b.w_gate.forward(h, precision_), b.w_up.forward(h, precision_));
    x = add(x, b.w_down.forward(m, precision_));
  }
  n_past_ += n;
  return rms_norm(x, w.output_norm, c.rms_norm_eps);
}

// ---- generation -------------------------------------------------------------------------------

double GenerationStats::prefill_tokens_per_second() const {
  return prefill_seconds > 0 ? static_cast<double>(prompt_tokens) / prefill_seconds : 0.0;
}

double GenerationStats::decode_tokens_per_second() const {
  return decode_seconds > 0 ? static_cast<double>(decode_steps) / decode_seconds : 0.0;
}

GenerationStats generate(KvCacheDecoder& decoder, std::span<const int32_t> prompt,
                         const GenerationOptions& options,
                         const std::function<bool(int32_t)>& on_token) {
  LOOM_CHECK(!prompt.empty(), "generate: the prompt has no tokens");
  LOOM_CHECK(options.max_tokens >= 0, "generate: max_tokens {} must be >= 0", options.max_tokens);
  Sampler sampler(options.sampling);
  GenerationStats stats;
  stats.prompt_tokens = static_cast<int64_t>(prompt.size());
  auto t0 = std::chrono::steady_clock::now();
  std::vector<float> logits = decoder.prefill(prompt);
  stats.prefill_seconds = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  while (stats.generated_tokens < options.max_tokens) {
    // A NaN or Inf logit (damaged weights, an overflowing adapter) would make every sampler
    // pick garbage or nothing: stop with the position instead.
    for (size_t i = 0; i < logits.size(); ++i)
      if (!std::isfinite(logits[i]))
        throw Error(fmt::format(
            "generate: the logits after {} tokens hold {} (token {}): the model or adapter "
            "weights give non-finite values; check them with `loom eval` on a text",
            decoder.n_past(), logits[i], i));
    const int32_t next = sampler.sample(logits);
    if (std::find(options.stop_ids.begin(), options.stop_ids.end(), next) !=
        options.stop_ids.end()) {
      stats.stopped_by_token = true;
      break;
    }
    ++stats.generated_tokens;
    // Time spent in the caller (printing) is not decode time.
    stats.decode_seconds += seconds_since(t0);
    const bool go_on = !on_token || on_token(next);
    t0 = std::chrono::steady_clock::now();
    if (!go_on || stats.generated_tokens == options.max_tokens) break;
    if (decoder.n_past() >= decoder.context_size()) {
      stats.stopped_by_context = true;
      break;
    }
    logits = decoder.decode(next);
    ++stats.decode_steps;
  }
  stats.decode_seconds += seconds_since(t0);
  return stats;
}

std::vector<int32_t> greedy_tokens(const LlamaModel& model, std::span<const int32_t> prompt,
                                   int64_t n, const DecoderOptions& options) {
  DecoderOptions o = options;
  o.context_size = static_cast<int64_t>(prompt.size()) + n;
  KvCacheDecoder decoder(model, o);
  GenerationOptions g;
  g.max_tokens = n;
  std::vector<int32_t> out;
  generate(decoder, prompt, g, [&](int32_t id) {
    out.push_back(id);
    return true;
  });
  return out;
}

}  // namespace loom
