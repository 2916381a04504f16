// The Llama-family model: weight checks, GGUF / Hugging Face loading, forward and loss
// (layers/llama.h).
#include "layers/llama.h"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <functional>

#include "autograd/check.h"
#include "autograd/tape.h"
#include "layers/gguf.h"
#include "layers/safetensors.h"

namespace loom {

namespace {

struct ProjectionNames {
  std::string_view hf_module;  // under model.layers.N.
  std::string_view hf_short;   // PEFT target name
  std::string_view gguf;       // under blk.N.
};
constexpr ProjectionNames kProjectionNames[] = {
    {"self_attn.q_proj", "q_proj", "attn_q"},
    {"self_attn.k_proj", "k_proj", "attn_k"},
    {"self_attn.v_proj", "v_proj", "attn_v"},
    {"self_attn.o_proj", "o_proj", "attn_output"},
    {"mlp.gate_proj", "gate_proj", "ffn_gate"},
    {"mlp.up_proj", "up_proj", "ffn_up"},
    {"mlp.down_proj", "down_proj", "ffn_down"},
    {"lm_head", "lm_head", "output"}};  // Projection::Output: not under a block

const ProjectionNames& names_of(Projection p) {
  return kProjectionNames[static_cast<size_t>(p)];
}

// Fills in what a projection is from its slot in a block: the kind, layer and names.
void name_projections(LlamaBlock& b, int64_t layer) {
  for (Projection kind : kAllProjections) {
    Linear& p = *b.projections()[static_cast<size_t>(kind)];
    p.kind = kind;
    p.layer = layer;
    p.gguf_name = fmt::format("blk.{}.{}", layer, names_of(kind).gguf);
    p.hf_name = fmt::format("model.layers.{}.{}", layer, names_of(kind).hf_module);
  }
}

void name_output(Linear& output) {
  output.kind = Projection::Output;
  output.layer = -1;
  output.gguf_name = std::string(names_of(Projection::Output).gguf);
  output.hf_name = std::string(names_of(Projection::Output).hf_module);
}

}  // namespace

std::string_view projection_hf_name(Projection p) {
  return names_of(p).hf_short;
}
std::string_view projection_gguf_name(Projection p) {
  return names_of(p).gguf;
}

Tensor LinearAdapter::forward(const Linear& base, const Tensor& x, Precision precision,
                              OutputUse) const {
  // apply() may read the base output's values (DoRA rescales it): always computed.
  return apply(base, x, linear(x, base.weight, base.bias, precision), precision);
}

std::optional<LowRankTerm> LinearAdapter::low_rank_term(const Linear& base, const Tensor&) const {
  throw Error(fmt::format(
      "llama: the adapter on '{}' is not a plain low-rank update (LoRA), which is all the "
      "chunked loss can add to the LM head",
      base.hf_name));
}

Tensor Linear::forward(const Tensor& x, Precision precision, OutputUse use) const {
  return adapter ? adapter->forward(*this, x, precision, use)
                 : linear(x, weight, bias, precision, use);
}

namespace {

// The projections as one linear_group, or nothing where an adapter is not a plain low-rank term
// (DoRA): those run one by one.
std::optional<std::vector<GroupLinear>> shared_input_group(std::span<const Linear* const> linears,
                                                           const Tensor& x) {
  std::vector<GroupLinear> group;
  for (const Linear* l : linears) {
    if (l->adapter && !l->adapter->is_low_rank_term()) return std::nullopt;
    group.push_back(
        {l->weight, l->bias, l->adapter ? l->adapter->low_rank_term(*l, x) : std::nullopt});
  }
  return group;
}

}  // namespace

std::vector<Tensor> forward_shared_input(std::span<const Linear* const> linears, const Tensor& x,
                                         Precision precision, OutputUse use) {
  if (const auto group = shared_input_group(linears, x))
    return linear_group(x, *group, precision, use);
  std::vector<Tensor> out;
  for (const Linear* each : linears) out.push_back(each->forward(x, precision, use));
  return out;
}

Tensor swiglu_of_shared_input(const Linear& gate, const Linear& up, const Tensor& x,
                              Precision precision) {
  const Linear* const gate_up[] = {&gate, &up};
  if (const auto group = shared_input_group(gate_up, x))
    return linear_group_swiglu(x, *group, precision);
  return swiglu(gate.forward(x, precision), up.forward(x, precision));
}

// ---- weight checks ----------------------------------------------------------------------------

namespace {

void check_tensor(const Tensor& t, const std::string& name, const Shape& expected,
                  const std::string& source, const std::string& why) {
  if (!t.defined())
    throw Error(fmt::format("llama: {}: missing tensor '{}' (expected {}, {})", source, name,
                            shape_str(expected), why));
  if (t.shape() != expected)
    throw Error(
        fmt::format("llama: {}: tensor '{}' has shape {}, expected {} ({}): the file "
                    "contradicts its hyper-parameters",
                    source, name, shape_str(t.shape()), shape_str(expected), why));
}

// The tensor's own name, or `fallback` when it has none (undefined, or built by hand).
std::string label(const Tensor& t, const std::string& fallback) {
  return t.defined() && !t.name().empty() ? t.name() : fallback;
}

void check_norm_dtype(const Tensor& t, const std::string& name, const std::string& source) {
  const DType d = t.dtype();
  if (d != DType::F32 && d != DType::BF16 && d != DType::F16)
    throw Error(fmt::format("llama: {}: norm weight '{}' is {}; expected f32, bf16 or f16", source,
                            name, dtype_name(d)));
}

}  // namespace

LlamaModel::LlamaModel(ModelConfig config, LlamaWeights weights)
    : config_(std::move(config)), weights_(std::move(weights)) {
  const ModelConfig& c = config_;
  c.validate();
  const std::string& src = c.source;
  const int64_t D = c.hidden_size, V = c.vocab_size, I = c.intermediate_size;
  check_tensor(weights_.token_embd, label(weights_.token_embd, "token embedding"), {V, D}, src,
               fmt::format("vocab {} x hidden {}", V, D));
  check_tensor(weights_.output_norm, label(weights_.output_norm, "final norm"), {D}, src,
               fmt::format("hidden {}", D));
  check_norm_dtype(weights_.output_norm, label(weights_.output_norm, "final norm"), src);
  check_tensor(weights_.output.weight, label(weights_.output.weight, "output"), {V, D}, src,
               fmt::format("vocab {} x hidden {}", V, D));
  LOOM_CHECK(!weights_.output.bias.defined(), "llama: {}: the output projection has no bias", src);
  name_output(weights_.output);
  if (static_cast<int64_t>(weights_.blocks.size()) != c.n_layers)
    throw Error(fmt::format("llama: {}: {} blocks given, the config says {}", src,
                            weights_.blocks.size(), c.n_layers));
  const std::string heads = fmt::format("heads {} x head_dim {}", c.n_heads, c.head_dim);
  const std::string kv = fmt::format("kv heads {} x head_dim {}", c.n_kv_heads, c.head_dim);
  for (size_t l = 0; l < weights_.blocks.size(); ++l)
    name_projections(weights_.blocks[l], static_cast<int64_t>(l));
  for (const LlamaBlock& b : weights_.blocks) {
    const std::string attn_norm = label(b.attn_norm, fmt::format("blk.{}.attn_norm", b.wq.layer));
    const std::string ffn_norm = label(b.ffn_norm, fmt::format("blk.{}.ffn_norm", b.wq.layer));
    check_tensor(b.attn_norm, attn_norm, {D}, src, fmt::format("hidden {}", D));
    check_tensor(b.ffn_norm, ffn_norm, {D}, src, fmt::format("hidden {}", D));
    check_norm_dtype(b.attn_norm, attn_norm, src);
    check_norm_dtype(b.ffn_norm, ffn_norm, src);
    for (const Linear* p : b.projections()) {
      Shape expected;
      std::string why;
      switch (p->kind) {
        case Projection::Q:
          expected = {c.q_dim(), D};
          why = heads + fmt::format(" by hidden {}", D);
          break;
        case Projection::K:
        case Projection::V:
          expected = {c.kv_dim(), D};
          why = kv + fmt::format(" by hidden {}", D);
          break;
        case Projection::O:
          expected = {D, c.q_dim()};
          why = fmt::format("hidden {} by ", D) + heads;
          break;
        case Projection::Gate:
        case Projection::Up:
          expected = {I, D};
          why = fmt::format("intermediate {} by hidden {}", I, D);
          break;
        case Projection::Down:
          expected = {D, I};
          why = fmt::format("hidden {} by intermediate {}", D, I);
          break;
        case Projection::Output:  // the LM head, never in a block
          expected = {V, D};
          why = fmt::format("vocab {} by hidden {}", V, D);
          break;
      }
      const std::string name = label(p->weight, p->gguf_name + ".weight");
      check_tensor(p->weight, name, expected, src, why);
      if (p->bias.defined()) {
        const std::string bias = label(p->bias, p->gguf_name + ".bias");
        check_tensor(p->bias, bias, {expected[0]}, src, "one bias per output");
        LOOM_CHECK(p->bias.dtype() == DType::F32, "llama: bias '{}' must be f32", bias);
      }
    }
  }
  inv_freq_ = rope_inv_freq(c.rope, c.head_dim);
  if (!weights_.rope_freq_factors.empty() && weights_.rope_freq_factors.size() != inv_freq_.size())
    throw Error(fmt::format("llama: {}: rope_freqs has {} factors, expected {} (rotary dims / 2)",
                            src, weights_.rope_freq_factors.size(), inv_freq_.size()));
  for (size_t i = 0; i < inv_freq_.size(); ++i) {
    if (!weights_.rope_freq_factors.empty()) inv_freq_[i] /= weights_.rope_freq_factors[i];
    inv_freq_[i] /= c.rope_linear_factor;
  }
}

std::vector<Linear*> LlamaModel::projections() {
  std::vector<Linear*> out;
  for (LlamaBlock& b : weights_.blocks)
    for (Linear* p : b.projections()) out.push_back(p);
  return out;
}

std::vector<Linear*> LlamaModel::adaptable() {
  std::vector<Linear*> out = projections();
  out.push_back(&weights_.output);
  return out;
}

bool LlamaModel::output_tied() const {
  return weights_.output.weight.impl() == weights_.token_embd.impl();
}

// ---- loading ----------------------------------------------------------------------------------

namespace {

// Tensor names of one checkpoint format.
struct Naming {
  bool gguf;
  std::string embed() const { return gguf ? "token_embd.weight" : "model.embed_tokens.weight"; }
  std::string final_norm() const { return gguf ? "output_norm.weight" : "model.norm.weight"; }
  std::string output() const { return gguf ? "output.weight" : "lm_head.weight"; }
  std::string block(int64_t l, std::string_view stem) const {
    return gguf ? fmt::format("blk.{}.{}", l, stem) : fmt::format("model.layers.{}.{}", l, stem);
  }
  std::string attn_norm(int64_t l) const {
    return block(l, gguf ? "attn_norm.weight" : "input_layernorm.weight");
  }
  std::string ffn_norm(int64_t l) const {
    return block(l, gguf ? "ffn_norm.weight" : "post_attention_layernorm.weight");
  }
};

using Getter = std::function<Tensor(const std::string& name)>;  // undefined if absent

Tensor as_f32(Tensor t) {
  if (!t.defined() || t.dtype() == DType::F32) return t;
  Tensor out = Tensor::from_vector(t.shape(), t.to_vector());
  out.set_name(t.name());
  return out;
}

LlamaWeights load_weights(const ModelConfig& c, const Naming& n, const Getter& get) {
  auto required = [&](const std::string& name, const std::string& what) {
    Tensor t = get(name);
    if (!t.defined())
      throw Error(fmt::format("llama: {}: missing tensor '{}' ({})", c.source, name, what));
    return t;
  };
  LlamaWeights w;
  w.token_embd = required(n.embed(), "token embedding");
  w.output_norm = required(n.final_norm(), "final norm");
  w.output.weight = c.tie_word_embeddings ? w.token_embd
                                          : required(n.output(),
                                                     "output projection; the config says "
                                                     "the embeddings are not tied");
  for (int64_t l = 0; l < c.n_layers; ++l) {
    LlamaBlock b;
    b.attn_norm = required(n.attn_norm(l), "attention norm");
    b.ffn_norm = required(n.ffn_norm(l), "MLP norm");
    name_projections(b, l);
    for (Linear* p : b.projections()) {
      const Projection kind = p->kind;
      const std::string stem = n.gguf ? p->gguf_name : p->hf_name;
      p->weight = required(stem + ".weight", "projection weight");
      const bool qkv = kind == Projection::Q || kind == Projection::K || kind == Projection::V;
      const bool want_bias =
          qkv ? c.attention_qkv_bias : (kind == Projection::O && c.attention_out_bias);
      if (want_bias) p->bias = as_f32(required(stem + ".bias", "attention bias"));
    }
    w.blocks.push_back(std::move(b));
  }
  return w;
}

}  // namespace

LlamaModel LlamaModel::from_gguf(const GgufFile& file) {
  ModelConfig config = config_from_gguf(file);
  const Getter get = [&](const std::string& name) {
    return file.find_tensor(name) != nullptr ? file.tensor(name) : Tensor();
  };
  LlamaWeights w = load_weights(config, Naming{true}, get);
  if (file.find_tensor("rope_freqs.weight") != nullptr) {
    const Tensor f = file.tensor("rope_freqs.weight");
    if (f.dtype() != DType::F32)
      throw Error(fmt::format("llama: {}: rope_freqs.weight is {}, expected f32", file.path(),
                              dtype_name(f.dtype())));
    w.rope_freq_factors = f.to_vector();
  }
  return LlamaModel(std::move(config), std::move(w));
}

LlamaModel LlamaModel::from_gguf(const std::string& path) {
  return from_gguf(GgufFile::open(path));
}

LlamaModel LlamaModel::from_hf(const std::string& dir) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir))
    throw Error(
        fmt::format("llama: {} is not a directory (expected a Hugging Face model folder "
                    "with config.json and model.safetensors)",
                    dir));
  ModelConfig config = config_from_hf_json((fs::path(dir) / "config.json").string());
  const SafetensorsModel st = SafetensorsModel::open(dir);
  config.source = dir;
  const Getter get = [&](const std::string& name) {
    return st.has(name) ? st.tensor(name) : Tensor();
  };
  return LlamaModel(config, load_weights(config, Naming{false}, get));
}

LlamaModel LlamaModel::load(const std::string& path) {
  if (std::filesystem::is_directory(path)) return from_hf(path);
  return from_gguf(path);
}

// ---- forward ----------------------------------------------------------------------------------

std::shared_ptr<const RopeTable> LlamaModel::rope_table(std::span<const int32_t> positions) const {
  // The same arithmetic as make_rope_table (f32 angle = f32(position) * inv_freq, cos/sin in
  // double), over this model's frequencies, which may carry GGUF rope_freqs or linear scaling.
  auto table = std::make_shared<RopeTable>();
  const int64_t half = static_cast<int64_t>(inv_freq_.size());
  table->style = config_.rope.style;
  table->head_dim = config_.head_dim;
  table->rotary_dim = 2 * half;
  table->n_tokens = static_cast<int64_t>(positions.size());
  table->cos.resize(static_cast<size_t>(table->n_tokens * half));
  table->sin.resize(table->cos.size());
  for (int64_t t = 0; t < table->n_tokens; ++t) {
    const float pos = static_cast<float>(positions[static_cast<size_t>(t)]);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = pos * inv_freq_[static_cast<size_t>(i)];
      table->cos[static_cast<size_t>(t * half + i)] =
          static_cast<float>(std::cos(static_cast<double>(angle)));
      table->sin[static_cast<size_t>(t * half + i)] =
          static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
  return table;
}

Tensor LlamaModel::block_forward(int64_t layer, const Tensor& x,
                                 const std::shared_ptr<const RopeTable>& rope_cs,
                                 std::span<const int32_t> document_ids, Precision precision,
                                 Precision attention_precision, OutputUse use,
                                 bool keep_attention) const {
  const LlamaBlock& b = weights_.blocks.at(static_cast<size_t>(layer));
  const ModelConfig& c = config_;
  const int64_t B = x.size(0), T = x.size(1);
  Tensor h = rms_norm(x, b.attn_norm, c.rms_norm_eps);
  // In a recompute whose attention kept its bf16 operands, nothing reads q, k, v.
  const bool recompute = use == OutputUse::GraphOnly;
  const OutputUse qkv_use =
      recompute && keep_attention && resolve_precision(attention_precision) == Precision::BF16
          ? OutputUse::GraphOnly
          : OutputUse::Read;
  const Linear* const qkv_proj[] = {&b.wq, &b.wk, &b.wv};
  const std::vector<Tensor> qkv = forward_shared_input(qkv_proj, h, precision, qkv_use);
  Tensor q = rope(reshape(qkv[0], {B, T, c.n_heads, c.head_dim}), rope_cs, qkv_use);
  Tensor k = rope(reshape(qkv[1], {B, T, c.n_kv_heads, c.head_dim}), rope_cs, qkv_use);
  Tensor v = reshape(qkv[2], {B, T, c.n_kv_heads, c.head_dim});
  AttentionOptions attn;
  attn.causal = true;
  attn.document_ids = document_ids;
  attn.precision = attention_precision;
  attn.keep_for_recompute = keep_attention;
  Tensor a = reshape(attention(q, k, v, attn), {B, T, c.q_dim()});
  Tensor x1 = add(x, b.wo.forward(a, precision));
  h = rms_norm(x1, b.ffn_norm, c.rms_norm_eps);
  Tensor m = swiglu_of_shared_input(b.w_gate, b.w_up, h, precision);
  return add(x1, b.w_down.forward(m, precision, use), use);
}

void LlamaModel::check_batch(const TokenBatch& batch) const {
  const int64_t B = batch.batch, T = batch.seq_len;
  LOOM_CHECK(B > 0 && T > 0, "llama: batch {} x seq_len {} must be positive", B, T);
  auto fits = [&](std::span<const int32_t> s) {
    const int64_t n = static_cast<int64_t>(s.size());
    return n == 0 || n == T || n == B * T;
  };
  LOOM_CHECK(fits(batch.positions), "llama: {} positions for a batch of {} x {}; expected {} or {}",
             batch.positions.size(), B, T, T, B * T);
  LOOM_CHECK(fits(batch.document_ids),
             "llama: {} document ids for a batch of {} x {}; expected {} or {}",
             batch.document_ids.size(), B, T, T, B * T);
  if (config_.sliding_window > 0 && T > config_.sliding_window)
    throw Error(
        fmt::format("llama: {}: sequence length {} exceeds the sliding window of {} "
                    "tokens, which loom's attention does not implement; use sequences of "
                    "at most {} tokens",
                    config_.source, T, config_.sliding_window, config_.sliding_window));
}

Tensor LlamaModel::embed(const TokenBatch& batch) const {
  check_batch(batch);
  LOOM_CHECK(static_cast<int64_t>(batch.ids.size()) == batch.batch * batch.seq_len,
             "llama: {} token ids for a batch of {} x {}", batch.ids.size(), batch.batch,
             batch.seq_len);
  return embedding(weights_.token_embd, batch.ids, {batch.batch, batch.seq_len});
}

Tensor LlamaModel::forward_hidden(const TokenBatch& batch, const ForwardOptions& options) const {
  return forward_from_embeddings(embed(batch), batch, options);
}

Tensor LlamaModel::forward_from_embeddings(const Tensor& x_in, const TokenBatch& batch,
                                           const ForwardOptions& options) const {
  check_batch(batch);
  const int64_t B = batch.batch, T = batch.seq_len;
  LOOM_CHECK(x_in.dim() == 3 && x_in.size(0) == B && x_in.size(1) == T &&
                 x_in.size(2) == config_.hidden_size,
             "llama: embeddings {} do not match the batch: expected [{}, {}, {}]",
             shape_str(x_in.shape()), B, T, config_.hidden_size);
  std::vector<int32_t> default_positions;
  std::span<const int32_t> positions = batch.positions;
  if (positions.empty()) {
    default_positions.resize(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t)
      default_positions[static_cast<size_t>(t)] = static_cast<int32_t>(t);
    positions = default_positions;
  }
  const auto rope_cs = rope_table(positions);
  // Owned by the recorded blocks: their recompute runs after the caller's spans are gone.
  auto docs = std::make_shared<const std::vector<int32_t>>(batch.document_ids.begin(),
                                                           batch.document_ids.end());
  const Precision precision = options.precision, attn = options.attention_precision;
  Tensor x = x_in;
  for (int64_t l = 0; l < config_.n_layers; ++l) {
    if (options.checkpoint_blocks) {
      // The recompute's output only carries the graph: its last product is skipped.
      auto fn = [this, l, rope_cs, docs, precision, attn, keep = options.keep_attention](
                    const std::vector<Tensor>& in, CheckpointRun run) {
        return block_forward(
            l, in[0], rope_cs, *docs, precision, attn,
            run == CheckpointRun::Recompute ? OutputUse::GraphOnly : OutputUse::Read, keep);
      };
      x = checkpoint(fn, {x}, fmt::format("llama block {}", l));
    } else {
      x = block_forward(l, x, rope_cs, *docs, precision, attn);
    }
  }
  return rms_norm(x, weights_.output_norm, config_.rms_norm_eps);
}

CrossEntropyResult LlamaModel::loss(const Tensor& hidden, std::span<const int32_t> targets,
                                    int32_t ignore_index, Precision precision,
                                    int64_t chunk_rows) const {
  CrossEntropyOptions o;
  o.ignore_index = ignore_index;
  o.precision = precision;
  o.chunk_rows = chunk_rows;
  const Linear& head = weights_.output;
  if (head.adapter) o.low_rank = head.adapter->low_rank_term(head, hidden);
  return cross_entropy_chunked(hidden, head.weight, targets, o);
}

Tensor LlamaModel::logits(const Tensor& hidden, Precision precision) const {
  return weights_.output.forward(hidden, precision);
}

}  // namespace loom
