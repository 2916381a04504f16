// The Llama-family model: parity with Hugging Face transformers on tiny random llama / mistral /
// qwen2 checkpoints (goldens by scripts/make_hf_golden.py), config and safetensors parsing, bad
// files, the adapter attach point, and the real SmolLM2 GGUF when scripts/fetch_models.sh has
// fetched it.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "autograd/check.h"
#include "autograd/tape.h"
#include "layers/gguf.h"
#include "layers/llama.h"
#include "layers/safetensors.h"
#include "layers/tokenizer.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path golden_dir() {
  return fs::path(LOOM_SOURCE_DIR) / "tests" / "golden";
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << p;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << p;
}

// A fresh folder under the system temp dir, removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("loom_test_llama_" + std::to_string(::getpid()) + "_" + std::to_string(counter()++));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  static int& counter() {
    static int n = 0;
    return n;
  }
};

// Errors compared to a reference: max |a - b|, and that over max |b| (the tensor's scale).
struct Diff {
  double max_abs = 0, scale = 0;
  double rel() const { return max_abs / std::max(scale, 1e-30); }
};
Diff diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  Diff d;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    d.max_abs = std::max(d.max_abs, static_cast<double>(std::fabs(a[i] - b[i])));
    d.scale = std::max(d.scale, static_cast<double>(std::fabs(b[i])));
  }
  return d;
}

// The message of the loom::Error fn throws (a test failure if it throws none).
std::string expect_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a loom::Error";
  return "";
}

// ---- parity with Hugging Face ------------------------------------------------------------------

struct Golden {
  json meta;
  SafetensorsFile tensors;
  std::vector<int32_t> ids, positions, documents, targets;
  int64_t batch = 0, seq_len = 0;
  TokenBatch token_batch() const { return TokenBatch{ids, batch, seq_len, positions, documents}; }
  std::vector<float> values(const char* name) const { return tensors.tensor(name).to_vector(); }
};

Golden load_golden(const std::string& name) {
  const fs::path dir = golden_dir();
  Golden g{json::parse(read_file(dir / (name + "_golden.json"))),
           SafetensorsFile::open((dir / (name + "_golden.safetensors")).string()),
           {},
           {},
           {},
           {},
           0,
           0};
  g.ids = g.meta["input_ids"].get<std::vector<int32_t>>();
  g.positions = g.meta["position_ids"].get<std::vector<int32_t>>();
  if (!g.meta["document_ids"].is_null())
    g.documents = g.meta["document_ids"].get<std::vector<int32_t>>();
  g.targets = g.meta["targets"].get<std::vector<int32_t>>();
  g.batch = g.meta["batch"].get<int64_t>();
  g.seq_len = g.meta["seq_len"].get<int64_t>();
  return g;
}

struct RunResult {
  std::vector<float> hidden, logits, grad_hidden, grad_embeddings;
  double loss = 0;
  int64_t n_tokens = 0;
};

// Forward, loss and backward as training runs them. d loss / d hidden comes from a leaf cut at
// the hidden states; d loss / d embeddings by back-propagating that through every block.
RunResult run_model(const LlamaModel& model, const TokenBatch& batch, const ForwardOptions& opts,
                    std::span<const int32_t> targets) {
  RunResult r;
  Tensor emb = model.embed(batch).detach().set_requires_grad(true);
  Tensor hidden = model.forward_from_embeddings(emb, batch, opts);
  Tensor cut = hidden.detach().set_requires_grad(true);
  CrossEntropyResult ce = model.loss(cut, targets, -100, opts.precision);
  ce.loss.backward();
  hidden.backward(cut.grad());
  r.hidden = hidden.to_vector();
  r.loss = ce.loss.item();
  r.n_tokens = ce.n_tokens;
  r.grad_hidden = cut.grad().to_vector();
  r.grad_embeddings = emb.grad().to_vector();
  NoGradGuard no_grad;
  r.logits = model.logits(cut.detach(), opts.precision).to_vector();
  return r;
}

class HfParity : public ::testing::TestWithParam<std::string> {};

// Tolerances. The goldens are float64 runs of the same weights (transformers keeps its norms,
// softmax and rope tables in f32), loom computes in f32 with Precision::F32: what differs is f32
// rounding through two blocks, a few 1e-7 relative per op, growing with the dot-product lengths
// (64-128 terms) and the residual stream; measured, under 1e-6 of each tensor's largest value.
// 1e-5 of that scale leaves a 10x margin and still catches any real error (a wrong rope pair,
// bias, mask, scale or a bf16-rounded product moves values by 1e-4 .. 1e-1). The loss is a mean
// of ~20 log-softmaxes, measured within 1e-7 relative: 1e-6.
constexpr double kRelTol = 1e-5;
constexpr double kLossRelTol = 1e-6;

TEST_P(HfParity, LogitsLossAndHiddenGradientsMatchTransformers) {
  const std::string name = GetParam();
  const Golden g = load_golden(name);
  const LlamaModel model =
      LlamaModel::from_hf((golden_dir() / g.meta["model_dir"].get<std::string>()).string());
  EXPECT_EQ(model.config().architecture, g.meta["architecture"].get<std::string>());
  const RunResult r = run_model(model, g.token_batch(), {true, Precision::F32}, g.targets);

  const double ref_loss = g.meta["loss"].get<double>();
  EXPECT_EQ(r.n_tokens, g.meta["n_tokens"].get<int64_t>());
  EXPECT_NEAR(r.loss, ref_loss, kLossRelTol * ref_loss) << name;
  const std::pair<const char*, const std::vector<float>*> checks[] = {
      {"hidden", &r.hidden},
      {"logits", &r.logits},
      {"grad_hidden", &r.grad_hidden},
      {"grad_embeddings", &r.grad_embeddings}};
  std::printf("[hf parity] %-10s loss %.7f (ref %.7f, rel err %.2e)\n", name.c_str(), r.loss,
              ref_loss, std::fabs(r.loss - ref_loss) / ref_loss);
  for (const auto& [what, got] : checks) {
    const Diff d = diff(*got, g.values(what));
    std::printf("[hf parity] %-10s %-16s max abs err %.3e, scale %.3e, rel %.3e\n", name.c_str(),
                what, d.max_abs, d.scale, d.rel());
    EXPECT_LE(d.rel(), kRelTol) << name << " " << what << ": max abs err " << d.max_abs
                                << " over scale " << d.scale;
  }
}

INSTANTIATE_TEST_SUITE_P(Golden, HfParity,
                         ::testing::Values("hf_llama", "hf_llama_tied", "hf_llama3", "hf_mistral",
                                           "hf_qwen2"),
                         [](const auto& info) { return info.param.substr(3); });

TEST(LlamaModel, LoadsWhatTheGoldenConfigsSay) {
  const LlamaModel tied = LlamaModel::from_hf((golden_dir() / "hf_llama_tied").string());
  EXPECT_TRUE(tied.config().tie_word_embeddings);
  EXPECT_EQ(tied.weights().output.weight.impl(), tied.weights().token_embd.impl());
  EXPECT_TRUE(tied.config().attention_out_bias);
  const LlamaModel l3 = LlamaModel::from_hf((golden_dir() / "hf_llama3").string());
  ASSERT_TRUE(l3.config().rope.llama3_scaling.has_value());
  EXPECT_EQ(l3.config().rope.llama3_scaling->original_max_position_embeddings, 64);
  const LlamaModel mistral = LlamaModel::from_hf((golden_dir() / "hf_mistral").string());
  EXPECT_EQ(mistral.config().head_dim, 32);
  EXPECT_EQ(mistral.weights().blocks[0].wq.weight.dtype(), DType::BF16);  // kept, not widened
  EXPECT_EQ(mistral.config().sliding_window, 4096);
  const LlamaModel qwen = LlamaModel::from_hf((golden_dir() / "hf_qwen2").string());
  EXPECT_EQ(qwen.weights().blocks[1].w_down.weight.dtype(), DType::F16);
  EXPECT_TRUE(qwen.weights().blocks[1].wk.bias.defined());
  EXPECT_FALSE(qwen.weights().blocks[1].wo.bias.defined());
  EXPECT_EQ(qwen.config().rope.style, RopeStyle::Half);
  EXPECT_FALSE(qwen.config().describe().empty());
}

TEST(LlamaModel, CheckpointingAndIdsPathGiveTheSameGradients) {
  const Golden g = load_golden("hf_mistral");  // packed documents
  const LlamaModel model = LlamaModel::from_hf((golden_dir() / "hf_mistral").string());
  const RunResult on = run_model(model, g.token_batch(), {true, Precision::F32}, g.targets);
  const RunResult off = run_model(model, g.token_batch(), {false, Precision::F32}, g.targets);
  EXPECT_EQ(on.loss, off.loss);
  EXPECT_LE(diff(on.grad_embeddings, off.grad_embeddings).max_abs, 0.0);
  // The ids path embeds the same way.
  NoGradGuard no_grad;
  const Tensor h = model.forward_hidden(g.token_batch(), {true, Precision::F32});
  EXPECT_LE(diff(h.to_vector(), on.hidden).max_abs, 0.0);
}

TEST(LlamaModel, Bf16ComputeStaysCloseToF32) {
  if (resolve_precision(Precision::Auto) != Precision::BF16) GTEST_SKIP() << "no bf16 GEMM here";
  const Golden g = load_golden("hf_llama");
  const LlamaModel model = LlamaModel::from_hf((golden_dir() / "hf_llama").string());
  const RunResult r = run_model(model, g.token_batch(), {true, Precision::BF16}, g.targets);
  const double ref = g.meta["loss"].get<double>();
  EXPECT_NEAR(r.loss, ref, 1e-2 * ref);  // bf16 keeps 8 mantissa bits: ~0.4% per product
  EXPECT_LE(diff(r.logits, g.values("logits")).rel(), 3e-2);
}

// ---- a GGUF written from the golden llama3 weights, as llama.cpp's converter would ------------

// GGUF llama files hold Q/K rows permuted for llama.cpp's interleaved rope: within each head, row
// 2i+j of the file is row j*hd/2+i of the Hugging Face weight.
std::vector<float> permute_for_interleaved(const Tensor& w, int64_t n_heads) {
  const int64_t rows = w.size(0), cols = w.size(1), hd = rows / n_heads;
  const std::vector<float> v = w.to_vector();
  std::vector<float> out(v.size());
  for (int64_t h = 0; h < n_heads; ++h)
    for (int64_t i = 0; i < hd / 2; ++i)
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t dst = h * hd + 2 * i + j, src = h * hd + j * (hd / 2) + i;
        std::memcpy(&out[static_cast<size_t>(dst * cols)], &v[static_cast<size_t>(src * cols)],
                    static_cast<size_t>(cols) * sizeof(float));
      }
  return out;
}

struct GgufWriter {
  std::string out;
  void raw(const void* p, size_t n) { out.append(static_cast<const char*>(p), n); }
  void u32(uint32_t v) { raw(&v, 4); }
  void u64(uint64_t v) { raw(&v, 8); }
  void str(const std::string& s) {
    u64(s.size());
    out += s;
  }
  void kv_u32(const std::string& k, uint32_t v) {
    str(k);
    u32(4);
    u32(v);
  }
  void kv_f32(const std::string& k, float v) {
    str(k);
    u32(6);
    raw(&v, 4);
  }
  void kv_str(const std::string& k, const std::string& v) {
    str(k);
    u32(8);
    str(v);
  }
  void pad() {
    while (out.size() % 32) out.push_back('\0');
  }
};

struct GgufTensorData {
  std::string name;
  Shape shape;  // PyTorch order
  std::vector<float> values;
};

// A GGUF v3 llama file (f32 tensors) with the golden llama3 model's hyper-parameters.
std::string gguf_bytes(const std::string& arch, const std::vector<GgufTensorData>& tensors) {
  GgufWriter w;
  w.raw("GGUF", 4);
  w.u32(3);
  w.u64(tensors.size());
  w.u64(11);
  w.kv_str("general.architecture", arch);
  const std::string p = arch + ".";
  w.kv_u32(p + "block_count", 2);
  w.kv_u32(p + "context_length", 512);
  w.kv_u32(p + "embedding_length", 64);
  w.kv_u32(p + "feed_forward_length", 128);
  w.kv_u32(p + "attention.head_count", 4);
  w.kv_u32(p + "attention.head_count_kv", 2);
  w.kv_f32(p + "attention.layer_norm_rms_epsilon", 1e-5f);
  w.kv_f32(p + "rope.freq_base", 500000.0f);
  w.kv_u32(p + "rope.dimension_count", 16);
  w.kv_u32(p + "vocab_size", 256);
  uint64_t offset = 0;
  for (const GgufTensorData& t : tensors) {
    w.str(t.name);
    w.u32(static_cast<uint32_t>(t.shape.size()));
    for (auto d = t.shape.rbegin(); d != t.shape.rend(); ++d) w.u64(static_cast<uint64_t>(*d));
    w.u32(0);  // GGML_TYPE_F32
    w.u64(offset);
    offset += (t.values.size() * 4 + 31) / 32 * 32;
  }
  w.pad();
  for (const GgufTensorData& t : tensors) {
    w.raw(t.values.data(), t.values.size() * 4);
    w.pad();
  }
  return w.out;
}

// The golden llama3 model as llama.cpp's converter writes it: GGUF names, Q/K permuted, and the
// Llama-3 scaling as a rope_freqs.weight tensor of per-frequency divisors.
std::vector<GgufTensorData> llama3_as_gguf() {
  const LlamaModel hf = LlamaModel::from_hf((golden_dir() / "hf_llama3").string());
  const ModelConfig& c = hf.config();
  const LlamaWeights& w = hf.weights();
  std::vector<GgufTensorData> out = {
      {"token_embd.weight", w.token_embd.shape(), w.token_embd.to_vector()},
      {"output_norm.weight", w.output_norm.shape(), w.output_norm.to_vector()},
      {"output.weight", w.output.weight.shape(), w.output.weight.to_vector()}};
  RopeConfig plain = c.rope;
  plain.llama3_scaling.reset();
  const std::vector<float> unscaled = rope_inv_freq(plain, c.head_dim);
  const std::vector<float> scaled = rope_inv_freq(c.rope, c.head_dim);
  std::vector<float> factors(unscaled.size());
  for (size_t i = 0; i < factors.size(); ++i) factors[i] = unscaled[i] / scaled[i];
  out.push_back({"rope_freqs.weight", {static_cast<int64_t>(factors.size())}, factors});
  for (const LlamaBlock& b : w.blocks) {
    const std::string blk = "blk." + std::to_string(b.wq.layer) + ".";
    out.push_back({blk + "attn_norm.weight", b.attn_norm.shape(), b.attn_norm.to_vector()});
    out.push_back({blk + "ffn_norm.weight", b.ffn_norm.shape(), b.ffn_norm.to_vector()});
    for (const Linear* p : b.projections()) {
      std::vector<float> v =
          p->kind == Projection::Q   ? permute_for_interleaved(p->weight, c.n_heads)
          : p->kind == Projection::K ? permute_for_interleaved(p->weight, c.n_kv_heads)
                                     : p->weight.to_vector();
      out.push_back({p->gguf_name + ".weight", p->weight.shape(), std::move(v)});
    }
  }
  return out;
}

TEST(LlamaModel, GgufLlamaWithPermutedQkAndRopeFreqsMatchesTransformers) {
  TempDir tmp;
  const std::string path = (tmp.path / "llama3.gguf").string();
  write_file(path, gguf_bytes("llama", llama3_as_gguf()));
  const LlamaModel model = LlamaModel::from_gguf(path);
  EXPECT_EQ(model.config().rope.style, RopeStyle::Interleaved);
  EXPECT_FALSE(model.config().tie_word_embeddings);
  EXPECT_EQ(model.weights().rope_freq_factors.size(), 8u);
  const Golden g = load_golden("hf_llama3");
  const RunResult r = run_model(model, g.token_batch(), {true, Precision::F32}, g.targets);
  EXPECT_NEAR(r.loss, g.meta["loss"].get<double>(), kLossRelTol * g.meta["loss"].get<double>());
  EXPECT_LE(diff(r.logits, g.values("logits")).rel(), kRelTol);
  EXPECT_LE(diff(r.grad_embeddings, g.values("grad_embeddings")).rel(), kRelTol);
}

TEST(LlamaModel, BadGgufFilesGetClearErrors) {
  TempDir tmp;
  const std::string path = (tmp.path / "bad.gguf").string();
  auto load_error = [&](const std::string& arch, const std::vector<GgufTensorData>& ts) {
    write_file(path, gguf_bytes(arch, ts));
    return expect_error([&] { LlamaModel::from_gguf(path); });
  };
  std::vector<GgufTensorData> ts = llama3_as_gguf();
  for (GgufTensorData& t : ts)
    if (t.name == "blk.1.attn_v.weight") t.shape = {64, 32};
  std::string msg = load_error("llama", ts);
  EXPECT_NE(
      msg.find("tensor 'blk.1.attn_v.weight' has shape [64, 32], expected [32, 64] (kv heads 2 "
               "x head_dim 16 by hidden 64)"),
      std::string::npos)
      << msg;
  ts = llama3_as_gguf();
  std::erase_if(ts, [](const GgufTensorData& t) { return t.name == "blk.0.ffn_down.weight"; });
  msg = load_error("llama", ts);
  EXPECT_NE(msg.find("missing tensor 'blk.0.ffn_down.weight'"), std::string::npos) << msg;
  msg = load_error("gemma", llama3_as_gguf());
  EXPECT_NE(msg.find("architecture 'gemma' is not supported; supported GGUF architectures: llama, "
                     "qwen2"),
            std::string::npos)
      << msg;
}

// An adapter on every projection: it adds x . A^T (A trainable, [out, in]); gradients reach A
// through the checkpointed blocks, equal to those without checkpointing.
class AddAdapter : public LinearAdapter {
 public:
  explicit AddAdapter(Tensor a) : a_(std::move(a)) {}
  Tensor apply(const Linear&, const Tensor& x, const Tensor& base_out, Precision p) const override {
    return add(base_out, linear(x, a_, Tensor(), p));
  }
  Tensor a_;
};

TEST(LlamaModel, AdaptersAttachToEveryProjectionAndGetGradients) {
  const Golden g = load_golden("hf_qwen2");
  LlamaModel model = LlamaModel::from_hf((golden_dir() / "hf_qwen2").string());
  std::vector<std::shared_ptr<AddAdapter>> adapters;
  for (Linear* p : model.projections()) {
    std::vector<float> init(static_cast<size_t>(p->out_features() * p->in_features()), 0.001f);
    auto ad = std::make_shared<AddAdapter>(
        Tensor::from_vector({p->out_features(), p->in_features()}, init).set_requires_grad(true));
    p->adapter = ad;
    adapters.push_back(ad);
  }
  ASSERT_EQ(adapters.size(), 14u);
  EXPECT_EQ(model.projections()[4]->hf_name, "model.layers.0.mlp.gate_proj");
  EXPECT_EQ(model.projections()[10]->gguf_name, "blk.1.attn_output");
  std::vector<std::vector<float>> grads[2];
  double losses[2];
  for (int ckpt = 0; ckpt < 2; ++ckpt) {
    for (auto& ad : adapters) ad->a_.zero_grad();
    const Tensor hidden = model.forward_hidden(g.token_batch(), {ckpt == 1, Precision::F32});
    CrossEntropyResult ce = model.loss(hidden, g.targets, -100, Precision::F32);
    ce.loss.backward();
    losses[ckpt] = ce.loss.item();
    for (auto& ad : adapters) {
      ASSERT_TRUE(ad->a_.grad().defined());
      grads[ckpt].push_back(ad->a_.grad().to_vector());
    }
  }
  EXPECT_GT(std::fabs(losses[0] - g.meta["loss"].get<double>()), 1e-4);  // the adapters act
  EXPECT_EQ(losses[0], losses[1]);
  for (size_t i = 0; i < adapters.size(); ++i) {
    const Diff d = diff(grads[1][i], grads[0][i]);
    EXPECT_LE(d.max_abs, 0.0) << adapters.size() << " adapter " << i;
    EXPECT_GT(d.scale, 0.0) << "adapter " << i << " got a zero gradient";
  }
}

TEST(LlamaModel, RefusesSequencesLongerThanTheSlidingWindow) {
  LlamaModel model = LlamaModel::from_hf((golden_dir() / "hf_mistral").string());
  ModelConfig cfg = model.config();
  cfg.sliding_window = 4;
  const LlamaModel small(cfg, model.weights());
  std::vector<int32_t> ids(8, 1);
  try {
    small.forward_hidden(TokenBatch{ids, 1, 8, {}, {}});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sliding window of 4"), std::string::npos) << e.what();
  }
}

// ---- config.json --------------------------------------------------------------------------------

json golden_config(const std::string& name) {
  return json::parse(read_file(golden_dir() / name / "config.json"));
}

TEST(ModelConfig, ReadsHuggingFaceConfigs) {
  const ModelConfig c = config_from_hf_json((golden_dir() / "hf_qwen2" / "config.json").string());
  EXPECT_EQ(c.architecture, "qwen2");
  EXPECT_EQ(c.vocab_size, 256);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 128);
  EXPECT_EQ(c.n_layers, 2);
  EXPECT_EQ(c.n_heads, 4);
  EXPECT_EQ(c.n_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_FLOAT_EQ(c.rope.theta, 1e6f);
  EXPECT_TRUE(c.attention_qkv_bias);
  EXPECT_FALSE(c.attention_out_bias);
  EXPECT_EQ(c.sliding_window, 0);  // use_sliding_window false

  json j = golden_config("hf_llama");
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  EXPECT_FLOAT_EQ(config_from_hf_json_text(j.dump(), "x").rope_linear_factor, 4.0f);
  j.erase("model_type");  // architectures[] names it then
  EXPECT_EQ(config_from_hf_json_text(j.dump(), "x").architecture, "llama");
}

TEST(ModelConfig, UnsupportedOrBrokenConfigsSayWhy) {
  json j = golden_config("hf_llama");
  j["model_type"] = "gemma";
  std::string msg = expect_error([&] { config_from_hf_json_text(j.dump(), "cfg.json"); });
  EXPECT_NE(msg.find("'gemma'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("llama, mistral, qwen2"), std::string::npos) << msg;

  j = golden_config("hf_llama");
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  msg = expect_error([&] { config_from_hf_json_text(j.dump(), "cfg.json"); });
  EXPECT_NE(msg.find("'yarn'"), std::string::npos) << msg;

  j = golden_config("hf_llama");
  j["num_key_value_heads"] = 3;
  msg = expect_error([&] { config_from_hf_json_text(j.dump(), "cfg.json"); });
  EXPECT_NE(msg.find("not a multiple of 3"), std::string::npos) << msg;

  j = golden_config("hf_llama");
  j["hidden_size"] = "64";
  msg = expect_error([&] { config_from_hf_json_text(j.dump(), "cfg.json"); });
  EXPECT_NE(msg.find("'hidden_size' is string"), std::string::npos) << msg;

  j = golden_config("hf_llama");
  j.erase("vocab_size");
  msg = expect_error([&] { config_from_hf_json_text(j.dump(), "cfg.json"); });
  EXPECT_NE(msg.find("missing key 'vocab_size'"), std::string::npos) << msg;

  msg = expect_error([&] { config_from_hf_json_text("{\"model_type\": ", "cfg.json"); });
  EXPECT_NE(msg.find("cfg.json: not valid JSON"), std::string::npos) << msg;
}

// ---- safetensors and bad model folders ---------------------------------------------------------

struct StEntry {
  std::string name, dtype;
  Shape shape;
  std::string bytes;
};

std::string safetensors_bytes(const std::vector<StEntry>& entries) {
  json header = json::object();
  uint64_t offset = 0;
  std::string data;
  for (const StEntry& e : entries) {
    header[e.name] = {{"dtype", e.dtype},
                      {"shape", e.shape},
                      {"data_offsets", {offset, offset + e.bytes.size()}}};
    offset += e.bytes.size();
    data += e.bytes;
  }
  std::string h = header.dump();
  while (h.size() % 8) h += ' ';
  const uint64_t n = h.size();
  return std::string(reinterpret_cast<const char*>(&n), 8) + h + data;
}

// The golden llama's tensors, editable, for writing broken copies of its folder.
std::vector<StEntry> golden_entries(const std::string& model) {
  const SafetensorsFile f =
      SafetensorsFile::open((golden_dir() / model / "model.safetensors").string());
  std::vector<StEntry> out;
  for (const auto& t : f.tensors())
    out.push_back({t.name, t.dtype, t.shape,
                   std::string(static_cast<const char*>(f.raw_data(t)), t.end - t.begin)});
  return out;
}

TEST(Safetensors, ReadsShardedCheckpointsAndValidatesHeaders) {
  const SafetensorsModel sharded = SafetensorsModel::open((golden_dir() / "hf_llama3").string());
  EXPECT_TRUE(sharded.has("lm_head.weight"));
  EXPECT_EQ(sharded.names().size(), 2u + 2u * 9u + 1u);
  EXPECT_NE(sharded.file_of("model.embed_tokens.weight"), sharded.file_of("lm_head.weight"));

  TempDir tmp;
  const std::vector<StEntry> good = {{"a", "F32", {2, 2}, std::string(16, '\0')},
                                     {"b", "BF16", {3}, std::string(6, '\x3f')}};
  const std::string bytes = safetensors_bytes(good);
  write_file(tmp.path / "ok.safetensors", bytes);
  const SafetensorsFile ok = SafetensorsFile::open((tmp.path / "ok.safetensors").string());
  EXPECT_EQ(ok.tensor("b").dtype(), DType::BF16);
  EXPECT_EQ(ok.tensor("a").shape(), (Shape{2, 2}));

  auto open_bytes = [&](const std::string& b) {
    write_file(tmp.path / "bad.safetensors", b);
    return expect_error([&] { SafetensorsFile::open((tmp.path / "bad.safetensors").string()); });
  };
  std::string msg = open_bytes(bytes.substr(0, bytes.size() - 3));
  EXPECT_NE(msg.find("past the data section"), std::string::npos) << msg;
  msg = open_bytes(bytes.substr(0, 5));
  EXPECT_NE(msg.find("too short"), std::string::npos) << msg;
  msg = open_bytes(bytes.substr(0, 20));
  EXPECT_NE(msg.find("runs past the end of the file"), std::string::npos) << msg;
  std::string broken_json = bytes;
  broken_json[8] = '[';
  msg = open_bytes(broken_json);
  EXPECT_NE(msg.find("not valid JSON"), std::string::npos) << msg;
  msg = open_bytes(safetensors_bytes({{"q", "Q4_X", {4}, std::string(4, '\0')}}));
  EXPECT_NE(msg.find("unknown dtype 'Q4_X'"), std::string::npos) << msg;
  msg = open_bytes(safetensors_bytes({{"s", "F32", {3}, std::string(8, '\0')}}));
  EXPECT_NE(msg.find("needs 12"), std::string::npos) << msg;
  msg = expect_error(
      [&] { SafetensorsFile::open((tmp.path / "ok.safetensors").string()).tensor("missing"); });
  EXPECT_NE(msg.find("no tensor named 'missing'"), std::string::npos) << msg;
  write_file(tmp.path / "ints.safetensors",
             safetensors_bytes({{"i", "I64", {1}, std::string(8, '\0')}}));
  msg = expect_error(
      [&] { SafetensorsFile::open((tmp.path / "ints.safetensors").string()).tensor("i"); });
  EXPECT_NE(msg.find("has dtype I64"), std::string::npos) << msg;
}

// A copy of the golden llama folder with its tensors edited by `edit`.
std::string broken_model(const TempDir& tmp,
                         const std::function<void(std::vector<StEntry>&)>& edit) {
  const fs::path dir = tmp.path / "model";
  fs::create_directories(dir);
  fs::copy_file(golden_dir() / "hf_llama" / "config.json", dir / "config.json",
                fs::copy_options::overwrite_existing);
  std::vector<StEntry> entries = golden_entries("hf_llama");
  edit(entries);
  write_file(dir / "model.safetensors", safetensors_bytes(entries));
  return dir.string();
}

TEST(LlamaModel, BadModelFoldersGetClearErrors) {
  TempDir tmp;
  // A projection whose shape contradicts the config.
  std::string dir = broken_model(tmp, [](std::vector<StEntry>& es) {
    for (StEntry& e : es)
      if (e.name == "model.layers.1.self_attn.k_proj.weight")
        e.shape = {64, 32};  // same bytes, transposed
  });
  std::string msg = expect_error([&] { LlamaModel::from_hf(dir); });
  EXPECT_NE(
      msg.find("'model.layers.1.self_attn.k_proj.weight' has shape [64, 32], expected [32, 64]"),
      std::string::npos)
      << msg;
  // A missing tensor.
  dir = broken_model(tmp, [](std::vector<StEntry>& es) {
    std::erase_if(es,
                  [](const StEntry& e) { return e.name == "model.layers.0.mlp.up_proj.weight"; });
  });
  msg = expect_error([&] { LlamaModel::from_hf(dir); });
  EXPECT_NE(msg.find("missing tensor 'model.layers.0.mlp.up_proj.weight'"), std::string::npos)
      << msg;
  // lm_head absent while the config says the embeddings are not tied.
  dir = broken_model(tmp, [](std::vector<StEntry>& es) {
    std::erase_if(es, [](const StEntry& e) { return e.name == "lm_head.weight"; });
  });
  msg = expect_error([&] { LlamaModel::from_hf(dir); });
  EXPECT_NE(msg.find("missing tensor 'lm_head.weight'"), std::string::npos) << msg;
  // A truncated weights file.
  dir = broken_model(tmp, [](std::vector<StEntry>&) {});
  const std::string full = read_file(fs::path(dir) / "model.safetensors");
  write_file(fs::path(dir) / "model.safetensors", full.substr(0, full.size() / 2));
  msg = expect_error([&] { LlamaModel::from_hf(dir); });
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  // An unsupported architecture.
  json cfg = golden_config("hf_llama");
  cfg["model_type"] = "phi3";
  write_file(fs::path(dir) / "config.json", cfg.dump());
  msg = expect_error([&] { LlamaModel::from_hf(dir); });
  EXPECT_NE(msg.find("'phi3' (model_type) is not supported; supported: llama, mistral, qwen2"),
            std::string::npos)
      << msg;
  // No weights at all.
  fs::remove(fs::path(dir) / "model.safetensors");
  cfg["model_type"] = "llama";
  write_file(fs::path(dir) / "config.json", cfg.dump());
  msg = expect_error([&] { LlamaModel::from_hf(dir); });
  EXPECT_NE(msg.find("neither model.safetensors nor"), std::string::npos) << msg;
}

// ---- the real model ------------------------------------------------------------------------

fs::path smollm2_path() {
  return fs::path(LOOM_SOURCE_DIR) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
}

TEST(LlamaModel, RealSmolLM2FromGguf) {
  const fs::path path = smollm2_path();
  if (!fs::exists(path))
    GTEST_SKIP() << "SKIPPED LOUDLY: " << path << " is missing (run scripts/fetch_models.sh)";
  const GgufFile file = GgufFile::open(path.string());
  const LlamaModel model = LlamaModel::from_gguf(file);
  const ModelConfig& c = model.config();
  EXPECT_EQ(c.n_layers, 30);
  EXPECT_EQ(model.weights().blocks.size(), 30u);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_EQ(c.rope.style, RopeStyle::Interleaved);
  EXPECT_TRUE(c.tie_word_embeddings);
  // Storage dtypes kept, bytes borrowed from the mapping (not expanded to f32).
  const Tensor& wq = model.weights().blocks[0].wq.weight;
  EXPECT_EQ(wq.dtype(), DType::Q4_1);
  EXPECT_EQ(wq.storage()->nbytes(), storage_bytes(DType::Q4_1, wq.numel()));
  EXPECT_EQ(model.weights().token_embd.dtype(), DType::Q8_0);
  EXPECT_EQ(model.weights().output.weight.dtype(), DType::Q8_0);

  const std::unique_ptr<Tokenizer> tok = load_tokenizer(file);
  const std::string text =
      "The quick brown fox jumps over the lazy dog. Paris is the capital of France, and Berlin "
      "is the capital of Germany.";
  const std::vector<int32_t> ids = tok->encode(text);
  ASSERT_GT(ids.size(), 10u);
  std::vector<int32_t> targets(ids.begin() + 1, ids.end());
  targets.push_back(-100);
  const TokenBatch batch{ids, 1, static_cast<int64_t>(ids.size()), {}, {}};

  NoGradGuard no_grad;
  const Tensor hidden = model.forward_hidden(batch, {false, Precision::Auto});
  const std::vector<float> logits = model.logits(hidden).to_vector();
  ASSERT_EQ(logits.size(), ids.size() * 49152u);
  for (float v : logits) ASSERT_TRUE(std::isfinite(v));
  const double loss = model.loss(hidden, targets).loss.item();
  std::printf("[smollm2] %zu tokens, loss %.4f nats (uniform would be %.4f), ppl %.2f\n",
              ids.size(), loss, std::log(49152.0), std::exp(loss));
  EXPECT_LT(loss, 4.0) << "a natural sentence should be far below ln(49152) = 10.8";
  // f32 compute agrees with bf16 compute on the loss.
  const double loss_f32 =
      model
          .loss(model.forward_hidden(batch, {false, Precision::F32}), targets, -100, Precision::F32)
          .loss.item();
  EXPECT_NEAR(loss_f32, loss, 0.05);
}

TEST(LlamaModel, RealSmolLM2BackwardThroughQuantizedBlocks) {
  const fs::path path = smollm2_path();
  if (!fs::exists(path))
    GTEST_SKIP() << "SKIPPED LOUDLY: " << path << " is missing (run scripts/fetch_models.sh)";
  const LlamaModel model = LlamaModel::from_gguf(path.string());
  const std::vector<int32_t> ids = {504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30};
  std::vector<int32_t> targets(ids.begin() + 1, ids.end());
  targets.push_back(-100);
  const TokenBatch batch{ids, 2, 5, {}, std::span<const int32_t>()};
  const RunResult r = run_model(model, batch, {true, Precision::Auto}, targets);
  EXPECT_TRUE(std::isfinite(r.loss));
  double norm = 0;
  for (float v : r.grad_embeddings) {
    ASSERT_TRUE(std::isfinite(v));
    norm += static_cast<double>(v) * v;
  }
  EXPECT_GT(norm, 0.0);
}

}  // namespace
}  // namespace loom
