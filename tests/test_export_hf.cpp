// Hugging Face exports (export/peft_*, export/hf_*): PEFT adapters written and read back,
// merged safetensors folders, config.json / tokenizer.json synthesis from GGUF, q/k row order,
// clear errors for adapters loom cannot read, and all-or-nothing output folders.
//
// The q/k row order is checked independently of the export code: a tiny llama is written as a
// GGUF (q/k rows in llama.cpp's order, interleaved rope) and exported; the exported folder, read
// back as a Hugging Face model (rotate-half rope), must compute the same logits -- the two rope
// layouts only agree when the rows were un-permuted correctly. transformers and PEFT check the
// same exports in tests/interop/test_export_hf.py.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "autograd/check.h"
#include "autograd/quant/quant.h"
#include "autograd/tape.h"
#include "export/export_dir.h"
#include "export/gguf_writer.h"
#include "export/hf_export.h"
#include "export/hf_tokenizer.h"
#include "export/peft_export.h"
#include "export/peft_read.h"
#include "export/qk_rows.h"
#include "export/safetensors_writer.h"
#include "layers/gguf.h"
#include "layers/llama.h"
#include "layers/safetensors.h"
#include "layers/tokenizer.h"
#include "layers/tokenizer_internal.h"
#include "lora/lora_model.h"
#include "lora/random.h"
#include "tests/test_helpers.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using test::TempDir;
using json = nlohmann::json;

fs::path golden_dir() {
  return fs::path(LOOM_SOURCE_DIR) / "tests" / "golden";
}

// A fresh, empty folder per test.

std::vector<float> uniform_values(int64_t n, uint64_t seed, double lo, double hi) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<float>(lo + (hi - lo) * lora_uniform(seed, i));
  return v;
}

json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  return json::parse(in);
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

// Logits [T, V] of one row of ids, eval mode, f32 GEMMs.
std::vector<float> logits_of(const LlamaModel& model, const std::vector<int32_t>& ids) {
  NoGradGuard no_grad;
  TokenBatch b;
  b.ids = ids;
  b.batch = 1;
  b.seq_len = static_cast<int64_t>(ids.size());
  ForwardOptions o;
  o.checkpoint_blocks = false;
  o.precision = Precision::F32;
  return model.logits(model.forward_hidden(b, o), Precision::F32).to_vector();
}

// max |a - b| over max |b|.
double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double err = 0, scale = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    err = std::max(err, std::fabs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
  }
  return err / std::max(scale, 1e-30);
}

// Every adapter parameter set to deterministic non-zero values (a trained adapter's stand-in);
// DoRA magnitudes are scaled by factors around 1.
void randomize(LoraModel& lora, uint64_t seed) {
  for (const LoraParameter& p : lora.parameters()) {
    std::vector<float> v = p.tensor.to_vector();
    const uint64_t key = lora_hash({seed, std::hash<std::string>{}(p.name)});
    if (p.name.ends_with("lora_magnitude_vector")) {
      for (size_t i = 0; i < v.size(); ++i)
        v[i] *= static_cast<float>(0.8 + 0.4 * lora_uniform(key, i));
    } else {
      v = uniform_values(p.tensor.numel(), key, -0.25, 0.25);
    }
    lora.set_parameter(p.name, v);
  }
  lora.set_training(false);
}

const std::vector<int32_t> kIds = {1, 7, 200, 31, 62, 3, 99, 150, 4, 250, 10, 42, 2, 64, 128, 255};

// ---- a tiny llama written as llama.cpp writes GGUFs -------------------------------------------

constexpr int64_t kDim = 64, kFfn = 128, kHeads = 4, kKvHeads = 2, kHeadDim = 16, kLayers = 2;

struct TinyVocab {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<std::string> merges;
};

// Byte-level BPE: three control tokens, one user-defined, the 256 GPT-2 byte characters, and
// five merged tokens.
TinyVocab tiny_vocab() {
  TinyVocab v;
  auto add = [&](const std::string& t, int32_t type) {
    v.tokens.push_back(t);
    v.types.push_back(type);
  };
  add("<|endoftext|>", 3);
  add("<|im_start|>", 3);
  add("<|im_end|>", 3);
  add("<tool_call>", 4);
  for (const std::string& c : tok::byte_chars()) add(c, 1);
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"\xC4\xA0", "t"}, {"h", "e"}, {"\xC4\xA0t", "he"}, {"i", "n"}, {"\xC4\xA0", "a"}};
  for (const auto& [a, b] : merges) {
    v.merges.push_back(a + " " + b);
    add(a + b, 1);
  }
  return v;
}

GgufValue string_array(const std::vector<std::string>& items) {
  GgufArray a{GgufType::STRING, {}};
  for (const std::string& s : items) a.items.emplace_back(s);
  return GgufValue(a);
}

struct TinyGgufOptions {
  std::string tokenizer_model = "gpt2";
  std::string pre = "smollm";  // tokenizer.ggml.pre
  bool rope_freqs = false;
};

// A GGUF v3 llama: random weights (any weights are a valid model in llama.cpp's row order),
// token_embd and ffn_up stored as q8_0, the rest f32.
void write_tiny_gguf(const std::string& path, const TinyGgufOptions& options = {}) {
  const TinyVocab vocab = tiny_vocab();
  const int64_t V = static_cast<int64_t>(vocab.tokens.size());
  GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_u32("llama.block_count", kLayers);
  w.set_u32("llama.context_length", 256);
  w.set_u32("llama.embedding_length", kDim);
  w.set_u32("llama.feed_forward_length", kFfn);
  w.set_u32("llama.attention.head_count", kHeads);
  w.set_u32("llama.attention.head_count_kv", kKvHeads);
  w.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.set_f32("llama.rope.freq_base", 10000.0f);
  w.set_string("tokenizer.ggml.model", options.tokenizer_model);
  w.set_string("tokenizer.ggml.pre", options.pre);
  w.set("tokenizer.ggml.tokens", string_array(vocab.tokens));
  GgufArray types{GgufType::INT32, {}};
  for (int32_t t : vocab.types) types.items.emplace_back(t);
  w.set("tokenizer.ggml.token_type", GgufValue(types));
  w.set("tokenizer.ggml.merges", string_array(vocab.merges));
  w.set_u32("tokenizer.ggml.bos_token_id", 1);
  w.set_u32("tokenizer.ggml.eos_token_id", 2);
  w.set_u32("tokenizer.ggml.padding_token_id", 2);
  w.set_bool("tokenizer.ggml.add_bos_token", true);
  w.set_string("tokenizer.chat_template",
               "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
               "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}");
  uint64_t seed = 100;
  auto weight = [&](const std::string& name, Shape shape, DType dtype) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(shape.back()));
    w.add_tensor_values(name, shape, dtype,
                        uniform_values(shape_numel(shape), ++seed, -bound, bound));
  };
  auto norm = [&](const std::string& name) {
    w.add_tensor_values(name, {kDim}, DType::F32, uniform_values(kDim, ++seed, 0.8, 1.2));
  };
  weight("token_embd.weight", {V, kDim}, DType::Q8_0);
  norm("output_norm.weight");
  weight("output.weight", {V, kDim}, DType::F32);
  if (options.rope_freqs)
    w.add_tensor_values("rope_freqs.weight", {kHeadDim / 2}, DType::F32,
                        std::vector<float>(kHeadDim / 2, 2.0f));
  for (int64_t l = 0; l < kLayers; ++l) {
    const std::string b = fmt::format("blk.{}.", l);
    norm(b + "attn_norm.weight");
    norm(b + "ffn_norm.weight");
    weight(b + "attn_q.weight", {kHeads * kHeadDim, kDim}, DType::F32);
    weight(b + "attn_k.weight", {kKvHeads * kHeadDim, kDim}, DType::F32);
    weight(b + "attn_v.weight", {kKvHeads * kHeadDim, kDim}, DType::F32);
    weight(b + "attn_output.weight", {kDim, kHeads * kHeadDim}, DType::F32);
    weight(b + "ffn_gate.weight", {kFfn, kDim}, DType::F32);
    weight(b + "ffn_up.weight", {kFfn, kDim}, DType::Q8_0);
    weight(b + "ffn_down.weight", {kDim, kFfn}, DType::F32);
  }
  w.write(path);
}

// ---- q/k rows ----------------------------------------------------------------------------------

// model_config.h's statement of llama.cpp's permutation, written out directly: within each head,
// GGUF row 2i + j holds Hugging Face row j * head_dim/2 + i.
TEST(QkRows, UndoLlamaCppsPermutationAndNothingElse) {
  ModelConfig c;
  c.n_heads = 3;
  c.n_kv_heads = 1;
  c.head_dim = 8;
  c.rope.style = RopeStyle::Interleaved;
  const int64_t cols = 5, rows = c.n_heads * c.head_dim;
  const std::vector<float> gguf = uniform_values(rows * cols, 1, -1, 1);
  const std::vector<float> hf = rows_to_hf_order(c, Projection::Q, gguf, cols);
  for (int64_t h = 0; h < c.n_heads; ++h)
    for (int64_t i = 0; i < c.head_dim / 2; ++i)
      for (int64_t j = 0; j < 2; ++j)
        for (int64_t k = 0; k < cols; ++k)
          ASSERT_EQ(hf[(h * c.head_dim + j * c.head_dim / 2 + i) * cols + k],
                    gguf[(h * c.head_dim + 2 * i + j) * cols + k]);
  EXPECT_EQ(rows_to_model_order(c, Projection::Q, hf, cols), gguf);
  const std::vector<float> k_rows = uniform_values(c.n_kv_heads * c.head_dim, 2, -1, 1);
  EXPECT_EQ(rows_to_model_order(c, Projection::K, rows_to_hf_order(c, Projection::K, k_rows, 1), 1),
            k_rows);
  EXPECT_NE(rows_to_hf_order(c, Projection::K, k_rows, 1), k_rows);
  EXPECT_EQ(rows_to_hf_order(c, Projection::V, gguf, cols), gguf);
  c.rope.style = RopeStyle::Half;  // Hugging Face checkpoints, qwen2 GGUFs
  EXPECT_EQ(rows_to_hf_order(c, Projection::Q, gguf, cols), gguf);
}

// ---- GGUF source: merged folder, PEFT adapter, tokenizer ----------------------------------------

struct GgufCase {
  LoraConfig lora;
  MergeDType dtype = MergeDType::F32;
};

// Exports `lora` on the tiny GGUF model as a merged folder, a base-only folder and a PEFT
// adapter, and checks all three against the adapter model's logits.
void check_gguf_case(const GgufCase& c) {
  TempDir tmp;
  const std::string gguf = tmp / "tiny.gguf";
  write_tiny_gguf(gguf);
  LlamaModel model = LlamaModel::from_gguf(gguf);
  ASSERT_TRUE(qk_rows_in_gguf_order(model.config()));
  LoraModel lora(model, c.lora);
  randomize(lora, 7);
  const std::vector<float> ref = logits_of(model, kIds);

  // Merged: the Hugging Face layout (rotate-half rope) computes what the GGUF model does.
  const ExportReport merged = export_hf_model(model, &lora, gguf, tmp / "merged");
  for (const char* f : {"model.safetensors", "config.json", "generation_config.json",
                        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"})
    EXPECT_TRUE(fs::exists(tmp.path() / "merged" / f)) << f;
  const LlamaModel hf = LlamaModel::from_hf(tmp / "merged");
  EXPECT_EQ(hf.config().rope.style, RopeStyle::Half);
  EXPECT_LE(rel_diff(logits_of(hf, kIds), ref), 1e-5);
  // Unadapted tensors are the GGUF's values, dequantized (q8_0 embedding) but otherwise exact.
  EXPECT_EQ(hf.weights().token_embd.to_vector(), model.weights().token_embd.to_vector());
  EXPECT_EQ(hf.weights().blocks[1].attn_norm.to_vector(),
            model.weights().blocks[1].attn_norm.to_vector());

  const json config = read_json(tmp / "merged/config.json");
  EXPECT_EQ(config["architectures"][0], "LlamaForCausalLM");
  EXPECT_EQ(config["head_dim"], kHeadDim);
  EXPECT_EQ(config["num_key_value_heads"], kKvHeads);
  EXPECT_EQ(config["vocab_size"], 265);
  EXPECT_EQ(config["bos_token_id"], 1);
  EXPECT_EQ(config["eos_token_id"], 2);
  EXPECT_EQ(config["tie_word_embeddings"], false);
  EXPECT_EQ(config["max_position_embeddings"], 256);
  EXPECT_EQ(config["rms_norm_eps"], 1e-5);

  // The tokenizer read back from tokenizer.json tokenizes as the GGUF's.
  const std::unique_ptr<Tokenizer> from_gguf = load_tokenizer(GgufFile::open(gguf));
  const std::unique_ptr<Tokenizer> from_json = load_tokenizer_json(tmp / "merged/tokenizer.json");
  const std::string text = "<|im_start|>user\nthe theta in 1234<tool_call> a<|im_end|>\n";
  EXPECT_EQ(from_json->encode(text, true, true), from_gguf->encode(text, true, true));
  EXPECT_EQ(from_json->encode(text, false, false), from_gguf->encode(text, false, false));
  EXPECT_EQ(from_json->chat_template(), from_gguf->chat_template());
  const json tok_config = read_json(tmp / "merged/tokenizer_config.json");
  EXPECT_EQ(tok_config["bos_token"], "<|im_start|>");
  EXPECT_EQ(tok_config["eos_token"], "<|im_end|>");
  const json tok = read_json(tmp / "merged/tokenizer.json");
  EXPECT_EQ(tok["post_processor"]["type"], "TemplateProcessing");  // add_bos_token is true
  EXPECT_EQ(tok["pre_tokenizer"]["pretokenizers"][0]["type"], "Digits");
  EXPECT_EQ(tok["pre_tokenizer"]["pretokenizers"][1]["use_regex"], true);

  // PEFT adapter on the base exported alone: the same logits.
  LlamaModel base = LlamaModel::from_gguf(gguf);
  export_hf_model(base, nullptr, gguf, tmp / "base");
  const ExportReport peft = export_peft_adapter(tmp / "peft", lora, model, gguf);
  EXPECT_FALSE(peft.notes.empty());
  LlamaModel hf_base = LlamaModel::from_hf(tmp / "base");
  LoraModel on_hf = load_peft_adapter(tmp / "peft", hf_base);
  on_hf.set_training(false);
  EXPECT_LE(rel_diff(logits_of(hf_base, kIds), ref), 1e-5);

  // Read back onto the GGUF model: the rows go back into llama.cpp's order, bit for bit.
  LoraModel on_gguf = load_peft_adapter(tmp / "peft", base);
  const std::vector<LoraParameter> a = lora.parameters(), b = on_gguf.parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].name, b[i].name);
    EXPECT_EQ(a[i].tensor.to_vector(), b[i].tensor.to_vector()) << a[i].name;
  }
  // ...and q/k's B rows in the file are not the model's (they were un-permuted).
  const SafetensorsFile st = SafetensorsFile::open(tmp / "peft/adapter_model.safetensors");
  const std::string q_b = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight";
  if (st.find(q_b)) {
    EXPECT_NE(st.tensor(q_b).to_vector(), lora.parameter(q_b).to_vector());
  }
}

TEST(HfExport, GgufLoraAllLinearWithPatterns) {
  GgufCase c;
  c.lora.rank = 4;
  c.lora.alpha = 8;
  c.lora.targets.modules = {"all-linear"};
  c.lora.rank_pattern = {{"down_proj", 2}};
  c.lora.alpha_pattern = {{"layers\\.0\\.self_attn\\.k_proj", 16.0}};
  check_gguf_case(c);
}

TEST(HfExport, GgufDoraRsloraOnQkOfOneLayer) {
  GgufCase c;
  c.lora.rank = 4;
  c.lora.alpha = 6;
  c.lora.rslora = true;
  c.lora.dora = true;
  c.lora.targets.modules = {"attn_q", "attn_k"};  // GGUF stems: PEFT gets q_proj / k_proj
  c.lora.targets.layers = {1};
  check_gguf_case(c);
}

TEST(HfExport, GgufLoraWithTheLmHead) {
  GgufCase c;
  c.lora.rank = 4;
  c.lora.alpha = 8;
  c.lora.targets.modules = {"v_proj", "lm_head"};
  c.lora.rank_pattern = {{"lm_head", 2}};
  check_gguf_case(c);
}

// A tied model (SmolLM2's layout) with an adapted LM head: the merged folder unties it (its own
// lm_head.weight, tie_word_embeddings false, the embedding unchanged); the PEFT adapter names
// lm_head and, loaded on the tied base, gives the adapter model's logits.
TEST(HfExport, AnAdaptedLmHeadOfATiedModelIsUntiedInTheMergedFolder) {
  TempDir tmp;
  const std::string src = (golden_dir() / "hf_llama_tied").string();
  LlamaModel model = LlamaModel::from_hf(src);
  ASSERT_TRUE(model.output_tied());
  LoraConfig c;
  c.rank = 4;
  c.alpha = 8;
  c.targets.modules = {"q_proj", "lm_head"};
  c.rank_pattern = {{"lm_head", 2}};
  c.alpha_pattern = {{"lm_head", 3.0}};
  LoraModel lora(model, c);
  randomize(lora, 9);
  const std::vector<float> ref = logits_of(model, kIds);
  const std::vector<float> base_ref = logits_of(LlamaModel::from_hf(src), kIds);
  EXPECT_GT(rel_diff(ref, base_ref), 1e-3);

  const ExportReport merged = export_hf_model(model, &lora, src, tmp / "merged");
  const json config = read_json(tmp / "merged/config.json");
  EXPECT_EQ(config["tie_word_embeddings"], false);
  const LlamaModel hf = LlamaModel::from_hf(tmp / "merged");
  EXPECT_FALSE(hf.output_tied());
  EXPECT_EQ(hf.weights().token_embd.to_vector(), model.weights().token_embd.to_vector());
  EXPECT_LE(rel_diff(logits_of(hf, kIds), ref), 1e-5);
  bool noted = false;
  for (const std::string& n : merged.notes)
    noted |= n.find("tie_word_embeddings: false") != std::string::npos;
  EXPECT_TRUE(noted);

  const ExportReport peft = export_peft_adapter(tmp / "peft", lora, model, src);
  const json j = read_json(tmp / "peft/adapter_config.json");
  EXPECT_EQ(j["target_modules"], json({"q_proj", "lm_head"}));
  EXPECT_TRUE(j["layers_to_transform"].is_null());
  EXPECT_EQ(j["rank_pattern"], json({{"lm_head", 2}}));
  EXPECT_EQ(j["alpha_pattern"], json({{"lm_head", 3}}));
  const SafetensorsFile st = SafetensorsFile::open(tmp / "peft/adapter_model.safetensors");
  EXPECT_TRUE(st.find("base_model.model.lm_head.lora_A.weight"));
  EXPECT_TRUE(st.find("base_model.model.lm_head.lora_B.weight"));
  LlamaModel base = LlamaModel::from_hf(src);
  LoraModel back = load_peft_adapter(tmp / "peft", base);
  back.set_training(false);
  ASSERT_NE(back.head_module(), nullptr);
  EXPECT_TRUE(base.output_tied());  // attaching adapts the output only
  EXPECT_LE(rel_diff(logits_of(base, kIds), ref), 1e-6);
  back.detach();

  // PEFT's own save of such an adapter also holds the LM head's base weight: read when it is
  // the base's, refused when it is another (a resized or changed head).
  const std::string file = tmp / "peft/adapter_model.safetensors";
  std::vector<SafetensorsEntry> entries;
  std::vector<std::vector<float>> values;
  for (const SafetensorsTensorInfo& info : st.tensors()) {
    entries.push_back({info.name, DType::F32, info.shape});
    values.push_back(st.tensor(info.name).to_vector());
  }
  entries.push_back({"base_model.model.lm_head.base_layer.weight", DType::F32,
                     model.weights().token_embd.shape()});
  values.push_back(model.weights().token_embd.to_vector());
  const auto rewrite = [&] {
    write_safetensors(file, entries, {{"format", "pt"}}, [&](size_t i) { return values[i]; });
  };
  rewrite();
  {
    LlamaModel again = LlamaModel::from_hf(src);
    LoraModel with_head = load_peft_adapter(tmp / "peft", again);
    with_head.set_training(false);
    EXPECT_LE(rel_diff(logits_of(again, kIds), ref), 1e-6);
  }
  for (float& v : values.back()) v *= 1.1f;
  rewrite();
  LlamaModel other = LlamaModel::from_hf(src);
  try {
    load_peft_adapter(tmp / "peft", other);
    ADD_FAILURE() << "a changed LM head weight in the adapter was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lm_head.base_layer.weight"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("differs from the base model's LM head"),
              std::string::npos)
        << e.what();
  }
}

// ---- adapter_config.json
// -------------------------------------------------------------------------

TEST(PeftExport, ConfigDescribesTheAttachedAdaptersInPeftTerms) {
  LlamaModel model = LlamaModel::from_hf((golden_dir() / "hf_llama").string());
  {
    LoraConfig c;
    c.rank = 8;
    c.alpha = 16;
    c.dropout = 0.05f;
    c.targets.modules = {"attn_q", "ffn_down"};
    c.targets.layers = {1};
    c.rank_pattern = {{"down_proj", 4}};
    LoraModel lora(model, c);
    const json j = peft_adapter_config(lora, model.config().n_layers, "org/base");
    EXPECT_EQ(j["target_modules"], json({"q_proj", "down_proj"}));
    EXPECT_EQ(j["layers_to_transform"], json({1}));
    EXPECT_EQ(j["rank_pattern"], json({{"down_proj", 4}}));
    EXPECT_EQ(j["alpha_pattern"], json::object());
    EXPECT_EQ(j["lora_dropout"], 0.05);
    EXPECT_EQ(j["lora_alpha"], 16);
    EXPECT_EQ(j["r"], 8);
    EXPECT_EQ(j["peft_type"], "LORA");
    EXPECT_EQ(j["task_type"], "CAUSAL_LM");
    EXPECT_EQ(j["bias"], "none");
    EXPECT_EQ(j["base_model_name_or_path"], "org/base");
    EXPECT_EQ(j["init_lora_weights"], true);
    // Read back, it selects the same modules with the same ranks.
    const PeftAdapterConfig back =
        peft_config_from_json(nlohmann::ordered_json::parse(j.dump()), "x");
    lora.detach();
    LoraModel again(model, back.lora);
    ASSERT_EQ(again.modules().size(), 2u);
    EXPECT_EQ(again.modules()[1].linear->hf_name, "model.layers.1.mlp.down_proj");
    EXPECT_EQ(again.modules()[1].adapter->rank(), 4);
    again.detach();
  }
  {
    LoraConfig c;  // not a product of projections and layers: a regex naming each module
    c.targets.regex = R"(model\.layers\.0\.self_attn\.q_proj|model\.layers\.1\.self_attn\.v_proj)";
    c.alpha_pattern = {{"model\\.layers\\.1\\.self_attn\\.v_proj", 32.0}};
    LoraModel lora(model, c);
    const json j = peft_adapter_config(lora, model.config().n_layers, "b");
    EXPECT_EQ(j["target_modules"], c.targets.regex);
    EXPECT_TRUE(j["layers_to_transform"].is_null());
    EXPECT_EQ(j["alpha_pattern"], json({{"v_proj", 32}}));
    lora.detach();
  }
}

// ---- Hugging Face folder source ----------------------------------------------------------------

TEST(HfExport, HfFolderSourceKeepsItsConfigAndWritesBf16AsRounded) {
  TempDir tmp;
  const std::string src = (golden_dir() / "hf_llama").string();
  LlamaModel model = LlamaModel::from_hf(src);
  LoraConfig c;
  c.rank = 4;
  c.targets.regex = R"(model\.layers\.0\.self_attn\.q_proj|model\.layers\.1\.mlp\.down_proj)";
  LoraModel lora(model, c);
  randomize(lora, 11);
  const std::vector<float> ref = logits_of(model, kIds);

  const ExportReport r = export_hf_model(model, &lora, src, tmp / "f32");
  EXPECT_LE(rel_diff(logits_of(LlamaModel::from_hf(tmp / "f32"), kIds), ref), 1e-5);
  json source_config = read_json(src + "/config.json"),
       written = read_json(tmp / "f32/config.json");
  EXPECT_EQ(written["torch_dtype"], "float32");
  source_config.erase("torch_dtype");
  written.erase("torch_dtype");
  EXPECT_EQ(written, source_config);
  EXPECT_EQ(read_json(tmp / "f32/generation_config.json")["eos_token_id"], 2);
  bool noted = false;
  for (const std::string& n : r.notes)
    noted = noted || n.find("no tokenizer files") != std::string::npos;
  EXPECT_TRUE(noted);

  HfExportOptions bf16;
  bf16.dtype = MergeDType::BF16;
  export_hf_model(model, &lora, src, tmp / "bf16", bf16);
  EXPECT_EQ(read_json(tmp / "bf16/config.json")["torch_dtype"], "bfloat16");
  const SafetensorsFile f32 = SafetensorsFile::open(tmp / "f32/model.safetensors");
  const SafetensorsFile b16 = SafetensorsFile::open(tmp / "bf16/model.safetensors");
  ASSERT_EQ(f32.tensors().size(), b16.tensors().size());
  for (const SafetensorsTensorInfo& info : f32.tensors()) {
    ASSERT_EQ(b16.find(info.name)->dtype, "BF16");
    std::vector<float> rounded = f32.tensor(info.name).to_vector();
    for (float& x : rounded) x = bf16_to_f32(f32_to_bf16(x));
    EXPECT_EQ(b16.tensor(info.name).to_vector(), rounded) << info.name;
  }

  // PEFT adapter from a Hugging Face base: read back onto a fresh copy, the same logits.
  export_peft_adapter(tmp / "peft", lora, model, src);
  EXPECT_EQ(read_json(tmp / "peft/adapter_config.json")["target_modules"], c.targets.regex);
  LlamaModel fresh = LlamaModel::from_hf(src);
  LoraModel back = load_peft_adapter(tmp / "peft", fresh);
  back.set_training(false);
  EXPECT_EQ(logits_of(fresh, kIds), ref);
}

// tokenizer.json from a GGUF: a 'qwen2' pre-tokenizer gets Qwen2's NFC normalizer (the GGUF
// cannot say so), so decomposed accents tokenize as composed ones, as in transformers; other
// pre-tokenizers get none.
TEST(HfExport, TokenizerJsonFromAQwen2GgufNormalizesToNfc) {
  TempDir tmp;
  const std::string cafe_nfc = "caf\xC3\xA9 na\xC3\xAFve", cafe_nfd = "cafe\xCC\x81 nai\xCC\x88ve";
  for (const char* pre : {"qwen2", "smollm"}) {
    SCOPED_TRACE(pre);
    const std::string gguf = tmp / fmt::format("{}.gguf", pre);
    TinyGgufOptions options;
    options.pre = pre;
    write_tiny_gguf(gguf, options);
    const HfTokenizerFiles files = hf_tokenizer_from_gguf(GgufFile::open(gguf), 256);
    const json tok = json::parse(files.tokenizer_json);
    const fs::path path = tmp / fmt::format("{}.tokenizer.json", pre);
    std::ofstream(path) << files.tokenizer_json;
    const std::unique_ptr<Tokenizer> from_json = load_tokenizer_json(path.string());
    const std::unique_ptr<Tokenizer> from_gguf = load_tokenizer(GgufFile::open(gguf));
    // Composed text: the same ids either way.
    EXPECT_EQ(from_json->encode(cafe_nfc, false, false), from_gguf->encode(cafe_nfc, false, false));
    // The GGUF tokenizer (as llama.cpp) does not normalize: NFD text is other bytes, other ids.
    EXPECT_NE(from_gguf->encode(cafe_nfd, false, false), from_gguf->encode(cafe_nfc, false, false));
    if (std::string(pre) == "qwen2") {
      EXPECT_EQ(tok["normalizer"], json({{"type", "NFC"}}));
      EXPECT_EQ(from_json->encode(cafe_nfd, false, false),
                from_gguf->encode(cafe_nfc, false, false));
    } else {
      EXPECT_TRUE(tok["normalizer"].is_null());
      EXPECT_EQ(from_json->encode(cafe_nfd, false, false),
                from_gguf->encode(cafe_nfd, false, false));
    }
  }
}

TEST(HfExport, Qwen2WithBiasesRoundTrips) {
  TempDir tmp;
  const std::string src = (golden_dir() / "hf_qwen2").string();
  LlamaModel model = LlamaModel::from_hf(src);
  LoraConfig c;
  c.targets.modules = {"q_proj", "k_proj", "v_proj", "o_proj"};
  LoraModel lora(model, c);
  randomize(lora, 12);
  const std::vector<float> ref = logits_of(model, kIds);
  export_hf_model(model, &lora, src, tmp / "merged");
  const SafetensorsFile f = SafetensorsFile::open(tmp / "merged/model.safetensors");
  EXPECT_NE(f.find("model.layers.0.self_attn.q_proj.bias"), nullptr);
  EXPECT_EQ(f.find("model.layers.0.self_attn.o_proj.bias"), nullptr);
  EXPECT_EQ(read_json(tmp / "merged/config.json")["architectures"][0], "Qwen2ForCausalLM");
  EXPECT_LE(rel_diff(logits_of(LlamaModel::from_hf(tmp / "merged"), kIds), ref), 1e-5);
}

// ---- what is refused, and how
// --------------------------------------------------------------------

TEST(PeftRead, UnsupportedOptionsNameTheKey) {
  const nlohmann::ordered_json base = {{"peft_type", "LORA"},
                                       {"r", 4},
                                       {"lora_alpha", 8},
                                       {"target_modules", {"q_proj"}},
                                       {"runtime_config", {{"ephemeral_gpu_offload", false}}},
                                       {"eva_config", nullptr},
                                       {"some_future_flag", false}};
  EXPECT_EQ(peft_config_from_json(base, "a.json").lora.rank, 4);
  {
    // lm_head with layers_to_transform: PEFT adapts only the layers' modules; so does loom.
    nlohmann::ordered_json j = base;
    j["target_modules"] = {"q_proj", "lm_head"};
    j["layers_to_transform"] = {1};
    const LoraTargets t = peft_config_from_json(j, "a.json").lora.targets;
    EXPECT_EQ(t.modules, (std::vector<std::string>{"q_proj"}));
    EXPECT_EQ(t.layers, (std::vector<int64_t>{1}));
  }
  const std::vector<std::pair<std::string, nlohmann::ordered_json>> bad = {
      {"peft_type", "IA3"},
      {"task_type", "SEQ_CLS"},
      {"bias", "all"},
      {"modules_to_save", {"lm_head"}},
      {"fan_in_fan_out", true},
      {"lora_bias", true},
      {"init_lora_weights", "olora"},
      {"exclude_modules", {"v_proj"}},
      {"trainable_token_indices", {1, 2}},
      {"layer_replication", {{0, 1}}},
      {"target_modules", nullptr},
      {"layers_pattern", "blocks"},
      {"r", "4"},
      {"target_parameters", {"mlp.experts"}},
  };
  for (const auto& [key, value] : bad) {
    nlohmann::ordered_json j = base;
    j[key] = value;
    if (key == "layers_pattern") j["layers_to_transform"] = {0};
    const std::string message =
        error_of([&] { peft_config_from_json(j, "dir/adapter_config.json"); });
    EXPECT_NE(message.find("dir/adapter_config.json: '" + key + "'"), std::string::npos)
        << key << ": " << message;
  }
}

TEST(PeftRead, BadFilesAreRefusedAndLeaveTheModelUnadapted) {
  TempDir tmp;
  const std::string src = (golden_dir() / "hf_llama").string();
  LlamaModel model = LlamaModel::from_hf(src);
  LoraConfig c;
  c.targets.modules = {"q_proj", "v_proj"};
  {
    LoraModel lora(model, c);
    randomize(lora, 3);
    export_peft_adapter(tmp / "good", lora, model, src);
    lora.detach();
  }
  auto no_adapters = [&] {
    for (Linear* p : model.projections())
      if (p->adapter) return false;
    return true;
  };
  // A .bin adapter, a folder without a config.
  fs::create_directories(tmp.path() / "bin");
  fs::copy_file(tmp / "good/adapter_config.json", tmp / "bin/adapter_config.json");
  std::ofstream(tmp / "bin/adapter_model.bin") << "pickle";
  EXPECT_NE(
      error_of([&] { load_peft_adapter(tmp / "bin", model); }).find("convert it to safetensors"),
      std::string::npos);
  EXPECT_NE(error_of([&] { load_peft_adapter(tmp / "none", model); }).find("adapter_config.json"),
            std::string::npos);

  // Tensors rewritten: one transposed, one renamed, one missing.
  const SafetensorsFile good = SafetensorsFile::open(tmp / "good/adapter_model.safetensors");
  auto rewrite = [&](const std::string& dir,
                     const std::function<void(std::vector<SafetensorsEntry>&)>& edit) {
    fs::create_directories(tmp.path() / dir);
    fs::copy_file(tmp / "good/adapter_config.json", tmp / (dir + "/adapter_config.json"));
    std::vector<SafetensorsEntry> entries;
    for (const SafetensorsTensorInfo& i : good.tensors())
      entries.push_back({i.name, DType::F32, i.shape});
    std::vector<std::string> sources;
    for (const SafetensorsEntry& e : entries) sources.push_back(e.name);
    edit(entries);
    write_safetensors(tmp / (dir + "/adapter_model.safetensors"), entries, {{"format", "pt"}},
                      [&](size_t i) {
                        const std::string& from = i < sources.size() ? sources[i] : sources[0];
                        std::vector<float> v = good.tensor(from).to_vector();
                        v.resize(static_cast<size_t>(shape_numel(entries[i].shape)));
                        return v;
                      });
  };
  const std::string a0 = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
  rewrite("transposed",
          [&](std::vector<SafetensorsEntry>& e) { std::swap(e[0].shape[0], e[0].shape[1]); });
  std::string message = error_of([&] { load_peft_adapter(tmp / "transposed", model); });
  EXPECT_NE(message.find(a0 + "' is [64, 8], expected [8, 64]"), std::string::npos) << message;
  EXPECT_TRUE(no_adapters());
  rewrite("renamed", [&](std::vector<SafetensorsEntry>& e) {
    e[0].name = "base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight";
  });
  message = error_of([&] { load_peft_adapter(tmp / "renamed", model); });
  EXPECT_NE(message.find("lora_C.weight' is not a parameter"), std::string::npos) << message;
  EXPECT_TRUE(no_adapters());
  rewrite("missing", [&](std::vector<SafetensorsEntry>& e) { e.pop_back(); });
  message = error_of([&] { load_peft_adapter(tmp / "missing", model); });
  EXPECT_NE(message.find("missing"), std::string::npos) << message;
  EXPECT_TRUE(no_adapters());
}

TEST(HfExport, RefusesWhatHuggingFaceCannotExpress) {
  TempDir tmp;
  TinyGgufOptions spm;
  spm.tokenizer_model = "llama";
  write_tiny_gguf(tmp / "spm.gguf", spm);
  const LlamaModel a = LlamaModel::from_gguf(tmp / "spm.gguf");
  std::string message =
      error_of([&] { export_hf_model(a, nullptr, tmp / "spm.gguf", tmp / "out"); });
  EXPECT_NE(message.find("tokenizer.ggml.model is 'llama'"), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(tmp.path() / "out"));

  TinyGgufOptions freqs;
  freqs.rope_freqs = true;
  write_tiny_gguf(tmp / "freqs.gguf", freqs);
  const LlamaModel b = LlamaModel::from_gguf(tmp / "freqs.gguf");
  message = error_of([&] { export_hf_model(b, nullptr, tmp / "freqs.gguf", tmp / "out"); });
  EXPECT_NE(message.find("rope_freqs.weight"), std::string::npos) << message;

  // A model with an adapter the export was not given.
  write_tiny_gguf(tmp / "tiny.gguf");
  LlamaModel c = LlamaModel::from_gguf(tmp / "tiny.gguf");
  LoraModel lora(c, LoraConfig{});
  message = error_of([&] { export_hf_model(c, nullptr, tmp / "tiny.gguf", tmp / "out"); });
  EXPECT_NE(message.find("carries an adapter"), std::string::npos) << message;
  // Another model's source.
  message = error_of(
      [&] { export_hf_model(c, nullptr, (golden_dir() / "hf_llama").string(), tmp / "out"); });
  EXPECT_NE(message.find("does not describe the model"), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(tmp.path() / "out"));
}

// ---- all-or-nothing folders
// ------------------------------------------------------------------------

std::vector<std::string> entries_of(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(ExportDir, NothingAppearsUnderTheFinalNameUntilCommit) {
  TempDir tmp;
  {
    StagingDir dir(tmp / "out", false);
    dir.write_text("a.json", "{}");
    EXPECT_FALSE(fs::exists(tmp.path() / "out"));
  }  // destroyed without commit: as if an exception had gone by
  EXPECT_EQ(entries_of(tmp.path()), std::vector<std::string>{});

  {
    StagingDir dir(tmp / "out", false);
    dir.write_text("a.json", "{\"v\": 1}");
    dir.commit();
  }
  EXPECT_EQ(entries_of(tmp.path() / "out"), std::vector<std::string>{"a.json"});
  EXPECT_NE(error_of([&] { StagingDir again(tmp / "out", false); }).find("already exists"),
            std::string::npos);
  {
    StagingDir dir(tmp / "out", true);
    dir.write_text("b.json", "{}");
    EXPECT_EQ(entries_of(tmp.path() / "out"), std::vector<std::string>{"a.json"});  // untouched
    dir.commit();
  }
  EXPECT_EQ(entries_of(tmp.path() / "out"), std::vector<std::string>{"b.json"});
  EXPECT_EQ(entries_of(tmp.path()), std::vector<std::string>{"out"});
}

TEST(ExportDir, AWriteFailingMidExportLeavesNoFolder) {
  TempDir tmp;
  write_tiny_gguf(tmp / "tiny.gguf");
  const LlamaModel model = LlamaModel::from_gguf(tmp / "tiny.gguf");
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  void (*old_handler)(int) = ::signal(SIGXFSZ, SIG_IGN);
  rlimit small = old;
  small.rlim_cur = 100000;  // model.safetensors is ~310 KB
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  const std::string message =
      error_of([&] { export_hf_model(model, nullptr, tmp / "tiny.gguf", tmp / "out"); });
  ::setrlimit(RLIMIT_FSIZE, &old);
  ::signal(SIGXFSZ, old_handler);
  EXPECT_NE(message.find("disk full"), std::string::npos) << message;
  EXPECT_EQ(entries_of(tmp.path()), std::vector<std::string>{"tiny.gguf"});
}

}  // namespace
}  // namespace loom
